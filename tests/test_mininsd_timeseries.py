"""mini-NSD's time series: NSD's layout, read by the reader and nibabel, deterministic, and true to its truth file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from fmri2img.glm.design import convolve_onsets
from fmri2img.glm.hrf import hrf_library
from fmri2img.mininsd import MiniNSDSpec, generate_mini_nsd
from fmri2img.mininsd import timeseries as mts
from fmri2img.storage.nsd import NSDLayout, read_expdesign, read_mask, read_session_betas
from fmri2img.storage.nsd.timeseries import (TimeseriesLayout, design_trials, list_sessions, read_run,
                                             read_session_runs)

#: two subjects, two sessions of 40 trials, time series for the first, two runs of 20 trials
SPEC = dict(subjects=(1, 2), n_images=40, n_shared=4, n_per_subject=30, n_sessions=2, trials_per_session=40,
            side=32, volume_shape=(18, 20, 16), write_hdf5=False, timeseries=True, runs_per_session=2)


def make(root: Path, **overrides) -> tuple[Path, dict, MiniNSDSpec]:
    spec = MiniNSDSpec(**{**SPEC, **overrides})
    return root, generate_mini_nsd(root, spec, progress=lambda line: None), spec


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return make(tmp_path_factory.mktemp("ts_noisy"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """No AR(1) noise: the data are signal + drift + nuisance, up to int16 rounding."""
    return make(tmp_path_factory.mktemp("ts_clean"), timeseries_noise=0.0, subjects=(1,))


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_psc(root: Path, truth: h5py.Group, session: int, run: int) -> tuple[np.ndarray, np.ndarray]:
    """A run's data in percent signal change minus the truth's drift and nuisance, with the design rows."""
    lay, fs = TimeseriesLayout(str(root)), fsspec.filesystem("file")
    mask = read_mask(fs, lay.brainmask(1))
    rows = read_session_runs(fs, lay, 1, session).runs[run - 1].design
    data = read_run(fs, lay.timeseries(1, session, run), mask, n_volumes=rows.size).astype(np.float64)
    g = truth[f"session{session:02d}/run{run:02d}"]
    baseline = truth["baseline"][:]
    psc = 100.0 * (data / baseline - 1.0)
    n_vol = g.attrs["n_volumes"]  # the drift's polynomials span the whole run, trailing volume included
    psc -= (mts.drift_basis(n_vol) @ g["drift"][:] + g["nuisance"][:] @ truth["nuisance_loadings"][:].T)[:rows.size]
    return psc, rows


# --------------------------------------------------------------------------- layout


def test_files_in_nsd_layout_read_by_the_reader_and_nibabel(noisy):
    root, manifest, spec = noisy
    fs, lay = fsspec.filesystem("file"), TimeseriesLayout(str(root))
    entry = manifest["timeseries"]
    assert entry["tr"] == pytest.approx(4 / 3) and entry["volumes_per_run"] == entry["design_rows"] + 1
    for subject in spec.subjects:
        assert list_sessions(fs, lay, subject) == [1]
        runs = read_session_runs(fs, lay, subject, 1)
        assert len(runs.task_runs) == 2 and runs.n_trials == spec.trials_per_session
        mask = read_mask(fs, lay.brainmask(subject), expected_shape=runs.shape)
        for run in runs.runs:
            img = nib.load(str(run.path))
            assert img.get_data_dtype() == np.int16 and img.shape == (*runs.shape, entry["volumes_per_run"])
            assert img.header.get_zooms()[3] == pytest.approx(4 / 3) and img.header.get_xyzt_units()[1] == "sec"
            full = np.asarray(img.dataobj)
            assert not full[~mask].any(), "NSD's time series are zero outside the brain mask"
            np.testing.assert_array_equal(read_run(fs, run.path, mask), full[mask].T.astype(np.float32))
        assert f"nsddata_timeseries/ppdata/subj{subject:02d}/func1pt8mm/timeseries/timeseries_session01_run02.nii.gz" \
            in manifest["files"]
        assert manifest["subjects"][str(subject)]["timeseries"]["sessions"] == [1]


def test_designs_follow_the_experimental_design(noisy):
    """The TSVs' trials are the subject's trials of nsd_expdesign.mat, at 3 rows a stimpattern slot."""
    root, _, spec = noisy
    fs = fsspec.filesystem("file")
    exp = read_expdesign(fs, NSDLayout(str(root)).expdesign())
    pattern = scipy.io.loadmat(str(root / NSDLayout("").expdesign()))["stimpattern"]
    assert pattern.shape[1] == 2 and pattern[0].sum() == spec.trials_per_session
    runs = read_session_runs(fs, TimeseriesLayout(str(root)), 2, 1).task_runs
    onsets, images = zip(*(design_trials(r.design) for r in runs))
    master = exp.masterordering[:spec.trials_per_session]
    np.testing.assert_array_equal(np.concatenate(images), exp.subjectim[1, master - 1] - 1)
    for r, run_onsets in enumerate(onsets):
        np.testing.assert_array_equal(run_onsets, np.flatnonzero(pattern[0, r]) * 3)


def test_nsd_sized_runs():
    spec = MiniNSDSpec.sized(subjects=(1,), n_sessions=1, trials_per_session=750, volume_shape=(81, 104, 83),
                             timeseries=True)
    pattern = mts.stimpattern(spec)
    assert pattern.shape == (1, 12, 75) and sorted(set(pattern.sum(axis=2).ravel())) == [62, 63]
    assert pattern.sum() == 750 and mts.volumes_per_run(spec) == 226
    assert not pattern[..., [0, -2, -1]].any()


def test_same_spec_gives_byte_identical_files(noisy, tmp_path):
    root, _, _ = noisy
    again, _, _ = make(tmp_path / "again")
    first, second = digests(root), digests(again)
    assert first == second
    assert any(k.startswith("nsddata_timeseries/") for k in first) and mts.TRUTH_FILE in first


@pytest.mark.parametrize("field, value, match", [
    ("timeseries_sessions", 3, "timeseries_sessions=3"),
    ("runs_per_session", 13, "runs_per_session=13"),
    ("runs_per_session", 9, "at least 5 trials a run"),
    ("timeseries_noise", -1.0, "timeseries_noise=-1.0"),
])
def test_spec_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        MiniNSDSpec(**{**SPEC, field: value})


# --------------------------------------------------------------------------- truth


def test_noiseless_signal_regresses_to_the_truth_amplitudes_exactly(noisy):
    """With each voxel's HRF (GLMsingle's library via fmri2img.glm), OLS on the signal returns the amplitudes."""
    root, _, _ = noisy
    with h5py.File(root / mts.TRUTH_FILE) as f:
        g = f["subj01"]
        hrfs, idx = g["hrfs"][:], g["hrf_index"][:][g["responding"][:]]
        np.testing.assert_allclose(hrfs, hrf_library(3.0, 4 / 3))
        s = g["session01"]
        run, onsets, amps = s["run"][:], s["onset_volume"][:], s["amplitudes"][:].astype(np.float64)
        n_vol = s["run01"].attrs["n_volumes"]
    for r in (1, 2):
        on, a = onsets[run == r], amps[run == r]
        signal = mts.noiseless_signal(on, a, hrfs, idx, n_vol)
        for h in np.unique(idx)[:6]:
            cols = idx == h
            x = convolve_onsets(on, n_vol, hrfs[:, h])
            beta = np.linalg.lstsq(x, signal[:, cols], rcond=None)[0]
            np.testing.assert_allclose(beta, a[:, cols], atol=1e-9)


def test_amplitudes_are_the_mini_nsd_betas(noisy):
    """The true single-trial responses are the session's betas at nsdgeneral voxels, and nothing elsewhere."""
    root, manifest, _ = noisy
    fs = fsspec.filesystem("file")
    shape = tuple(manifest["subjects"]["2"]["volume_shape"])
    with h5py.File(root / mts.TRUTH_FILE) as f:
        g = f["subj02"]
        voxels, responding, amps = g["voxels"][:], g["responding"][:], g["session01/amplitudes"][:]
    with h5py.File(root / "mini_nsd_truth.hdf5") as f:
        nsdgeneral = f["subj02/voxels"][:]
    np.testing.assert_array_equal(voxels[responding], nsdgeneral)
    betas = read_session_betas(fs, NSDLayout(str(root)), 2, 1, voxels[responding], shape, amps.shape[0])
    np.testing.assert_allclose(amps, betas, atol=1e-6)


def test_clean_data_recover_the_amplitudes_through_the_files(clean):
    """No AR noise: data − drift − nuisance (truth) regressed on the known HRFs gives the amplitudes (to int16)."""
    root, _, _ = clean
    with h5py.File(root / mts.TRUTH_FILE) as f:
        g = f["subj01"]
        resp, hrfs = g["responding"][:], g["hrfs"][:]
        idx = g["hrf_index"][:][resp]
        s = g["session01"]
        run, onsets, amps = s["run"][:], s["onset_volume"][:], s["amplitudes"][:]
        psc, rows = run_psc(root, g, 1, 1)
    on = onsets[run == 1]
    np.testing.assert_array_equal(design_trials(rows)[0], on)
    assert np.abs(np.delete(psc, resp, axis=1)).max() < 0.1, "non-responding voxels carry only drift and nuisance"
    for h in np.unique(idx)[:5]:
        cols = idx == h
        x = convolve_onsets(on, rows.size, hrfs[:, h])
        beta = np.linalg.lstsq(x, psc[:, resp][:, cols], rcond=None)[0]
        error = np.abs(beta - amps[run == 1][:, cols])  # int16 rounding: ±0.5 / ~1200 of baseline a sample
        assert error.max() < 0.15 and error.mean() < 0.03


def test_noise_is_ar1_with_the_recorded_parameters(noisy):
    root, _, _ = noisy
    with h5py.File(root / mts.TRUTH_FILE) as f:
        g = f["subj01"]
        resp, rho, sd = g["responding"][:], g["ar_rho"][:], g["noise_sd"][:]
        s = g["session01"]
        signal = mts.noiseless_signal(s["onset_volume"][:][s["run"][:] == 1],
                                      s["amplitudes"][:][s["run"][:] == 1].astype(np.float64), g["hrfs"][:],
                                      g["hrf_index"][:][resp], s["run01"].attrs["n_volumes"])
        noise, rows = run_psc(root, g, 1, 1)
    noise[:, resp] -= signal[:rows.size]
    z = noise / sd
    assert np.std(z) == pytest.approx(1.0, abs=0.05)
    lag1 = np.mean(z[1:] * z[:-1]) / np.mean(z * z)
    assert lag1 == pytest.approx(float(np.mean(rho)), abs=0.05)


def test_manifest_records_the_time_series(noisy):
    root, _, _ = noisy
    manifest = json.loads((root / "mini_nsd.json").read_text())
    ts = manifest["timeseries"]
    assert ts["truth"] == mts.TRUTH_FILE and ts["runs_per_session"] == 2 and ts["trials_per_run"] == [20, 20]
    assert manifest["spec"]["timeseries"] is True
    assert "nsddata/ppdata/subj01/func1pt8mm/brainmask.nii.gz" in manifest["files"]


def test_runs_shorter_than_the_hrf_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shorter than a run"):
        make(tmp_path, subjects=(1,), n_sessions=2, trials_per_session=30, runs_per_session=5)
