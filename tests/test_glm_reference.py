"""fmri2img.glm against independent references: np.linalg.lstsq, fracridge, np.linalg.svd,
and numbers computed by GLMsingle itself (its HRFs, its tail threshold).

Designs are rebuilt here from the 0/1 design with np.convolve and np.vander, not with the
package's own helpers, so a shared mistake cannot cancel out.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import block_diag

from fmri2img.glm import canonical_hrf, fit_session, hrf_library, simulate_session, tail_threshold
from fmri2img.glm.crossval import pcnum_rule
from fmri2img.glm.linalg import RunSystem, SessionSystem, fracridge_alphas, shrink

DEG = 2  # explicit polynomial degree in these tests


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: on a shared 2-core machine, threaded SVDs of small matrices thrash."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def sim():
    return simulate_session(n_runs=4, n_volumes=90, n_voxels=60, gain=(2.0, 4.0), seed=3)


def _onsets(design_run):
    return np.flatnonzero(np.asarray(design_run).any(axis=1))


def _conv(onsets, n, hrf):
    cols = []
    for o in onsets:
        delta = np.zeros(n)
        delta[o] = 1
        cols.append(np.convolve(delta, hrf)[:n])
    return np.stack(cols, axis=1)


def _poly(n):
    return np.vander(np.linspace(-1, 1, n), DEG + 1, increasing=True)


def _resid(basis, y):
    """y minus its least-squares fit on basis (independent of the package's projections)."""
    return y - basis @ np.linalg.lstsq(basis, y, rcond=None)[0]


def _extra(sim, seed=7):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((r.shape[0], 2)) for r in sim.runs]


@pytest.mark.parametrize("with_extra", [False, True])
def test_type_a_equals_lstsq(sim, with_extra):
    extra = _extra(sim) if with_extra else None
    res = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, maxpolydeg=DEG, extra_regressors=extra,
                      wantglmdenoise=False, wantfracridge=False)
    hrf = canonical_hrf(sim.stimdur, sim.tr)
    n = sim.runs[0].shape[0]
    x = np.concatenate([_conv(_onsets(d), n, hrf).sum(axis=1) for d in sim.design])
    nuis = block_diag(*[_poly(n) for _ in sim.runs])
    if with_extra:
        nuis = np.hstack([nuis, block_diag(*extra)])
    y = np.vstack(sim.runs).astype(float)
    coef = np.linalg.lstsq(np.c_[x, nuis], y, rcond=None)[0][0]
    meanvol = y.mean(axis=0)
    np.testing.assert_allclose(res.meanvol, meanvol, rtol=1e-12)
    np.testing.assert_allclose(res.onoff_beta, coef * 100 / np.abs(meanvol), rtol=1e-8, atol=1e-10)
    drift = block_diag(*[_poly(n) for _ in sim.runs])
    r2 = 100 * (1 - np.sum(_resid(drift, y - np.outer(x, coef)) ** 2, 0) / np.sum(_resid(drift, y) ** 2, 0))
    np.testing.assert_allclose(res.onoff_r2, r2, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("with_extra", [False, True])
def test_type_b_equals_lstsq_for_every_hrf(sim, with_extra):
    extra = _extra(sim) if with_extra else None
    res = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, maxpolydeg=DEG, extra_regressors=extra,
                      wantglmdenoise=False, wantfracridge=False)
    lib = hrf_library(sim.stimdur, sim.tr)
    n, n_trials = sim.runs[0].shape[0], res.betas.shape[1]
    y = np.vstack(sim.runs).astype(float)
    drift = block_diag(*[_poly(n) for _ in sim.runs])
    nuis = np.hstack([drift, block_diag(*extra)]) if with_extra else drift
    yq = _resid(drift, y)
    r2_all, betas_all = [], []
    for h in range(lib.shape[1]):
        x = block_diag(*[_conv(_onsets(d), n, lib[:, h]) for d in sim.design])
        coef = np.linalg.lstsq(np.hstack([x, nuis]), y, rcond=None)[0][:n_trials]
        r2_all.append(100 * (1 - np.sum(_resid(drift, y - x @ coef) ** 2, 0) / np.sum(yq**2, 0)))
        betas_all.append(coef * 100 / np.abs(y.mean(axis=0)))
    r2_all = np.array(r2_all)
    np.testing.assert_allclose(res.hrf_r2, r2_all, rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(res.hrf_index, np.argmax(r2_all, axis=0))
    chosen = np.array(betas_all)[res.hrf_index, :, np.arange(y.shape[1])].T
    np.testing.assert_allclose(res.betas[0], chosen, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(res.r2[0], r2_all.max(axis=0), rtol=1e-7, atol=1e-7)


def test_fractional_ridge_equals_fracridge_package(sim):
    fracridge = pytest.importorskip("fracridge").fracridge
    lib = hrf_library(sim.stimdur, sim.tr)
    n = sim.runs[0].shape[0]
    xs = [_conv(_onsets(d), n, lib[:, 5]) for d in sim.design]
    qs = [np.linalg.qr(_poly(n))[0] for _ in sim.runs]
    ys = [_resid(_poly(n), r.astype(float)) for r in sim.runs]
    fracs = np.array([0.05, 0.2, 0.45, 0.7, 0.9, 1.0])
    ref_coef, ref_alpha = fracridge(block_diag(*[_resid(q, x) for q, x in zip(qs, xs)]), np.vstack(ys), fracs)
    system = SessionSystem([RunSystem.build(x, q, np.zeros((n, 0))) for x, q in zip(xs, qs)])
    rot = system.rotate(ys, sum(np.sum(y**2, 0) for y in ys))
    c = system.ols(rot)
    alphas = fracridge_alphas(system.s, c, fracs)
    np.testing.assert_allclose(alphas, ref_alpha, rtol=1e-6)
    for i in range(fracs.size):
        ours = system.betas(shrink(system.s, c, alphas[i]))
        np.testing.assert_allclose(ours, ref_coef[:, i, :], rtol=1e-7, atol=1e-9)


def test_type_d_fixed_frac_equals_fracridge_on_the_denoised_design(sim):
    fracridge = pytest.importorskip("fracridge").fracridge
    res = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, maxpolydeg=DEG, fracs=(0.6,), pcstop=-2,
                      wantautoscale=False)
    assert res.pcnum == 2 and np.all(res.frac == 0.6) and res.scaleoffset is None
    n = sim.runs[0].shape[0]
    betas_d = res.model("fithrf_glmdenoise_rr") * np.abs(res.meanvol) / 100
    for h in np.unique(res.hrf_index):
        vox = res.hrf_index == h
        nuis = [np.hstack([_poly(n), pcs[:, :2]]) for pcs in res.pcs]
        xt = block_diag(*[_resid(b, _conv(_onsets(d), n, res.plan.library[:, h])) for b, d in zip(nuis, sim.design)])
        yt = np.vstack([_resid(b, r[:, vox].astype(float)) for b, r in zip(nuis, sim.runs)])
        coef = fracridge(xt, yt, 0.6)[0]
        np.testing.assert_allclose(betas_d[:, vox], coef, rtol=1e-6, atol=1e-8)


def test_noise_pcs_equal_numpy_svd_of_noise_pool(sim):
    res = fit_session(sim.runs, sim.design, sim.tr, sim.stimdur, maxpolydeg=DEG, pcstop=-3, wantfracridge=False)
    assert res.noise_pool.sum() > 10
    for run, pcs in zip(sim.runs, res.pcs):
        y = _resid(_poly(run.shape[0]), run[:, res.noise_pool].astype(float))
        y = y / np.linalg.norm(y, axis=0)
        u = np.linalg.svd(y, full_matrices=False)[0][:, : pcs.shape[1]]
        u = u / u.std(axis=0, ddof=1)
        signs = np.sign(np.sum(u * pcs, axis=0))
        np.testing.assert_allclose(pcs, u * signs, rtol=1e-6, atol=1e-8)


def test_hrfs_equal_glmsingles_numbers():
    # Computed by GLMsingle 1.2 (glmsingle.hrf.gethrf, normalisemax per column) for stimdur 3 s, TR 1.333 s.
    lib = hrf_library(3, 1.333)
    assert lib.shape == (40, 20)
    col_sums = [1.78653, 1.96861, 2.13951, 2.26155, 2.15806, 2.05851, 1.95588, 1.92663, 2.10385, 2.38249,
                2.7598, 3.01474, 3.2505, 3.56531, 3.86686, 4.15731, 4.5252, 4.75519, 4.72199, 4.80284]
    np.testing.assert_allclose(lib.sum(axis=0), col_sums, atol=2e-5)
    np.testing.assert_array_equal(lib.argmax(axis=0), [3] * 4 + [4] * 7 + [5] * 6 + [6] * 3)
    row4 = [0.78391, 0.84834, 0.91618, 0.98322, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.93835, 0.86743, 0.80441,
            0.7344, 0.64873, 0.5675, 0.46306, 0.3383, 0.24316]
    np.testing.assert_allclose(lib[4], row4, atol=2e-5)
    can = canonical_hrf(3, 1.333)
    assert can.shape == (39,)
    np.testing.assert_allclose(can.sum(), 4.36296, atol=2e-5)
    np.testing.assert_allclose(can[:8], [0.0, 0.03372, 0.24583, 0.62778, 0.93351, 1.0, 0.87065, 0.65062], atol=2e-5)


def test_tail_threshold_equals_glmsingles():
    # glmsingle.gmm.findtailthreshold on the same RandomState(0) draws gave these values.
    rs = np.random.RandomState(0)
    v = np.r_[rs.randn(2000), 6 + 3 * rs.randn(600)]
    assert tail_threshold(v) == pytest.approx(2.440733288125814, rel=1e-9)
    v2 = np.r_[-2 + 0.5 * rs.randn(1500), 1 + 4 * rs.randn(300)]
    assert tail_threshold(v2) == pytest.approx(-0.6897457718391591, rel=1e-9)


@pytest.mark.parametrize(
    "trend, matlab, python",
    [
        ([0, 5, 9, 10, 10.2, 3], 3, 3),  # stops within 5 % of the best gain
        ([0, 1, 2, 3, 4, 5], 5, 4),  # Python's loop never reaches n_pcs
        ([0, -1, -2, -3], 0, 1),  # no gain: MATLAB keeps 0 PCs, Python takes 1
    ],
)
def test_pcnum_rule_matlab_and_python(trend, matlab, python):
    assert pcnum_rule(np.array(trend, float), 1.05, "matlab") == matlab
    assert pcnum_rule(np.array(trend, float), 1.05, "python") == python
