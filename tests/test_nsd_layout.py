"""mini-NSD in NSD's real layouts, read as public NSD readers read them; chunked ingest by range.

Facts checked here come from the NSD data manual ("Functional data (NSD)": betas int16 = percent
signal change × 300, MATLAB X×Y×Z×750 with chunk size [1 1 1 750], uncompressed) and from the
documented behaviour of public readers: Brain-Diffuser's ``prepare_nsddata.py`` (loadmat with
squeeze_me=True, indexes arrays with the design fields directly, ``mask > 0`` on the NIfTI
betas, repeats averaged, values kept × 300) and nsd_access (``read_csv(..., index_col=0)`` on
``nsd_stim_info_merged.csv``, ``imgBrick[nsdId]``). The reading code below is written from
those descriptions; none is copied.
"""
from __future__ import annotations

import fsspec
import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
import xarray as xr

from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.mininsd.generate import STIM_INFO_COLUMNS, MiniNSDSpec, generate_mini_nsd
from fmri2img.storage.nsd import NSDFormatError, NSDLayout, read_mask, read_session_betas
from fmri2img.storage.nsd.hdf5chunks import chunk_index
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from tests.cloud_helpers import CountingS3Server, s3_options, upload_dir

#: NSD's 750 trials per session (1,500-byte chunks), a small volume, an nsdgeneral-sized mask
SPEC = dict(seed=5, subjects=(1,), n_sessions=2, trials_per_session=750, side=32, volume_shape=(20, 24, 20),
            nsdgeneral_keep=0.22)
SESSIONS = (1, 2)
GROUPS = ["subjects/subj01/betas", "subjects/subj01/train", "subjects/subj01/test", "subjects/subj01/rois"]


@pytest.fixture(scope="module")
def nsd_like(tmp_path_factory):
    """The same data twice: NSD's chunked HDF5 layout, and a contiguous HDF5 layout."""
    roots = {}
    for layout in ("chunked", "contiguous"):
        root = tmp_path_factory.mktemp(f"mini-{layout}")
        generate_mini_nsd(root, MiniNSDSpec.sized(**SPEC, hdf5_layout=layout))
        roots[layout] = root
    return roots


@pytest.fixture(scope="module")
def reference_store(nsd_like, tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("ref") / "store.zarr"))
    ingest(store, Source(str(nsd_like["chunked"])), 1, SESSIONS, progress=False)
    return store


def assert_same_store(a: Store, b: Store, groups=GROUPS) -> None:
    for group in groups:
        da_ = xr.open_zarr(a.zarr_store(), group=group, consolidated=False).drop_attrs()
        db_ = xr.open_zarr(b.zarr_store(), group=group, consolidated=False).drop_attrs()
        xr.testing.assert_identical(da_.load(), db_.load())


# --------------------------------------------------------------------------- the files' layouts


def test_betas_hdf5_is_nsds_layout(nsd_like):
    spec = MiniNSDSpec.sized(**SPEC)
    lay = NSDLayout(str(nsd_like["chunked"]))
    img = nib.load(lay.betas(1, 1, "nii.gz"))
    x, y, z, t = img.shape
    with h5py.File(lay.betas(1, 1, "hdf5"), "r") as h5:
        ds = h5["betas"]
        assert ds.dtype == np.int16 and ds.shape == (t, z, y, x) == (750, *spec.volume_shape[::-1])
        assert ds.chunks == (750, 1, 1, 1) and ds.compression is None
        assert ds.id.get_create_plist().get_nfilters() == 0
        # the same values as the NIfTI, axes reversed (MATLAB order X×Y×Z×750)
        np.testing.assert_array_equal(ds[:, 3, 5, 7], np.asarray(img.dataobj[7, 5, 3, :]))
    with h5py.File(NSDLayout(str(nsd_like["contiguous"])).betas(1, 1, "hdf5"), "r") as h5:
        assert h5["betas"].chunks is None


def test_nifti_headers_are_nsds(nsd_like):
    lay = NSDLayout(str(nsd_like["chunked"]))
    img = nib.load(lay.betas(1, 1, "nii.gz"))
    hdr = img.header
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(hdr.get_zooms(), (1.8, 1.8, 1.8, 4 / 3), rtol=1e-6)
    assert hdr.get_xyzt_units() == ("mm", "sec")
    assert img.dataobj.slope == 1 and img.dataobj.inter == 0  # no scaling: readers divide by 300 themselves
    roi = nib.load(lay.roi(1, "nsdgeneral"))
    assert roi.get_data_dtype() == np.int16 and roi.shape == img.shape[:3]
    assert set(np.unique(np.asarray(roi.dataobj))) == {-1, 0, 1}  # outside, unlabelled, nsdgeneral


def test_design_fields_are_integers_and_index_directly(nsd_like):
    path = NSDLayout(str(nsd_like["chunked"])).expdesign()
    mat = scipy.io.loadmat(path, squeeze_me=True)  # what Brain-Diffuser's loadmat wrapper does
    for field in ("masterordering", "subjectim", "sharedix", "stimpattern", "basiccnt"):
        assert np.issubdtype(mat[field].dtype, np.integer), (field, mat[field].dtype)
    # indexing with the fields themselves, as Brain-Diffuser does, raises no IndexError
    ids = [mat["subjectim"][0, mat["masterordering"][i] - 1] - 1 for i in range(len(mat["masterordering"]))]
    assert min(ids) >= 0


def test_stim_info_csv_agrees_with_the_design(nsd_like):
    root = nsd_like["chunked"]
    lay = NSDLayout(str(root))
    raw_header = open(lay.stim_info()).readline().rstrip("\n").split(",")
    assert tuple(raw_header) == STIM_INFO_COLUMNS and raw_header[0] == ""
    info = pd.read_csv(lay.stim_info(), index_col=0)  # as nsd_access reads it
    mat = scipy.io.loadmat(lay.expdesign(), squeeze_me=True)
    with h5py.File(lay.stimuli(), "r") as h5:
        assert len(info) == h5["imgBrick"].shape[0]
    assert (info["nsdId"].to_numpy() == np.arange(len(info))).all()
    assert set(np.flatnonzero(info["shared1000"].to_numpy())) == set(mat["sharedix"] - 1)
    for s in range(1, 9):
        assert set(np.flatnonzero(info[f"subject{s}"].to_numpy())) == set(mat["subjectim"][s - 1] - 1)
    reps = info[[f"subject1_rep{k}" for k in range(3)]].to_numpy()
    for t in range(0, len(mat["masterordering"]), 37):
        nsd_id = mat["subjectim"][0, mat["masterordering"][t] - 1] - 1
        assert t + 1 in reps[nsd_id]  # 1-based trial numbers
    assert (reps[info["subject1"].to_numpy() == 0] == 0).all()


# --------------------------------------------------------------------------- public readers vs ingest


def test_brain_diffuser_style_reading_equals_ingest(nsd_like, reference_store):
    """Brain-Diffuser's preparation, written from its documented behaviour, gives ingest's split and values."""
    lay = NSDLayout(str(nsd_like["chunked"]))
    mat = scipy.io.loadmat(lay.expdesign(), squeeze_me=True)
    n_shared = len(mat["sharedix"])
    mask = nib.load(lay.roi(1, "nsdgeneral")).get_fdata()
    fmri = np.concatenate([nib.load(lay.betas(1, s, "nii.gz")).get_fdata().astype(np.float32)[mask > 0].T
                           for s in SESSIONS])
    train: dict[int, list[int]] = {}
    test: dict[int, list[int]] = {}
    for idx in range(len(SESSIONS) * 750):
        nsd_id = mat["subjectim"][0, mat["masterordering"][idx] - 1] - 1
        (train if mat["masterordering"][idx] > n_shared else test).setdefault(int(nsd_id), []).append(idx)
    for part, groups in (("train", train), ("test", test)):
        ds = reference_store.open_dataset(f"subjects/subj01/{part}")
        assert list(ds["image"].values) == list(groups)  # first-presentation order
        averaged = np.stack([fmri[sorted(t)].mean(0) for t in groups.values()])  # × 300, as Brain-Diffuser keeps
        np.testing.assert_allclose(ds["fmri"].values, averaged / 300, rtol=1e-5, atol=1e-6)


def test_nsd_access_style_stimuli_equal_ingest(nsd_like, tmp_path):
    root = nsd_like["chunked"]
    lay = NSDLayout(str(root))
    store = Store(str(tmp_path / "s.zarr"))
    ingest(store, Source(str(root)), 1, (1,), progress=False)
    stim = store.open_dataset("stimuli")
    info = pd.read_csv(lay.stim_info(), index_col=0)
    with h5py.File(lay.stimuli(), "r") as h5:
        for k in (0, 7, len(stim["image"]) - 1):
            nsd_id = int(stim["image"].values[k])
            assert info.iloc[nsd_id]["nsdId"] == nsd_id
            np.testing.assert_array_equal(stim["images"].values[k], h5["imgBrick"][nsd_id])


# --------------------------------------------------------------------------- chunked = contiguous = gzip


@pytest.mark.parametrize("layout, prefer", [("contiguous", "hdf5"), ("chunked", "nii.gz")])
def test_ingest_chunked_equals_contiguous_and_gzip_local(nsd_like, reference_store, tmp_path, layout, prefer):
    store = Store(str(tmp_path / "s.zarr"))
    ingest(store, Source(str(nsd_like[layout])), 1, SESSIONS, prefer=prefer, stimuli=False, progress=False)
    assert_same_store(reference_store, store)


@pytest.mark.slow
def test_ingest_from_counting_s3_within_byte_budget(nsd_like, reference_store, tmp_path):
    """Ingest from S3 (each layout, nii.gz too) equals local ingest; a chunked session costs ≤ 3× its masked bytes."""
    root = nsd_like["chunked"]
    lay = NSDLayout(str(root))
    voxels = np.flatnonzero(read_mask(fsspec.filesystem("file"), lay.roi(1, "nsdgeneral")))
    masked = len(voxels) * 750 * 2
    index_bytes, header_bytes = _index_and_header_bytes(lay, voxels)
    with CountingS3Server() as server:
        opts = s3_options(server.endpoint)
        for layout in ("chunked", "contiguous"):
            upload_dir(nsd_like[layout], f"s3://nsd-{layout}/root", opts)
        for layout, prefer in (("chunked", "hdf5"), ("contiguous", "hdf5"), ("chunked", "nii.gz")):
            server.reset()
            store = Store(str(tmp_path / f"{layout}-{prefer}.zarr"))
            ingest(store, Source(f"s3://nsd-{layout}/root", opts), 1, SESSIONS, prefer=prefer, stimuli=False,
                   progress=False)
            assert_same_store(reference_store, store)
            if layout == "chunked" and prefer == "hdf5":
                for s in SESSIONS:
                    key = f"nsd-chunked/root/{NSDLayout('').betas(1, s, 'hdf5')}"
                    size = (root / NSDLayout("").betas(1, s, "hdf5")).stat().st_size
                    served = server.served[key]
                    assert served <= 3 * masked + index_bytes + header_bytes, (served, masked, index_bytes)
                    assert served < 0.25 * size, (served, size)


def _index_and_header_bytes(lay: NSDLayout, voxels: np.ndarray) -> tuple[int, int]:
    """B-tree bytes a chunked read fetches (ranges that are B-tree nodes), and the header read-ahead."""
    local = fsspec.filesystem("file")
    seen = {"index": 0}

    class Split:
        def exists(self, path):
            return local.exists(path)

        def open(self, path, mode="rb", **kw):
            return local.open(path, mode, **kw)

        def cat_ranges(self, paths, starts, ends, **kw):
            parts = local.cat_ranges(paths, starts, ends, **kw)
            seen["index"] += sum(len(p) for p in parts if p[:4] == b"TREE")
            return parts

    shape = nib.load(lay.roi(1, "nsdgeneral")).shape
    read_session_betas(Split(), lay, 1, 1, voxels, shape, 750)
    return seen["index"], 2 * 64 * 2**10


def test_chunk_index_is_found_for_nsds_layout(nsd_like):
    lay = NSDLayout(str(nsd_like["chunked"]))
    with open(lay.betas(1, 1, "hdf5"), "rb") as f, h5py.File(f, "r") as h5:
        index = chunk_index(f, h5["betas"])
        assert index is not None and index.chunks == (750, 1, 1, 1) and index.itemsize == 2
    with open(NSDLayout(str(nsd_like["contiguous"])).betas(1, 1, "hdf5"), "rb") as f, h5py.File(f, "r") as h5:
        assert chunk_index(f, h5["betas"]) is None


def test_truncated_chunked_file_is_one_clear_error(nsd_like, tmp_path):
    """A chunked session cut short names the file and says to download it again (no wrong values)."""
    import shutil

    src = nsd_like["chunked"]
    dst = tmp_path / "cut"
    shutil.copytree(src, dst)
    path = dst / NSDLayout("").betas(1, 2, "hdf5")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    lay = NSDLayout(str(dst))
    voxels = np.flatnonzero(read_mask(fsspec.filesystem("file"), lay.roi(1, "nsdgeneral")))
    shape = nib.load(lay.roi(1, "nsdgeneral")).shape
    with pytest.raises(NSDFormatError, match=r"betas_session02\.hdf5 .*truncated or corrupt.*download"):
        read_session_betas(fsspec.filesystem("file"), lay, 1, 2, voxels, shape, 750)


# --------------------------------------------------------------------------- units


def test_float_betas_need_their_scale(tmp_path):
    root = tmp_path / "mini"
    generate_mini_nsd(root, MiniNSDSpec(seed=2, subjects=(1,), n_images=60, n_shared=6, n_per_subject=30,
                                        n_sessions=2, trials_per_session=30, side=16, volume_shape=(16, 18, 16),
                                        nan_voxels=3))
    store = Store(str(tmp_path / "s.zarr"))
    with pytest.raises(NSDFormatError, match=r"betas_session0[12]\.hdf5 holds float32 betas.*--betas-scale"):
        ingest(store, Source(str(root)), 1, (1, 2), stimuli=False, nan_policy="zero", progress=False)
    store2 = Store(str(tmp_path / "s2.zarr"))
    ingest(store2, Source(str(root)), 1, (1, 2), stimuli=False, nan_policy="zero", betas_scale=300, progress=False)
    betas = store2.open_dataset("subjects/subj01/betas")
    assert betas.attrs["betas_scale"] == "300"
    assert 0.3 < float(np.nanstd(betas["betas"].values)) < 30  # percent signal change, not 300× too small


def test_readme_nsd_sized_mini_nsd_command_is_accepted():
    """The README's NSD-sized command builds a valid spec (it is measured, not run, here: 9 GB, ~3 min)."""
    import re
    import shlex
    from pathlib import Path

    from fmri2img.cli.data import mini_nsd_spec
    from fmri2img.cli.main import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = re.search(r"`(fmri2img mini-nsd DIR --volume 81,104,83 [^`]*)`", readme).group(1)
    args = build_parser().parse_args(shlex.split(line)[1:])
    spec = mini_nsd_spec(args)
    assert spec.volume_shape == (81, 104, 83) and spec.trials_per_session == 750 and spec.n_sessions == 3
    assert spec.n_trials <= 3 * spec.n_per_subject and spec.hdf5_layout == "chunked"


# --------------------------------------------------------------------------- one walk per subject


class _TreeCounter:
    """Local files, counting the B-tree node bytes fetched by range."""

    def __init__(self):
        self.fs, self.tree = fsspec.filesystem("file"), 0

    def exists(self, path):
        return self.fs.exists(path)

    def open(self, path, mode="rb", **kw):
        return self.fs.open(path, mode, **kw)

    def cat_ranges(self, paths, starts, ends, **kw):
        parts = self.fs.cat_ranges(paths, starts, ends, **kw)
        self.tree += sum(len(p) for p in parts if p[:4] == b"TREE")
        return parts


def _subject_voxels(lay: NSDLayout) -> tuple[np.ndarray, tuple]:
    mask = read_mask(fsspec.filesystem("file"), lay.roi(1, "nsdgeneral"))
    return np.flatnonzero(mask), mask.shape


def test_a_subjects_sessions_reuse_one_chunk_map(nsd_like):
    from fmri2img.storage.nsd import session_chunk_map

    lay = NSDLayout(str(nsd_like["chunked"]))
    voxels, shape = _subject_voxels(lay)
    walked = _TreeCounter()
    plain = read_session_betas(walked, lay, 1, 2, voxels, shape, 750)
    cmap = session_chunk_map(fsspec.filesystem("file"), lay, 1, 1, voxels, shape)
    assert cmap is not None and len(cmap.witnesses) < walked.tree // cmap.index.node_bytes
    reused = _TreeCounter()
    np.testing.assert_array_equal(read_session_betas(reused, lay, 1, 2, voxels, shape, 750, chunk_map=cmap), plain)
    assert reused.tree == sum(len(w) for _, w in cmap.witnesses) < walked.tree


def test_a_file_with_another_b_tree_is_walked_not_trusted(nsd_like, tmp_path):
    """Session 2 rewritten with its chunks allocated in another order: the map is refused, values stay right."""
    import shutil

    from fmri2img.storage.nsd import session_chunk_map

    root = tmp_path / "other"
    shutil.copytree(nsd_like["chunked"], root)
    lay = NSDLayout(str(root))
    path = root / NSDLayout("").betas(1, 2, "hdf5")
    with h5py.File(path, "r") as h5:
        data = h5["betas"][:]
    path.unlink()
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("betas", shape=data.shape, dtype=data.dtype, chunks=(750, 1, 1, 1), track_times=False)
        for z in reversed(range(data.shape[1])):  # same values, chunks written in another order
            ds[:, z] = data[:, z]
    voxels, shape = _subject_voxels(lay)
    cmap = session_chunk_map(fsspec.filesystem("file"), lay, 1, 1, voxels, shape)
    counter = _TreeCounter()
    out = read_session_betas(counter, lay, 1, 2, voxels, shape, 750, chunk_map=cmap)
    reference = read_session_betas(fsspec.filesystem("file"), lay, 1, 2, voxels, shape, 750, prefer="nii.gz")
    np.testing.assert_array_equal(out, reference)
    assert counter.tree > sum(len(w) for _, w in cmap.witnesses)  # it walked its own B-tree
