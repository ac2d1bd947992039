"""``fmri2img glm`` on mini-NSD's time series: the groups, the betas ingest writes, the export, bad input.

mini-NSD's time series are simulated from known single-trial responses (the betas files' values
at nsdgeneral voxels), so the GLM's recovery is measured against the truth.
"""
from __future__ import annotations

import gzip
import shutil

import h5py
import numpy as np
import pytest

from fmri2img import glm
from fmri2img.cli.main import main
from fmri2img.mininsd import MiniNSDSpec, generate_mini_nsd
from fmri2img.pipeline.glm.inputs import NSDInputs
from fmri2img.storage import nsd
from fmri2img.storage.nsd import timeseries as ts
from fmri2img.storage.store import Store
from tests.storecompare import files

SPEC = MiniNSDSpec(subjects=(1,), n_sessions=10, trials_per_session=75, volume_shape=(20, 22, 18), timeseries=True,
                   timeseries_sessions=2, side=64)


@pytest.fixture(scope="module")
def mini_ts(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini-ts")
    generate_mini_nsd(root, SPEC)
    return root


@pytest.fixture(scope="module")
def fitted(mini_ts, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted")
    store, export = out / "store.zarr", out / "export"
    argv = ["glm", "--source", str(mini_ts), "--store", str(store), "--subject", "1", "--sessions", "1-2",
            "--block-size", "1024", "--export", str(export), "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    return Store(str(store)), export, argv


def test_the_command_writes_each_session_and_the_subjects_betas(fitted, capsys):
    store, _, argv = fitted
    for s in (1, 2):
        ds = store.open_dataset(f"subjects/subj01/glm/session{s:02d}")
        assert list(ds.model.values) == ["fithrf", "fithrf_glmdenoise", "fithrf_glmdenoise_rr"]
        assert ds.betas.dims == ("model", "trial", "voxel") and ds.betas.dtype == np.float32
        assert set(ds.coords) >= {"image", "run", "voxel_i", "voxel_j", "voxel_k"}
        assert (ds.image.values >= 0).all() and int(ds.pcnum) >= 0 and ds.hrf_index.dtype == np.int16
    assert not any("_work" in g for g in store.list_groups())  # staged series and first pass deleted
    betas = store.open_dataset("subjects/subj01/betas")
    glm1 = store.open_dataset("subjects/subj01/glm/session01")
    flat = np.ravel_multi_index((glm1.voxel_i.values, glm1.voxel_j.values, glm1.voxel_k.values), (20, 22, 18))
    want = np.ravel_multi_index((betas.voxel_i.values, betas.voxel_j.values, betas.voxel_k.values), (20, 22, 18))
    rows = betas.session.values == 1
    np.testing.assert_array_equal(betas.betas.values[rows],
                                  glm1.betas.sel(model="fithrf_glmdenoise_rr").values[:, np.searchsorted(flat, want)])
    np.testing.assert_array_equal(betas.image.values[rows], glm1.image.values)
    assert store.is_complete("subjects/subj01/train") and store.is_complete("subjects/subj01/test")
    capsys.readouterr()
    assert main(argv) == 0  # a rerun redoes nothing
    assert "already done" in capsys.readouterr().out


def test_the_export_reads_like_nsds_betas_files(fitted, mini_ts):
    store, export, _ = fitted
    ds = store.open_dataset("subjects/subj01/glm/session02")
    mask = nsd.read_mask(*_fs_path(mini_ts, nsd.NSDLayout(str(mini_ts)).roi(1, "nsdgeneral")))
    voxels = np.flatnonzero(mask)
    from fsspec.implementations.local import LocalFileSystem

    got = nsd.read_session_betas(LocalFileSystem(), nsd.NSDLayout(str(export)), 1, 2, voxels, mask.shape, 75)
    flat = np.ravel_multi_index((ds.voxel_i.values, ds.voxel_j.values, ds.voxel_k.values), mask.shape)
    want = ds.betas.sel(model="fithrf_glmdenoise_rr").values[:, np.searchsorted(flat, voxels)]
    np.testing.assert_allclose(got, want, atol=0.5 / 300 + 1e-6)  # NSD's int16 × 300


def _fs_path(root, path):
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), path


def test_denoising_and_ridge_recover_the_truth_better_than_an_assumed_hrf(fitted, mini_ts):
    store, _, _ = fitted
    ds = store.open_dataset("subjects/subj01/glm/session01")
    with h5py.File(mini_ts / "mini_nsd_timeseries_truth.hdf5") as f:
        voxels, responding = f["subj01/voxels"][:], f["subj01/responding"][:]
        truth = f["subj01/session01/amplitudes"][:]
    flat = np.ravel_multi_index((ds.voxel_i.values, ds.voxel_j.values, ds.voxel_k.values), (20, 22, 18))
    at = np.searchsorted(flat, voxels[responding])

    def recovery(betas):
        return float(np.median([np.corrcoef(betas[:, k], truth[:, k])[0, 1] for k in range(truth.shape[1])]))

    found = {m: recovery(ds.betas.sel(model=m).values[:, at]) for m in ds.model.values}
    inputs = NSDInputs.open(str(mini_ts), 1, 1)
    runs = [inputs.read_run(r)[:, at] for r in range(len(inputs.runs))]
    assumed = glm.fit_session(runs, [r.design for r in inputs.runs], inputs.tr, inputs.stimdur,
                              wantlibrary=False, wantglmdenoise=False, wantfracridge=False)
    baseline = recovery(assumed.betas[0])
    assert found["fithrf"] > baseline and found["fithrf_glmdenoise_rr"] > found["fithrf"], (found, baseline)
    assert found["fithrf_glmdenoise_rr"] > 0.6, found


def _refused(argv, store_path, capsys, match):
    before = files(store_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("error:") == 1 and "Traceback" not in err, err
    assert files(store_path) == before  # byte for byte


@pytest.fixture
def broken(mini_ts, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(mini_ts, root)
    return root


def _argv(root, store, *extra):
    return ["glm", "--source", str(root), "--store", str(store), "--subject", "1", "--workers", "1",
            "--no-progress", *extra]


def test_a_truncated_run_is_refused_and_the_store_is_untouched(broken, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert main(_argv(broken, store, "--sessions", "1", "--block-size", "1024")) == 0
    path = ts.TimeseriesLayout(str(broken)).timeseries(1, 2, 2)
    raw = gzip.decompress(open(path, "rb").read())
    with gzip.open(path, "wb") as f:  # a download cut short: the header is whole, the data end early
        f.write(raw[: len(raw) // 2])
    _refused(_argv(broken, store, "--sessions", "2", "--block-size", "1024"), store, capsys,
             "timeseries_session02_run02.nii.gz")


def test_a_design_without_trials_is_refused_before_any_write(broken, tmp_path, capsys):
    design = ts.TimeseriesLayout(str(broken)).design(1, 1, 2)
    n = len(open(design).read().split())
    open(design, "w").write("0\n" * n)
    store = tmp_path / "s.zarr"
    _refused(_argv(broken, store, "--sessions", "1"), store, capsys, "no trials")


def test_a_mask_of_another_shape_is_refused(broken, tmp_path, capsys):
    import nibabel as nib

    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)), mask)
    store = tmp_path / "s.zarr"
    _refused(_argv(broken, store, "--sessions", "1", "--mask", str(mask)), store, capsys, "mask")


def test_an_hrf_library_longer_than_a_run_is_refused(broken, tmp_path, capsys):
    lib = tmp_path / "lib.tsv"
    np.savetxt(lib, np.ones((400, 3)), delimiter="\t")
    store = tmp_path / "s.zarr"
    _refused(_argv(broken, store, "--sessions", "1", "--hrf-library", str(lib)), store, capsys, "hrf_library")


def test_an_unknown_preset_is_refused(broken, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    store = tmp_path / "s.zarr"
    cfg.write_text(f'[store]\nurl = "{store}"\n[source]\nurl = "{broken}"\n[glm]\nsubjects = [1]\npreset = "fast"\n')
    _refused(["glm", "--config", str(cfg), "--workers", "1"], store, capsys, "preset")


def test_ridge_betas_are_more_reliable_across_sessions_than_fithrfs(fitted, mini_ts):
    """The same image's response patterns in two sessions agree better with type D than with type B (GLMsingle's
    claim, on the nsdgeneral voxels that respond)."""
    store, _, _ = fitted
    s1, s2 = (store.open_dataset(f"subjects/subj01/glm/session{s:02d}") for s in (1, 2))
    with h5py.File(mini_ts / "mini_nsd_timeseries_truth.hdf5") as f:
        voxels, responding = f["subj01/voxels"][:], f["subj01/responding"][:]
    flat = np.ravel_multi_index((s1.voxel_i.values, s1.voxel_j.values, s1.voxel_k.values), (20, 22, 18))
    at = np.searchsorted(flat, voxels[responding])
    shared = np.intersect1d(s1.image.values, s2.image.values)
    assert len(shared) >= 5

    def reliability(model):
        a, b = s1.betas.sel(model=model).values[:, at], s2.betas.sel(model=model).values[:, at]
        first = lambda ds, img: int(np.flatnonzero(ds.image.values == img)[0])  # noqa: E731
        return float(np.mean([np.corrcoef(a[first(s1, i)], b[first(s2, i)])[0, 1] for i in shared]))

    assert reliability("fithrf_glmdenoise_rr") > reliability("fithrf")
