"""Every bad input to fmri2img.glm gets one clear error of its own class (all ValueError,
all picklable with class and message intact)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fmri2img import glm
from fmri2img.glm import (
    DesignError,
    GlmInputError,
    GlmOptionError,
    HrfLibraryError,
    RepeatsError,
    RunTimingError,
    VoxelDataError,
    fit_session,
    simulate_session,
)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: on a shared 2-core machine, threaded SVDs of small matrices thrash."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def sim():
    return simulate_session(n_runs=3, n_volumes=60, n_voxels=30, seed=2)


def _fit(sim, runs=None, design=None, tr=None, **kw):
    return fit_session(sim.runs if runs is None else runs, sim.design if design is None else design,
                       sim.tr if tr is None else tr, sim.stimdur, **kw)


@pytest.mark.parametrize("cls", [GlmInputError, RunTimingError, DesignError, RepeatsError, VoxelDataError,
                                 HrfLibraryError, GlmOptionError])
def test_errors_are_value_errors_that_survive_pickle(cls):
    err = cls("run 3 has 80 volumes but its design has 90")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == str(err) and isinstance(back, ValueError)


def test_runs_with_different_trs(sim):
    with pytest.raises(RunTimingError, match="different TRs"):
        _fit(sim, tr=[1.333, 1.333, 1.0])


def test_run_length_mismatch(sim):
    runs = [sim.runs[0][:-1]] + sim.runs[1:]
    with pytest.raises(RunTimingError, match="run 0 of runs has 59 volumes but its design has 60"):
        _fit(sim, runs=runs)


def test_design_with_no_trials(sim):
    with pytest.raises(DesignError, match="no trials"):
        _fit(sim, design=[np.zeros_like(d) for d in sim.design])


def test_design_not_binary_and_simultaneous_onsets(sim):
    bad = [d.astype(float) * 2 for d in sim.design]
    with pytest.raises(DesignError, match="0 and 1"):
        _fit(sim, design=bad)
    both = [d.copy() for d in sim.design]
    vol = int(np.flatnonzero(both[1].any(axis=1))[0])
    both[1][vol, (int(np.argmax(both[1][vol])) + 1) % both[1].shape[1]] = 1
    with pytest.raises(DesignError, match=f"run 1, volume {vol} has 2 onsets"):
        _fit(sim, design=both)


def test_conditions_never_repeated_across_runs(sim):
    unique = []
    for d in sim.design:  # every trial its own condition
        mat = np.zeros((d.shape[0], sum(int(x.sum()) for x in sim.design)), dtype=np.uint8)
        unique.append(mat)
    col = 0
    for d, mat in zip(sim.design, unique):
        for vol in np.flatnonzero(d.any(axis=1)):
            mat[vol, col] = 1
            col += 1
    with pytest.raises(RepeatsError) as info:
        _fit(sim, design=unique)
    msg = str(info.value)
    assert "type C's number of noise PCs" in msg and "type D's ridge fraction" in msg
    assert "pcstop=-B" in msg and "fracs=(f,)" in msg
    with pytest.raises(RepeatsError, match="type D's ridge fraction") as info:
        _fit(sim, design=unique, pcstop=-2)
    assert "noise PCs" not in str(info.value)
    res = _fit(sim, design=unique, pcstop=-2, fracs=(0.5,))  # nothing left to cross-validate
    assert res.pcnum == 2 and np.all(res.frac == 0.5)


def test_nan_and_constant_voxels(sim):
    runs = [r.copy() for r in sim.runs]
    runs[1][5, 4] = np.nan
    with pytest.raises(VoxelDataError, match=r"data run 1 has NaN or inf in 1 voxel\(s\) \(block columns \[4\]\)"):
        _fit(sim, runs=runs)
    runs = [r.copy() for r in sim.runs]
    for r in runs:
        r[:, 7] = 1000.0
    with pytest.raises(VoxelDataError, match=r"1 voxel\(s\) \(block columns \[7\]\) are constant"):
        _fit(sim, runs=runs)


def test_library_of_wrong_length_or_time_step(sim):
    table = np.loadtxt(glm.hrf.resources.files("fmri2img.glm").joinpath("hrf_library.tsv").open(), comments="#")
    with pytest.raises(HrfLibraryError, match="sampled at another time step"):
        _fit(sim, hrf_library=table)  # GLMsingle's 0.1-s table, not resampled to the TR
    with pytest.raises(HrfLibraryError, match="at least 2 time points"):
        _fit(sim, hrf_library=np.ones((1, 3)))
    with pytest.raises(HrfLibraryError, match="106 time points, 141.3 s at TR 1.333 s"):
        _fit(sim, hrf_library=glm.hrf_library(sim.stimdur, 0.5))  # sampled every 0.5 s, not every TR
    with pytest.raises(HrfLibraryError, match="no positive peak"):
        _fit(sim, hrf_library=-np.abs(glm.hrf_library(sim.stimdur, sim.tr)))


@pytest.mark.parametrize(
    "option, match",
    [
        (dict(fracs=(0.0, 0.5)), "fracs must be one or more fractions"),
        (dict(fracs=(1.2,)), "fracs must be one or more fractions"),
        (dict(pcstop=0.5), "pcstop must be >= 1"),
        (dict(pcstop=-20), "between 0 and n_pcs=10"),
        (dict(n_pcs=-1), "n_pcs must be a non-negative integer"),
        (dict(n_pcs=1), "pcnum_rule='python' scans 1..n_pcs-1"),
        (dict(brainthresh=(99, -1)), "brainthresh"),
        (dict(maxpolydeg=-1), "maxpolydeg"),
        (dict(maxpolydeg=(1, 2)), "maxpolydeg has 2 degrees but there are 3 runs"),
        (dict(xval_scheme="k-fold"), "xval_scheme='k-fold' is unknown"),
        (dict(xval_scheme=((0,), (5,))), r"names run\(s\) \[5\]"),
        (dict(xval_match="best"), "xval_match='best'"),
        (dict(wantlibrary="yes"), "wantlibrary must be True or False"),
        (dict(wantfracridg=False), "unknown GLM option"),
        (dict(preset="spm"), "unknown GLM preset 'spm': the known presets are glmsingle, nsd"),
    ],
)
def test_bad_options(sim, option, match):
    with pytest.raises(GlmOptionError, match=match):
        _fit(sim, **option)


def test_bad_block_size(sim):
    with pytest.raises(GlmOptionError, match="block_size"):
        _fit(sim, block_size=0)


def test_block_function_checks_its_data(sim):
    plan = glm.prepare(sim.design, sim.tr, sim.stimdur)
    with pytest.raises(VoxelDataError, match="data has 2 runs but the design has 3"):
        glm.fit_hrf_block(sim.runs[:2], plan)
    with pytest.raises(VoxelDataError, match="must be \\(volumes=60, voxels\\)"):
        glm.fit_onoff_block([r.T for r in sim.runs], plan)


def test_trials_near_the_run_end_are_logged(sim, caplog):
    glm.prepare(sim.design, sim.tr, sim.stimdur)
    assert "before the run's end" not in caplog.text
    late = [d.copy() for d in sim.design]
    late[2][-3, 0] = 1
    glm.prepare(late, sim.tr, sim.stimdur)
    assert "run(s) [2] have a trial onset less than 8 s before the run's end" in caplog.text
