"""NSD readers: round trips on small files written here, checked against plain NumPy."""

from __future__ import annotations

import gzip
import io

import fsspec
import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from fmri2img.storage.nsd import (
    ROI_FILES,
    ExpDesign,
    NSDError,
    NSDFileMissing,
    NSDFormatError,
    NSDLayout,
    read_captions,
    read_expdesign,
    read_mask,
    read_session_betas,
    read_stimuli,
    read_volume,
    split_trials,
)

SHAPE = (7, 8, 6)
TRIALS = 12


# --------------------------------------------------------------------------- helpers


def nifti_gz(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.header.set_data_dtype(data.dtype)
    return gzip.compress(img.to_bytes(), mtime=0)


def mat_bytes(**fields: np.ndarray) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, fields)
    return buf.getvalue()


def make_design(rng: np.random.Generator, n_sessions: int = 4, tps: int = 10, n_shared: int = 6,
                n_per: int = 20, n_images: int = 60) -> dict[str, np.ndarray]:
    shared = np.sort(rng.choice(n_images, n_shared, replace=False)) + 1
    rest = np.setdiff1d(np.arange(1, n_images + 1), shared)
    subjectim = np.stack([np.concatenate([shared, rng.choice(rest, n_per - n_shared, replace=False)])
                          for _ in range(8)])
    master = rng.integers(1, n_per + 1, n_sessions * tps)
    stim = np.zeros((n_sessions, 2, tps // 2 + 1), np.uint8)
    stim[:, :, : tps // 2] = 1
    return dict(masterordering=master[None], subjectim=subjectim, sharedix=shared[None], stimpattern=stim,
                basiccnt=np.zeros((3, n_sessions)))


@pytest.fixture(params=["file", "memory"])
def fs_root(request, tmp_path):
    if request.param == "file":
        yield fsspec.filesystem("file"), str(tmp_path / "nsd")
        return
    fs = fsspec.filesystem("memory")
    root = f"/nsd-{request.node.name.replace('[', '-').replace(']', '')}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def put(fs, path: str, data: bytes) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


#: HDF5 layouts of the betas: NSD's (one voxel's trials per chunk), contiguous, other chunkings,
#: a compressed one (read through h5py) and the newest file format (layout v4, read through h5py)
H5_LAYOUTS = {
    "nsd": dict(chunks="voxel"),
    "contiguous": dict(),
    "blocks": dict(chunks=(5, 2, 3, 2)),
    "gzip": dict(chunks="voxel", compression="gzip"),
    "latest": dict(chunks="voxel", libver="latest"),
}


def hdf5_bytes(libver: str = "earliest", **datasets: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=libver) as h5:
        for name, arr in datasets.items():
            h5.create_dataset(name, data=arr)
    return buf.getvalue()


def betas_hdf5_bytes(data_xyzt: np.ndarray, layout: str = "nsd") -> bytes:
    """``betas`` as (trials, Z, Y, X) in one of :data:`H5_LAYOUTS`."""
    opts = dict(H5_LAYOUTS[layout])
    arr = data_xyzt.transpose(3, 2, 1, 0)
    if opts.get("chunks") == "voxel":
        opts["chunks"] = (arr.shape[0], 1, 1, 1)
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=opts.pop("libver", "earliest")) as h5:
        h5.create_dataset("betas", data=arr, **opts)
    return buf.getvalue()


def write_betas(fs, layout: NSDLayout, data: np.ndarray, session: int = 1, hdf5: bool = True,
                h5_layout: str = "nsd") -> None:
    put(fs, layout.betas(1, session, "nii.gz"), nifti_gz(data))
    if hdf5:
        put(fs, layout.betas(1, session, "hdf5"), betas_hdf5_bytes(data, h5_layout))


def betas_reference(data: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Plain NumPy: mask in C order of the 3-D volume, trials first, ÷300."""
    flat = data.reshape(-1, data.shape[3]).astype(np.float64)
    return (flat[voxels].T / 300.0).astype(np.float32)


# --------------------------------------------------------------------------- layout


def test_layout_paths_match_the_bucket():
    lay = NSDLayout("natural-scenes-dataset")
    assert lay.expdesign() == "natural-scenes-dataset/nsddata/experiments/nsd/nsd_expdesign.mat"
    assert lay.stimuli() == "natural-scenes-dataset/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    assert lay.captions() == "natural-scenes-dataset/COCO_73k_annots_curated.npy"
    assert lay.roi(1, "nsdgeneral") == "natural-scenes-dataset/nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    assert lay.betas(7, 12) == ("natural-scenes-dataset/nsddata_betas/ppdata/subj07/func1pt8mm/"
                                "betas_fithrf_GLMdenoise_RR/betas_session12.nii.gz")
    assert lay.betas(2, 3, "hdf5").endswith("subj02/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session03.hdf5")
    assert NSDLayout("/tmp/mini/").expdesign() == "/tmp/mini/nsddata/experiments/nsd/nsd_expdesign.mat"
    assert len(ROI_FILES) == 7 and "prf-visualrois" in ROI_FILES


@pytest.mark.parametrize("call, match", [
    (lambda lay: lay.roi(1, "V1"), "not an NSD ROI file"),
    (lambda lay: lay.betas(1, 1, "mgh"), "betas format 'mgh'"),
    (lambda lay: lay.betas(0, 1), "subject 0"),
    (lambda lay: lay.betas(1, 0), "session 0"),
])
def test_layout_rejects_bad_arguments(call, match):
    with pytest.raises(NSDError, match=match):
        call(NSDLayout("root"))


# --------------------------------------------------------------------------- design


def test_read_expdesign_round_trip(fs_root):
    fs, root = fs_root
    fields = make_design(np.random.default_rng(0))
    lay = NSDLayout(root)
    put(fs, lay.expdesign(), mat_bytes(**fields))
    d = read_expdesign(fs, lay.expdesign())
    np.testing.assert_array_equal(d.masterordering, fields["masterordering"][0])
    np.testing.assert_array_equal(d.subjectim, fields["subjectim"])
    np.testing.assert_array_equal(d.sharedix, fields["sharedix"][0])
    assert d.masterordering.dtype == np.int64 and d.subjectim.dtype == np.int64
    assert d.trials_per_session == 10 and d.n_sessions == 4


def reference_split(master, subjectim, n_shared, subject, sessions, tps):
    """Brain-Diffuser's loop, written independently with dicts."""
    train, test, images, sess_of = {}, {}, [], []
    for s in sorted(sessions):
        for idx in range((s - 1) * tps, s * tps):
            nsd_id = subjectim[subject - 1, master[idx] - 1] - 1
            target = train if master[idx] > n_shared else test
            target.setdefault(nsd_id, []).append(idx)
            images.append(nsd_id)
            sess_of.append(s)
    return train, test, images, sess_of


@pytest.mark.parametrize("subject, sessions", [(1, [1, 2, 3, 4]), (3, [4, 2]), (8, [3])])
def test_split_trials_equals_reference(subject, sessions):
    fields = make_design(np.random.default_rng(subject))
    d = ExpDesign(masterordering=fields["masterordering"][0].astype(np.int64),
                  subjectim=fields["subjectim"].astype(np.int64), sharedix=fields["sharedix"][0].astype(np.int64),
                  trials_per_session=10)
    sp = split_trials(d, subject, sessions)
    train, test, images, sess_of = reference_split(d.masterordering, d.subjectim, 6, subject, sessions, 10)
    assert list(sp.train_ids) == list(train) and list(sp.test_ids) == list(test)  # dicts keep first-seen order
    assert [list(t) for t in sp.train_trials] == list(train.values())
    assert [list(t) for t in sp.test_trials] == list(test.values())
    np.testing.assert_array_equal(sp.trial_image, images)
    np.testing.assert_array_equal(sp.trial_session, sess_of)
    assert sp.sessions == tuple(sorted(sessions))
    np.testing.assert_array_equal(sp.trial_index, np.concatenate([np.arange((s - 1) * 10, s * 10)
                                                                  for s in sorted(sessions)]))
    assert set(sp.test_ids) <= set(d.sharedix - 1)
    assert not set(sp.train_ids) & set(d.sharedix - 1)


@pytest.mark.parametrize("subject, sessions, match", [
    (9, [1], "subject 9 is not in the experimental design, which has subjects 1..8"),
    (0, [1], "subject 0 is not in the experimental design"),
    (1, [5], r"session\(s\) \[5\] are outside the experimental design, which has sessions 1..4.*--sessions"),
    (1, [1, 1], "repeat a session"),
    (1, [], "no sessions selected"),
])
def test_split_trials_errors(subject, sessions, match):
    fields = make_design(np.random.default_rng(0))
    d = ExpDesign(masterordering=fields["masterordering"][0].astype(np.int64),
                  subjectim=fields["subjectim"].astype(np.int64), sharedix=fields["sharedix"][0].astype(np.int64),
                  trials_per_session=10)
    with pytest.raises(NSDError, match=match):
        split_trials(d, subject, sessions)


def test_read_expdesign_errors(fs_root):
    fs, root = fs_root
    lay = NSDLayout(root)
    with pytest.raises(NSDFileMissing, match="nsd_expdesign.mat .*not found at .*nsd_expdesign.mat"):
        read_expdesign(fs, lay.expdesign())
    put(fs, lay.expdesign(), b"this is not a mat file at all" * 10)
    with pytest.raises(NSDFormatError, match="nsd_expdesign.mat .*not a readable MATLAB v5 file"):
        read_expdesign(fs, lay.expdesign())
    fields = make_design(np.random.default_rng(0))
    del fields["sharedix"]
    put(fs, lay.expdesign(), mat_bytes(**fields))
    with pytest.raises(NSDFormatError, match="no field 'sharedix'"):
        read_expdesign(fs, lay.expdesign())
    fields = make_design(np.random.default_rng(0))
    fields["masterordering"] = fields["masterordering"][:, :-3]
    put(fs, lay.expdesign(), mat_bytes(**fields))
    with pytest.raises(NSDFormatError, match="masterordering has 37 trials, not a multiple of the 10"):
        read_expdesign(fs, lay.expdesign())


# --------------------------------------------------------------------------- volumes and masks


def test_read_volume_and_mask_round_trip(fs_root):
    fs, root = fs_root
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 4, SHAPE).astype(np.int16)
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    path = NSDLayout(root).roi(1, "nsdgeneral")
    put(fs, path, nifti_gz(labels, affine))
    data, aff = read_volume(fs, path)
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_allclose(aff, affine)
    mask = read_mask(fs, path, expected_shape=SHAPE)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, labels > 0)
    with pytest.raises(NSDFormatError, match="nsdgeneral.nii.gz is 7×8×6 but 7×8×5 was expected.*func1pt8mm"):
        read_mask(fs, path, expected_shape=(7, 8, 5))


def test_read_volume_missing_and_truncated(fs_root):
    fs, root = fs_root
    path = NSDLayout(root).roi(2, "floc-faces")
    with pytest.raises(NSDFileMissing, match="floc-faces.nii.gz .*not found at"):
        read_volume(fs, path)
    full = nifti_gz(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32))
    put(fs, path, full[: len(full) // 2])
    with pytest.raises(NSDFormatError, match="floc-faces.nii.gz at .* is truncated or corrupt.*download"):
        read_volume(fs, path)


# --------------------------------------------------------------------------- betas


@pytest.fixture
def betas_int16():
    rng = np.random.default_rng(2)
    data = rng.integers(-3000, 3000, (*SHAPE, TRIALS)).astype(np.int16)
    voxels = np.flatnonzero(rng.random(SHAPE) > 0.5)
    return data, voxels


@pytest.mark.parametrize("h5_layout", list(H5_LAYOUTS))
@pytest.mark.parametrize("block_bytes", [1, 700, 1 << 26])
def test_betas_hdf5_equals_nifti_equals_numpy(fs_root, betas_int16, block_bytes, h5_layout):
    fs, root = fs_root
    data, voxels = betas_int16
    lay = NSDLayout(root)
    write_betas(fs, lay, data, h5_layout=h5_layout)
    ref = betas_reference(data, voxels)
    h = read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, prefer="hdf5", block_bytes=block_bytes)
    n = read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, prefer="nii.gz", block_bytes=block_bytes)
    assert h.dtype == np.float32 and h.shape == (TRIALS, len(voxels))
    np.testing.assert_array_equal(h, n)
    np.testing.assert_allclose(h, ref, rtol=1e-6)


@pytest.mark.parametrize("h5_layout", ["nsd", "contiguous"])
def test_betas_float_nan_preserved(fs_root, h5_layout):
    fs, root = fs_root
    rng = np.random.default_rng(3)
    data = np.round(rng.normal(0, 600, (*SHAPE, TRIALS))).astype(np.float32)
    data[1, 2, 3, :] = np.nan
    voxels = np.flatnonzero(np.ones(SHAPE, bool))
    lay = NSDLayout(root)
    write_betas(fs, lay, data, h5_layout=h5_layout)
    h = read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, scale=300)
    n = read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, prefer="nii.gz", scale=300)
    np.testing.assert_array_equal(h, n)  # NaN == NaN in assert_array_equal
    nan_col = np.ravel_multi_index((1, 2, 3), SHAPE)
    assert np.isnan(h[:, nan_col]).all() and np.isfinite(np.delete(h, nan_col, axis=1)).all()
    np.testing.assert_allclose(h, betas_reference(data, voxels), rtol=1e-6)
    pct = read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, scale=1)  # floats already in % signal change
    np.testing.assert_allclose(pct, h * 300, rtol=1e-6)


@pytest.mark.parametrize("prefer", ["hdf5", "nii.gz"])
def test_float_betas_without_a_scale_are_refused(fs_root, prefer):
    """NSD's betas are int16 × 300: a float file is never divided by 300 silently."""
    fs, root = fs_root
    data = np.full((*SHAPE, TRIALS), 1.5, np.float64)
    lay = NSDLayout(root)
    write_betas(fs, lay, data)
    name = f"betas_session01.{prefer}"
    with pytest.raises(NSDFormatError, match=rf"{name} holds float64 betas.*int16.*--betas-scale.*1 if.*300 if"):
        read_session_betas(fs, lay, 1, 1, np.arange(5), SHAPE, TRIALS, prefer=prefer)
    for bad in ("psc", 0, -2.0, float("nan"), True):
        with pytest.raises(NSDError, match="betas scale"):
            read_session_betas(fs, lay, 1, 1, np.arange(5), SHAPE, TRIALS, prefer=prefer, scale=bad)


def test_betas_falls_back_to_nifti_without_hdf5(fs_root, betas_int16):
    fs, root = fs_root
    data, voxels = betas_int16
    lay = NSDLayout(root)
    write_betas(fs, lay, data, hdf5=False)
    out = read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, prefer="hdf5")
    np.testing.assert_allclose(out, betas_reference(data, voxels), rtol=1e-6)


class _CountingFS:
    """Wraps a filesystem and counts the bytes read from files it opens."""

    def __init__(self, fs):
        self.fs, self.bytes_read = fs, 0

    def exists(self, path):
        return self.fs.exists(path)

    def cat_ranges(self, paths, starts, ends):
        parts = self.fs.cat_ranges(paths, starts, ends)
        self.bytes_read += sum(len(p) for p in parts)
        return parts

    def open(self, path, mode="rb", **kwargs):
        outer, inner = self, self.fs.open(path, mode)

        class Reader(io.RawIOBase):
            def readable(self):
                return True

            def seekable(self):
                return True

            def readinto(self, b):
                chunk = inner.read(len(b))
                outer.bytes_read += len(chunk)
                b[: len(chunk)] = chunk
                return len(chunk)

            def seek(self, pos, whence=0):
                return inner.seek(pos, whence)

            def tell(self):
                return inner.tell()

            def close(self):
                inner.close()
                super().close()

        return Reader()


def test_betas_hdf5_reads_only_the_bounding_box(tmp_path):
    """A contiguous file: the voxels' z-range is read, not the whole file."""
    rng = np.random.default_rng(4)
    shape, trials = (30, 30, 30), 6
    data = rng.integers(-500, 500, (*shape, trials)).astype(np.int16)
    lay = NSDLayout(str(tmp_path))
    local = fsspec.filesystem("file")
    write_betas(local, lay, data, h5_layout="contiguous")
    box = np.zeros(shape, bool)
    box[3:8, 10:14, 20:25] = rng.random((5, 4, 5)) > 0.3
    voxels = np.flatnonzero(box)
    counting = _CountingFS(local)
    out = read_session_betas(counting, lay, 1, 1, voxels, shape, trials)
    np.testing.assert_allclose(out, betas_reference(data, voxels), rtol=1e-6)
    size = local.size(lay.betas(1, 1, "hdf5"))
    assert counting.bytes_read < 0.35 * size, (counting.bytes_read, size)


def test_betas_missing_file_messages(fs_root, betas_int16):
    fs, root = fs_root
    _, voxels = betas_int16
    lay = NSDLayout(root)
    with pytest.raises(NSDFileMissing, match="betas_session38.nii.gz .*not found.*sessions 38–40 are not public in "
                                             "real NSD.*--sessions"):
        read_session_betas(fs, lay, 1, 38, voxels, SHAPE, TRIALS)
    with pytest.raises(NSDFileMissing, match="betas_session05.nii.gz .*not found.*--sessions") as err:
        read_session_betas(fs, lay, 1, 5, voxels, SHAPE, TRIALS)
    assert "not public" not in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_betas_truncated_gzip_and_hdf5(fs_root, betas_int16):
    fs, root = fs_root
    data, voxels = betas_int16
    lay = NSDLayout(root)
    full_gz = nifti_gz(data)
    put(fs, lay.betas(1, 1, "nii.gz"), full_gz[: len(full_gz) // 2])
    with pytest.raises(NSDFormatError, match="betas_session01.nii.gz at .* is truncated or corrupt"):
        read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, prefer="nii.gz")
    full_h5 = hdf5_bytes(betas=data.transpose(3, 2, 1, 0))
    put(fs, lay.betas(1, 1, "hdf5"), full_h5[: len(full_h5) // 2])
    with pytest.raises(NSDFormatError, match="betas_session01.hdf5 at .* is truncated or corrupt"):
        read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, prefer="hdf5")


@pytest.mark.parametrize("prefer", ["hdf5", "nii.gz"])
def test_betas_shape_and_trial_mismatch(fs_root, betas_int16, prefer):
    fs, root = fs_root
    data, voxels = betas_int16
    lay = NSDLayout(root)
    write_betas(fs, lay, data)
    ext = "hdf5" if prefer == "hdf5" else "nii.gz"
    with pytest.raises(NSDFormatError, match=rf"betas_session01.{ext} has 7×8×6 voxels but the nsdgeneral mask is "
                                             r"7×8×7: the mask and betas must come from the same space \(func1pt8mm\)"):
        read_session_betas(fs, lay, 1, 1, voxels, (7, 8, 7), TRIALS, prefer=prefer)
    with pytest.raises(NSDFormatError, match=rf"betas_session01.{ext} holds 12 trials but the experimental design "
                                             r"has 750 per session"):
        read_session_betas(fs, lay, 1, 1, voxels, SHAPE, 750, prefer=prefer)


def test_betas_bad_arguments(fs_root, betas_int16):
    fs, root = fs_root
    data, voxels = betas_int16
    lay = NSDLayout(root)
    write_betas(fs, lay, data)
    with pytest.raises(NSDError, match="prefer='mgh' is not a betas format"):
        read_session_betas(fs, lay, 1, 1, voxels, SHAPE, TRIALS, prefer="mgh")
    with pytest.raises(NSDError, match="voxels span .* expected flat indices into a 7×8×6 volume"):
        read_session_betas(fs, lay, 1, 1, np.array([0, 7 * 8 * 6]), SHAPE, TRIALS)
    with pytest.raises(NSDError, match="expected a 1-D integer array"):
        read_session_betas(fs, lay, 1, 1, voxels.astype(float), SHAPE, TRIALS)
    put(fs, lay.betas(1, 2, "hdf5"), hdf5_bytes(data=data))
    with pytest.raises(NSDFormatError, match="has no dataset 'betas'"):
        read_session_betas(fs, lay, 1, 2, voxels, SHAPE, TRIALS)


# --------------------------------------------------------------------------- stimuli and captions


def test_read_stimuli_by_range(fs_root):
    fs, root = fs_root
    rng = np.random.default_rng(5)
    brick = rng.integers(0, 256, (25, 9, 9, 3)).astype(np.uint8)
    path = NSDLayout(root).stimuli()
    put(fs, path, hdf5_bytes(imgBrick=brick))
    for ids in ([3, 4, 5, 6], [10, 2, 3, 24, 2], [0], []):
        out = read_stimuli(fs, path, np.array(ids, dtype=np.int64))
        assert out.dtype == np.uint8 and out.shape == (len(ids), 9, 9, 3)
        np.testing.assert_array_equal(out, brick[np.array(ids, dtype=np.int64)])
    with pytest.raises(NSDError, match="stimulus ids span 0..25 but nsd_stimuli.hdf5 holds 25 images"):
        read_stimuli(fs, path, np.array([0, 25]))
    with pytest.raises(NSDError, match="expected a 1-D array of 0-based integer image ids"):
        read_stimuli(fs, path, np.array([[1, 2]]))
    put(fs, path, hdf5_bytes(imgBrick=brick.astype(np.float32)))
    with pytest.raises(NSDFormatError, match="dataset 'imgBrick' .*float32.*expected uint8"):
        read_stimuli(fs, path, np.array([1]))


def test_read_captions_by_range(fs_root):
    fs, root = fs_root
    caps = np.array([[f"image {i} caption {k}" if (i + k) % 7 else "" for k in range(5)] for i in range(40)])
    path = NSDLayout(root).captions()
    buf = io.BytesIO()
    np.save(buf, caps.astype("<U250"))
    put(fs, path, buf.getvalue())
    ids = np.array([39, 0, 1, 2, 17, 17])
    out = read_captions(fs, path, ids)
    assert out.shape == (6, 5) and out.dtype.kind == "U"
    np.testing.assert_array_equal(out, caps[ids])
    with pytest.raises(NSDError, match="caption ids span 0..40 but COCO_73k_annots_curated.npy holds 40 images"):
        read_captions(fs, path, np.array([40, 0]))
    buf = io.BytesIO()
    np.save(buf, caps.astype(object), allow_pickle=True)
    put(fs, path, buf.getvalue())
    with pytest.raises(NSDFormatError, match="holds a object array.*expected a C-order unicode array"):
        read_captions(fs, path, np.array([0]))
    put(fs, path, b"garbage")
    with pytest.raises(NSDFormatError, match="not a readable .npy file"):
        read_captions(fs, path, np.array([0]))


def test_read_volume_rejects_non_nifti(fs_root):
    fs, root = fs_root
    path = NSDLayout(root).roi(1, "prf-eccrois")
    put(fs, path, gzip.compress(b"not a NIfTI header " * 40, mtime=0))
    with pytest.raises(NSDFormatError, match="prf-eccrois.nii.gz at .* is not a readable NIfTI-1 file"):
        read_mask(fs, path)


def test_merge_ranges_covers_every_range_within_the_byte_budget():
    from fmri2img.storage.nsd.hdf5chunks import merge_ranges

    rng = np.random.default_rng(9)
    length = 1500
    starts = np.sort(rng.choice(4000, 300, replace=False)) * length + rng.integers(0, 3, 300) * 3656
    counts = []
    for extra in (0, 10_000, 100_000, 450_000, 10**9):
        m_starts, m_ends = merge_ranges(starts, length, extra, max_block=2**20)
        covered = [(np.searchsorted(m_starts, s, side="right") - 1) for s in starts]
        assert all(m_starts[k] <= s and s + length <= m_ends[k] for k, s in zip(covered, starts))
        assert (m_ends - m_starts).sum() - len(np.unique(starts)) * length <= extra
        assert (m_ends - m_starts).max() <= 2**20 and (m_starts[1:] >= m_ends[:-1]).all()
        counts.append(len(m_starts))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
