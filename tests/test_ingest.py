"""The ingest stage against mini-NSD, checked against an independent NumPy computation."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io
import xarray as xr

from fmri2img.pipeline.ingest import nsd as ingest_mod
from fmri2img.pipeline.ingest.nsd import IngestError, ingest
from fmri2img.storage import nsd, schema
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from fmri2img.storage.urls import StorageError
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401  (mini_nsd is a fixture)


def _independent(root: Path, subject: int, sessions) -> dict:
    """Brain-Diffuser's prepare_nsddata.py logic, written directly on the files."""
    mat = scipy.io.loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    mo = mat["masterordering"].ravel().astype(int)
    subjectim = mat["subjectim"].astype(int)
    n_shared = mat["sharedix"].size
    tps = int(mat["stimpattern"][0].sum())
    mask = nib.load(root / f"nsddata/ppdata/subj{subject:02d}/func1pt8mm/roi/nsdgeneral.nii.gz").get_fdata() > 0
    train, test = {}, {}
    rows = []
    for s in sessions:
        path = root / (f"nsddata_betas/ppdata/subj{subject:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
                       f"betas_session{s:02d}.nii.gz")
        data = np.asarray(nib.load(path).dataobj)  # X, Y, Z, T
        for t in range(tps):
            idx = (s - 1) * tps + t
            nsd_id = subjectim[subject - 1, mo[idx] - 1] - 1
            (train if mo[idx] > n_shared else test).setdefault(nsd_id, []).append(len(rows))
            rows.append(data[..., t][mask].astype(np.float64) / 300.0)
    rows = np.array(rows)
    avg = lambda d: (np.array(list(d.keys())), np.array([rows[v].mean(axis=0) for v in d.values()]))  # noqa: E731
    return {"train": avg(train), "test": avg(test), "rows": rows, "n_voxels": int(mask.sum()), "tps": tps}


@pytest.fixture(scope="module")
def ingested(mini_nsd, tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("ingest") / "store.zarr"))
    summary = ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    return store, summary


def test_split_and_averages_equal_independent_numpy(mini_nsd, ingested):
    store, summary = ingested
    ref = _independent(mini_nsd, 1, SESSIONS)
    for part in ("train", "test"):
        ds = xr.open_zarr(store.zarr_store(), group=f"subjects/subj01/{part}", consolidated=False)
        ids, values = ref[part]
        np.testing.assert_array_equal(ds.image.values, ids)  # first-presentation order
        np.testing.assert_allclose(ds.fmri.values, values, rtol=1e-6, atol=1e-6)
        assert ds.fmri.dtype == np.float32
        assert ds.fmri.shape == (len(ids), ref["n_voxels"])
    assert summary["n_train"] == len(ref["train"][0]) and summary["n_test"] == len(ref["test"][0])
    betas = xr.open_zarr(store.zarr_store(), group="subjects/subj01/betas", consolidated=False)
    np.testing.assert_allclose(betas.betas.values, ref["rows"], rtol=1e-6, atol=1e-6)
    assert betas.betas.chunks[0][0] == ref["tps"]  # one chunk row per session
    np.testing.assert_array_equal(np.unique(betas.session.values), SESSIONS)


def test_every_group_reads_with_xarray(ingested):
    store, _ = ingested
    for group in ["stimuli", "subjects/subj01/betas", "subjects/subj01/train", "subjects/subj01/test",
                  "subjects/subj01/rois"]:
        ds = xr.open_zarr(store.url, group=group, consolidated=False)
        assert len(ds.data_vars) >= 1, group
    stim = xr.open_zarr(store.url, group="stimuli", consolidated=False)
    assert stim.images.dtype == np.uint8 and stim.images.dims == ("image", "y", "x", "rgb")
    rois = xr.open_zarr(store.url, group="subjects/subj01/rois", consolidated=False)
    assert {"V1", "V2", "V3", "V4", "floc-faces", "ecc05", "ecc40p"} <= set(rois.roi.values)
    assert "prf-visualrois" in str(rois.roi_source.sel(roi="V1").values)
    train = xr.open_zarr(store.url, group="subjects/subj01/train", consolidated=False)
    assert {"voxel_i", "voxel_j", "voxel_k"} <= set(train.coords)
    assert "source" in train.attrs and "library_versions" in train.attrs


def test_stimuli_and_captions_equal_the_source(mini_nsd, ingested):
    import h5py

    store, _ = ingested
    stim = xr.open_zarr(store.url, group="stimuli", consolidated=False)
    ids = stim.image.values
    with h5py.File(mini_nsd / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        brick = f["imgBrick"]
        np.testing.assert_array_equal(stim.images.values, np.stack([brick[i] for i in ids]))
    caps = np.load(mini_nsd / "COCO_73k_annots_curated.npy")
    assert stim.captions.values.tolist() == caps[ids].tolist()


def test_rois_equal_labels_of_the_files(mini_nsd, ingested):
    store, _ = ingested
    rois = xr.open_zarr(store.url, group="subjects/subj01/rois", consolidated=False)
    roi_dir = mini_nsd / "nsddata/ppdata/subj01/func1pt8mm/roi"
    mask = nib.load(roi_dir / "nsdgeneral.nii.gz").get_fdata() > 0
    vis = np.rint(nib.load(roi_dir / "prf-visualrois.nii.gz").get_fdata())[mask]
    ecc = np.rint(nib.load(roi_dir / "prf-eccrois.nii.gz").get_fdata())[mask]
    np.testing.assert_array_equal(rois.masks.sel(roi="V1").values, np.isin(vis, [1, 2]))
    np.testing.assert_array_equal(rois.masks.sel(roi="V4").values, vis == 7)
    np.testing.assert_array_equal(rois.masks.sel(roi="ecc40p").values, ecc == 5)


def test_nifti_stream_equals_hdf5(mini_nsd, ingested, tmp_path):
    store, _ = ingested
    other = Store(str(tmp_path / "nii.zarr"))
    ingest(other, Source(str(mini_nsd)), 1, SESSIONS, prefer="nii.gz", stimuli=False, progress=False)
    a = xr.open_zarr(store.url, group="subjects/subj01/train", consolidated=False).fmri.values
    b = xr.open_zarr(other.url, group="subjects/subj01/train", consolidated=False).fmri.values
    np.testing.assert_array_equal(a, b)


def test_rerun_skips_everything(mini_nsd, ingested):
    store, _ = ingested
    again = ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    assert again["sessions_written"] == 0 and again["sessions_skipped"] == len(SESSIONS)
    assert again["stimulus_blocks_written"] == 0


def test_interrupted_ingest_resumes_identical(mini_nsd, ingested, tmp_path, monkeypatch):
    store, _ = ingested
    part = Store(str(tmp_path / "part.zarr"))
    calls = {"n": 0}
    real = ingest_mod.ingest_session

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "ingest_session", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        ingest(part, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    done, total = part.progress("subjects/subj01/betas")
    assert done == 2 and total == len(SESSIONS)
    monkeypatch.setattr(ingest_mod, "ingest_session", real)
    summary = ingest(part, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    assert summary["sessions_skipped"] == 2 and summary["sessions_written"] == len(SESSIONS) - 2
    for group in ["subjects/subj01/betas", "subjects/subj01/train", "subjects/subj01/test", "stimuli"]:
        xr.testing.assert_identical(
            xr.open_zarr(store.url, group=group, consolidated=False).drop_attrs(),
            xr.open_zarr(part.url, group=group, consolidated=False).drop_attrs(),
        )


def test_second_subject_extends_stimuli(mini_nsd, ingested, tmp_path):
    store = Store(str(tmp_path / "two.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    n1 = xr.open_zarr(store.url, group="stimuli", consolidated=False).sizes["image"]
    ingest(store, Source(str(mini_nsd)), 2, SESSIONS, progress=False)
    stim = xr.open_zarr(store.url, group="stimuli", consolidated=False)
    ids = set(stim.image.values.tolist())
    for subject in (1, 2):
        for part in ("train", "test"):
            sub = xr.open_zarr(store.url, group=f"subjects/subj{subject:02d}/{part}", consolidated=False)
            assert set(sub.image.values.tolist()) <= ids
    assert stim.sizes["image"] > n1
    t1 = xr.open_zarr(store.url, group="subjects/subj01/test", consolidated=False)
    t2 = xr.open_zarr(store.url, group="subjects/subj02/test", consolidated=False)
    assert t1.sizes["voxel"] != t2.sizes["voxel"]  # subjects differ in voxel count
    assert set(t1.image.values) == set(t2.image.values)  # shared test set
    with __import__("h5py").File(mini_nsd / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        ids_sorted = stim.image.values
        np.testing.assert_array_equal(stim.images.values[-1], f["imgBrick"][ids_sorted[-1]])


# -- bad input: one clear error each, store left consistent ---------------------------------------

def _copy(mini_nsd, tmp_path) -> Path:
    dst = tmp_path / "nsd"
    shutil.copytree(mini_nsd, dst)
    return dst


def _betas(root, subject, session, ext="nii.gz"):
    return root / (f"nsddata_betas/ppdata/subj{subject:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
                   f"betas_session{session:02d}.{ext}")


def test_missing_session_file(mini_nsd, tmp_path):
    root = _copy(mini_nsd, tmp_path)
    _betas(root, 1, 2).unlink()
    _betas(root, 1, 2, "hdf5").unlink()
    store = Store(str(tmp_path / "s.zarr"))
    with pytest.raises(nsd.NSDFileMissing, match=r"betas_session02.nii.gz .*not found.*--sessions"):
        ingest(store, Source(str(root)), 1, SESSIONS, stimuli=False, progress=False)
    assert 1 not in store.done_regions("subjects/subj01/betas")  # session 2 is region 1
    assert not store.is_complete("subjects/subj01/train")


def test_truncated_gzip(mini_nsd, tmp_path):
    root = _copy(mini_nsd, tmp_path)
    _betas(root, 1, 1, "hdf5").unlink()
    path = _betas(root, 1, 1)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(nsd.NSDFormatError, match=r"betas_session01.nii.gz"):
        ingest(Store(str(tmp_path / "s.zarr")), Source(str(root)), 1, SESSIONS, stimuli=False, progress=False)


def test_mask_shape_mismatch(mini_nsd, tmp_path):
    root = _copy(mini_nsd, tmp_path)
    for ext in ("hdf5",):
        _betas(root, 1, 1, ext).unlink()
    mpath = root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    img = nib.load(mpath)
    data = np.asarray(img.dataobj)
    bigger = np.pad(data, ((0, 1), (0, 0), (0, 0)), constant_values=-1)
    nib.save(nib.Nifti1Image(bigger, img.affine), mpath)
    with pytest.raises((nsd.NSDFormatError, IngestError), match=r"mask is .*same space"):
        ingest(Store(str(tmp_path / "s.zarr")), Source(str(root)), 1, SESSIONS, stimuli=False, progress=False)


def test_subject_missing_from_design(mini_nsd, tmp_path):
    with pytest.raises(nsd.NSDError, match="subject 9 is not in the experimental design"):
        ingest(Store(str(tmp_path / "s.zarr")), Source(str(mini_nsd)), 9, SESSIONS, progress=False)


def test_missing_captions_says_how_to_fix(mini_nsd, tmp_path):
    root = _copy(mini_nsd, tmp_path)
    (root / "COCO_73k_annots_curated.npy").unlink()
    with pytest.raises(IngestError, match="captions_url.*--no-captions"):
        ingest(Store(str(tmp_path / "s.zarr")), Source(str(root)), 1, SESSIONS, progress=False)


def test_unknown_scheme_and_unwritable_store(mini_nsd, tmp_path):
    with pytest.raises(StorageError, match="ftpx"):
        ingest(Store("ftpx://host/x.zarr"), Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises((StorageError, OSError)):
        ingest(Store(str(blocker / "store.zarr")), Source(str(mini_nsd)), 1, SESSIONS, progress=False)
