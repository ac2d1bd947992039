"""The glm stage: GLMsingle's types A-D as Dask tasks over a store, against the in-memory reference.

- equals :func:`fmri2img.glm.fit_session` (the math's own composition) for two block sizes;
- the same bit for bit on a process-based LocalCluster as in-process;
- a run killed half way resumes to the same result without redoing finished blocks;
- bad input found while reading leaves the store as it was.
"""
from __future__ import annotations

import numpy as np
import pytest

from fmri2img import glm
from fmri2img.pipeline.glm import tasks as gtasks
from fmri2img.pipeline.glm.inputs import ArrayInputs
from fmri2img.pipeline.glm.stage import glm_session
from fmri2img.storage.store import Store
from tests.storecompare import arrays, assert_same_values

GROUP = "subjects/subj01/glm/session01"


@pytest.fixture(scope="module")
def sim():
    return glm.simulate_session(n_runs=4, n_volumes=120, n_voxels=240, seed=3)


@pytest.fixture(scope="module")
def reference(sim):
    return glm.fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, preset="glmsingle")


def _inputs(sim, **kw):
    return ArrayInputs(list(sim.runs), list(sim.design), sim.tr, sim.stimdur, **kw)


def _fit(url, sim, block_size, **kw):
    store = Store(url)
    glm_session(store, _inputs(sim), 1, 1, options=glm.get_preset("glmsingle"), block_size=block_size,
                progress=False, **kw)
    return store


@pytest.mark.parametrize("block_size", [64, 97])
def test_the_stage_equals_the_in_memory_glm(sim, reference, tmp_path, block_size):
    ds = _fit(str(tmp_path / "s.zarr"), sim, block_size).open_dataset(GROUP)
    assert list(ds.model.values) == list(reference.models) and int(ds.pcnum) == reference.pcnum
    np.testing.assert_array_equal(ds.hrf_index.values, reference.hrf_index)
    np.testing.assert_allclose(ds.betas.values, reference.betas, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ds.r2.values, reference.r2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ds.onoff_r2.values, reference.onoff_r2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.meanvol.values, reference.meanvol, rtol=1e-6)
    np.testing.assert_array_equal(np.isnan(ds.frac.values), np.isnan(reference.frac))
    np.testing.assert_allclose(ds.frac.values, reference.frac, atol=1e-6)
    np.testing.assert_array_equal(ds.noise_pool.values, reference.noise_pool)
    assert ds.betas.dtype == np.float32 and ds.betas.attrs["units"] == "percent signal change"
    np.testing.assert_array_equal(ds.run.values, reference.runs)
    assert (ds.image.values == -1).all()  # arrays name no image


def test_block_sizes_give_the_same_result(sim, tmp_path):
    a = arrays(_fit(str(tmp_path / "a.zarr"), sim, 50), prefix=GROUP)
    b = arrays(_fit(str(tmp_path / "b.zarr"), sim, 240), prefix=GROUP)
    assert sorted(a) == sorted(b)
    for key in a:
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-4, err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_process_cluster_gives_the_same_bits(sim, tmp_path):
    from distributed import Client, LocalCluster

    local = arrays(_fit(str(tmp_path / "local.zarr"), sim, 64), prefix=GROUP)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        store = Store(str(tmp_path / "dist.zarr"))
        glm_session(store, _inputs(sim), 1, 1, options=glm.get_preset("glmsingle"), block_size=64, client=client,
                    progress=False)
    assert_same_values(arrays(store, prefix=GROUP), local)


def test_a_killed_run_resumes_to_the_same_result(sim, tmp_path, monkeypatch):
    whole = arrays(_fit(str(tmp_path / "whole.zarr"), sim, 48), prefix=GROUP)
    real, calls = gtasks.fit_last, {"n": 0}

    def dies_on_the_third(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(gtasks, "fit_last", dies_on_the_third)
    url = str(tmp_path / "killed.zarr")
    with pytest.raises(KeyboardInterrupt):
        _fit(url, sim, 48)
    store = Store(url)
    assert store.progress(GROUP) == (2, 5)  # two blocks recorded before the kill
    first = {"n": 0}
    monkeypatch.setattr(gtasks, "fit_last", real)
    real_first = gtasks.fit_first
    monkeypatch.setattr(gtasks, "fit_first", lambda *a: first.update(n=first["n"] + 1) or real_first(*a))
    _fit(url, sim, 48)
    assert first["n"] == 0  # the first pass was complete: not redone
    assert_same_values(arrays(Store(url), prefix=GROUP), whole)
    assert not Store(url).has_group("subjects/subj01/glm/_work/session01/timeseries")  # deleted when done


def test_a_finished_session_is_skipped(sim, tmp_path):
    store = _fit(str(tmp_path / "s.zarr"), sim, 120)
    again = glm_session(store, _inputs(sim), 1, 1, options=glm.get_preset("glmsingle"), block_size=120,
                        progress=False)
    assert again["skipped"] is True


class _Truncated(ArrayInputs):
    """Inputs whose last run fails while it is read (as a truncated file does)."""

    def read_run(self, r, voxels=None):
        if r == len(self.data) - 1:
            raise ValueError("run 4 is truncated")
        return super().read_run(r, voxels)


def test_bad_input_found_while_reading_leaves_no_trace(sim, tmp_path):
    store = Store(str(tmp_path / "s.zarr"))
    bad = _Truncated(list(sim.runs), list(sim.design), sim.tr, sim.stimdur)
    with pytest.raises(ValueError, match="truncated"):
        glm_session(store, bad, 1, 1, options=glm.get_preset("glmsingle"), block_size=120, progress=False)
    assert store.list_groups("subjects") == []


def test_a_design_without_repeats_is_refused_before_any_write(sim, tmp_path):
    store = Store(str(tmp_path / "s.zarr"))
    n_runs = len(sim.design)
    designs = []
    for r, d in enumerate(sim.design):  # every condition shown once: nothing to cross-validate
        one = np.zeros((d.shape[0], n_runs), np.uint8)
        one[10, r] = 1
        designs.append(one)
    inputs = ArrayInputs(list(sim.runs), designs, sim.tr, sim.stimdur)
    with pytest.raises(glm.RepeatsError):
        glm_session(store, inputs, 1, 1, options=glm.get_preset("glmsingle"), progress=False)
    assert store.list_groups() == []
