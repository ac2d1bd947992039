"""fmri2img.glm's in-memory driver and block contract: partition invariance, the block
functions composed by hand (as a distributed driver would, through pickle), presets,
option paths, cross-validation pairs, and recovery of simulated ground truth.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fmri2img import glm
from fmri2img.glm import fit_session, simulate_session
from fmri2img.glm.crossval import xval_badness, xval_scale
from fmri2img.glm.options import NSD_FRACS


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: on a shared 2-core machine, threaded SVDs of small matrices thrash."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def sim():
    return simulate_session(n_runs=4, n_volumes=90, n_voxels=120, gain=(2.0, 4.0), seed=0)


@pytest.fixture(scope="module")
def whole(sim):
    return fit_session(sim.runs, sim.design, sim.tr, sim.stimdur)


def _assert_same(a, b, exact=False):
    assert a.models == b.models and a.pcnum == b.pcnum
    for name in ("hrf_index", "noise_pool", "pc_voxels", "frac"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in ("betas", "r2", "onoff_r2", "onoff_beta", "meanvol", "hrf_r2", "scaleoffset", "xvaltrend"):
        if exact:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        else:
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9, err_msg=name)
    for pa, pb in zip(a.pcs, b.pcs):
        np.testing.assert_allclose(pa, pb, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block_size", [7, 50])
def test_results_do_not_depend_on_the_voxel_blocks(sim, whole, block_size):
    _assert_same(whole, fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, block_size=block_size))


def test_block_functions_composed_by_hand_equal_the_driver(sim):
    """The contract a distributed driver follows: plan and results cross pickle; global steps see small inputs."""
    opts = glm.resolve_options("glmsingle")
    plan = pickle.loads(pickle.dumps(glm.prepare(sim.design, sim.tr, sim.stimdur, opts)))
    blocks = [slice(a, min(a + 25, 120)) for a in range(0, 120, 25)]
    part = [[r[:, sl] for r in sim.runs] for sl in blocks]
    ship = lambda obj: pickle.loads(pickle.dumps(obj))  # noqa: E731
    a = [ship(glm.fit_onoff_block(d, plan)) for d in part]
    b = [ship(glm.fit_hrf_block(d, plan)) for d in part]
    onoff_r2 = np.concatenate([x.onoff_r2 for x in a])
    meanvol = np.concatenate([x.meanvol for x in a])
    hrf_index = np.concatenate([x.hrf_index for x in b])
    th = glm.thresholds(onoff_r2, meanvol, plan.options)
    pool = glm.noise_pool(onoff_r2, meanvol, th)
    grams = [ship(glm.noise_gram_block(d, plan, pool[sl])) for d, sl in zip(part, blocks)]
    pcs = glm.noise_components([sum(g[r] for g in grams) for r in range(plan.n_runs)], opts.n_pcs)
    judges = glm.pc_voxels(onoff_r2, th)
    table = np.concatenate([glm.pcnum_xval_block(d, plan, hrf_index[sl], pcs, judges[sl])
                            for d, sl in zip(part, blocks)])
    pcnum, _ = glm.choose_pcnum(table, opts)
    dn = [ship(glm.fit_denoised_block(d, plan, hrf_index[sl], pcs, pcnum)) for d, sl in zip(part, blocks)]
    ref = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, block_size=25)
    assert pcnum == ref.pcnum
    np.testing.assert_array_equal(np.concatenate([x.betas_d for x in dn], axis=1), ref.model("fithrf_glmdenoise_rr"))
    np.testing.assert_array_equal(np.concatenate([x.betas_c for x in dn], axis=1), ref.model("fithrf_glmdenoise"))
    np.testing.assert_array_equal(np.concatenate([x.betas for x in b], axis=1), ref.model("fithrf"))
    np.testing.assert_array_equal(np.concatenate([x.frac for x in dn]), ref.frac)


def test_driver_outputs_end_to_end(sim, whole):
    n_trials = sum(int(d.sum()) for d in sim.design)
    assert whole.models == ("fithrf", "fithrf_glmdenoise", "fithrf_glmdenoise_rr")
    assert whole.betas.shape == (3, n_trials, 120) and whole.r2.shape == (3, 120)
    assert whole.hrf_r2.shape == (20, 120) and whole.hrf_index.min() >= 0 and whole.hrf_index.max() < 20
    np.testing.assert_array_equal(whole.conditions, sim.conditions)
    assert set(np.unique(whole.frac)) <= set(glm.GlmOptions().fracs)
    assert 1 <= whole.pcnum <= 9 and whole.xvaltrend.shape == (11,)
    assert [p.shape for p in whole.pcs] == [(90, 11)] * 4
    assert whole.noise_pool.any() and whole.pc_voxels.any()
    assert np.all(whole.scaleoffset[:, 0] >= 0)
    # type D at fraction 1 with rescaling equals type C up to the fit (h = [1, 0])
    full = whole.frac == 1
    if full.any():
        np.testing.assert_allclose(whole.betas[2][:, full], whole.betas[1][:, full], rtol=1e-6, atol=1e-8)


def test_presets_and_nsd_path(sim):
    nsd = glm.get_preset("nsd")
    assert nsd.fracs[:3] == (1.0, 0.99, 0.98) and len(nsd.fracs) == 28 and nsd.fracs[-1] == 0.05
    assert (nsd.xval_scheme, nsd.xval_zscore, nsd.xval_match, nsd.pc_r2_cutoff, nsd.pcnum_rule) == (
        "run-pairs", False, "first", 5.0, "matlab")
    assert glm.get_preset("glmsingle") == glm.GlmOptions()
    res = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, preset="nsd")
    assert res.plan.folds == ((0, 1), (2, 3))
    assert set(np.unique(res.frac)) <= set(NSD_FRACS)
    assert res.thresholds.pc_r2_cutoff == 5.0 and 0 <= res.pcnum <= 10


def _calcbadness_loop(folds, runs, conds, candidate, reference, zscore, first):
    """GLMsingle's / NSD's calcbadness written as plain loops, for comparison."""
    out = np.zeros(candidate.shape[1])
    for fold in folds:
        test = [t for t in range(len(runs)) if runs[t] in fold]
        train = [s for s in range(len(runs)) if runs[s] not in fold]
        for t in test:
            matches = [s for s in train if conds[s] == conds[t]]
            for s in matches[:1] if first else matches:
                out += (candidate[s] - reference[t]) ** 2
    if zscore:
        out = out / reference.std(axis=0, ddof=1) ** 2
    return out


@pytest.mark.parametrize("preset", ["glmsingle", "nsd"])
def test_xval_badness_equals_calcbadness_loops(sim, preset):
    plan = glm.prepare(sim.design, sim.tr, sim.stimdur, glm.get_preset(preset))
    rng = np.random.default_rng(1)
    ref, cand = rng.standard_normal((2, plan.n_trials, 5))
    ours = xval_badness(cand, ref, plan, xval_scale(ref, plan))
    loop = _calcbadness_loop(plan.folds, plan.trials.runs, plan.trials.conditions, cand, ref,
                             plan.options.xval_zscore, plan.options.xval_match == "first")
    np.testing.assert_allclose(ours, loop, rtol=1e-12)


def test_option_paths(sim):
    base = dict(runs=sim.runs, design=sim.design, tr=sim.tr, stimdur=sim.stimdur)
    assumed = fit_session(**base, wantlibrary=False, wantglmdenoise=False, wantfracridge=False)
    assert assumed.models == ("fithrf",) and np.all(assumed.hrf_index == 0)
    d_only = fit_session(**base, wantglmdenoise=False)
    assert d_only.models == ("fithrf", "fithrf_glmdenoise_rr") and d_only.pcnum == 0 and d_only.pcs is None
    subset = fit_session(**base, fracs=(0.9, 0.5, 0.2))  # 1 is fitted as the reference but not chosen
    assert set(np.unique(subset.frac)) <= {0.9, 0.5, 0.2}
    fixed = fit_session(**base, fracs=(1.0,), pcstop=-3)
    assert fixed.pcnum == 3 and fixed.scaleoffset is None and fixed.xvaltrend is None
    np.testing.assert_allclose(fixed.betas[2], fixed.betas[1], rtol=1e-9, atol=1e-9)


def test_voxel_masks(sim, whole):
    exclude = np.zeros(120, bool)
    exclude[np.flatnonzero(whole.noise_pool)[::2]] = True
    allowed = np.zeros(120, bool)
    allowed[:60] = True
    res = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, brain_exclude=exclude, pc_r2_cutoff_mask=allowed)
    np.testing.assert_array_equal(res.noise_pool, whole.noise_pool & ~exclude)
    np.testing.assert_array_equal(res.pc_voxels, whole.pc_voxels & allowed)
    nobody = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, pc_r2_cutoff=1e9)  # none passes: best 100
    assert nobody.pc_voxels.sum() == 100
    assert nobody.onoff_r2[nobody.pc_voxels].min() >= nobody.onoff_r2[~nobody.pc_voxels].max()


def test_extra_regressor_policies(sim):
    rng = np.random.default_rng(5)
    extra = [rng.standard_normal((90, 2)) for _ in sim.runs]
    fits = {p: fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, extra_regressors=extra, pcstop=0,
                           wantfracridge=False, denoise_extra_regressors=p) for p in ("all", "python", "matlab")}
    # with 0 PCs, GLMsingle's Python and MATLAB code both drop the extra regressors from type C
    np.testing.assert_array_equal(fits["python"].betas[1], fits["matlab"].betas[1])
    assert not np.allclose(fits["all"].betas[1], fits["matlab"].betas[1])
    # types A and B always use them
    np.testing.assert_array_equal(fits["all"].betas[0], fits["matlab"].betas[0])


def _median_corr(est, truth, vox):
    return np.median([np.corrcoef(est[:, v], truth[:, v])[0, 1] for v in vox])


def _reliability(est, conditions, vox):
    """Median over voxels of the correlation between first and second presentations."""
    trials = [np.flatnonzero(conditions == c) for c in np.unique(conditions)]
    a, b = np.array([t[:2] for t in trials if t.size >= 2]).T
    return np.median([np.corrcoef(est[a, v], est[b, v])[0, 1] for v in vox])


def test_recovery_of_simulated_truth(sim, whole):
    """Types B–D estimate the true single-trial responses better than an assumed canonical HRF;
    D's betas are more reliable across repeats than B's (GLMsingle's paper, Figs. 3–5)."""
    canonical = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, wantlibrary=False,
                            wantglmdenoise=False, wantfracridge=False)
    vox = np.flatnonzero(sim.signal)
    base = _median_corr(canonical.betas[0], sim.betas, vox)
    scores = [_median_corr(whole.betas[m], sim.betas, vox) for m in range(3)]
    assert all(s > base + 0.03 for s in scores), (base, scores)
    assert scores[2] > scores[0] + 0.05
    rel_b = _reliability(whole.betas[0], sim.conditions, vox)
    rel_d = _reliability(whole.betas[2], sim.conditions, vox)
    assert rel_d > rel_b + 0.02, (rel_b, rel_d)


def test_plan_of_an_nsd_session_is_small_and_picklable():
    nsd = simulate_session(n_voxels=2, seed=0)  # 12 runs x 226 volumes, 744 trials
    plan = glm.prepare(nsd.design, nsd.tr, nsd.stimdur)
    blob = pickle.dumps(plan)
    assert len(blob) < 300_000
    back = pickle.loads(blob)
    assert back.n_trials == 744 and back.n_volumes == (226,) * 12 and back.library.shape == (40, 20)
    np.testing.assert_array_equal(back.pairs[0], plan.pairs[0])
