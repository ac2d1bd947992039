"""BlockRidge (NumPy targets): sklearn equality, alpha selection, calibration,
push-through, weights and model-state round trips."""

import logging

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from fmri2img.ridge import BlockRidge

GRID = np.logspace(-1, 3, 7)


def _data(n, p, tail, seed=0, m=9):
    rng = np.random.default_rng(seed)
    X = 300 * (rng.normal(size=(n + m, p)) * rng.uniform(0.5, 2, p) + rng.normal(size=p))
    d = int(np.prod(tail))
    B = rng.normal(size=(p, d)) * rng.uniform(0, 0.3, d)
    Y = (X / 300) @ B + rng.normal(size=(n + m, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)
    Y = Y.reshape((n + m,) + tail)
    return X[:n], Y[:n], X[n:], Y[n:]


def _zscore(X, Xtr):
    Xs, Xt = X / 300, Xtr / 300
    return (Xs - Xt.mean(0)) / Xt.std(0, ddof=1)


def _raw(alpha=3.0, **kw):
    kw = {"calibration": "none", "dtype": "float64", "target_batch": 5, **kw}
    return BlockRidge(alpha=alpha, **kw)


@pytest.mark.parametrize("n,p,form", [(30, 50, "dual"), (60, 20, "primal")])
@pytest.mark.parametrize("tail", [(), (6,), (3, 4)])
def test_predictions_and_weights_equal_sklearn_on_zscored_fmri(n, p, form, tail):
    X, Y, Xt, _ = _data(n, p, tail)
    est = _raw().fit(X, Y)
    assert est.form_ == form
    sk = Ridge(alpha=3.0).fit(_zscore(X, X), Y.reshape(n, -1))
    P = est.predict(Xt)
    assert isinstance(P, np.ndarray) and P.shape == (len(Xt),) + tail
    np.testing.assert_allclose(P.reshape(len(Xt), -1), sk.predict(_zscore(Xt, X)).reshape(len(Xt), -1),
                               rtol=1e-8, atol=1e-8)
    W = est.get_weights()
    assert W.shape == (p,) + tail
    np.testing.assert_allclose(W.reshape(p, -1), sk.coef_.reshape(-1, p).T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.ravel(est.intercept_), np.ravel(sk.intercept_), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("n,p", [(30, 50), (60, 20)])
def test_float32_default_is_close_to_sklearn(n, p):
    X, Y, Xt, _ = _data(n, p, (3, 4))
    P = BlockRidge(alpha=3.0, calibration="none").fit(X, Y).predict(Xt)
    assert P.dtype == np.float32
    ref = Ridge(alpha=3.0).fit(_zscore(X, X), Y.reshape(n, -1)).predict(_zscore(Xt, X))
    np.testing.assert_allclose(P.reshape(len(Xt), -1), ref, rtol=2e-4, atol=2e-4)


def test_sklearn_api_params_and_score():
    X, Y, Xt, Yt = _data(40, 30, (4,))
    est = _raw(alpha=5.0)
    assert est.get_params()["alpha"] == 5.0
    est.set_params(alpha=6.0).fit(X, Y)
    assert est.alpha_ == 6.0
    sk = Ridge(alpha=6.0).fit(_zscore(X, X), Y)
    assert est.score(Xt, Yt) == pytest.approx(sk.score(_zscore(Xt, X), Yt), rel=1e-8)


@pytest.mark.parametrize("n,p", [(40, 60), (80, 20)])
def test_loo_alpha_per_target_and_shared_match_ridgecv(n, p):
    X, Y, Xt, _ = _data(n, p, (6,), seed=3)
    Xs = _zscore(X, X)
    est = _raw(alpha=GRID, criterion="loo", alpha_groups="target").fit(X, Y)
    ref = RidgeCV(alphas=GRID, alpha_per_target=True).fit(Xs, Y)
    np.testing.assert_array_equal(est.alpha_, ref.alpha_)
    np.testing.assert_allclose(est.predict(Xt), ref.predict(_zscore(Xt, X)), rtol=1e-7, atol=1e-8)
    shared = _raw(alpha=GRID, criterion="loo", alpha_groups="all").fit(X, Y)
    assert shared.alpha_ == RidgeCV(alphas=GRID).fit(Xs, Y).alpha_


def test_token_groups_and_column_sample():
    X, Y, _, _ = _data(40, 60, (3, 4), seed=4)
    est = _raw(alpha=GRID, criterion="gcv", alpha_groups="token").fit(X, Y)
    assert est.alpha_.shape == (3, 4)
    assert np.all(est.alpha_ == est.alpha_[:, :1])  # one alpha per token
    scores = est.alpha_scores_.reshape(len(GRID), 3, 4).sum(axis=2)
    np.testing.assert_array_equal(est.alpha_[:, 0], GRID[np.argmin(scores, axis=0)])
    sampled = _raw(alpha=GRID, alpha_groups="token", score_columns=2, random_state=0).fit(X, Y)
    assert np.isnan(sampled.alpha_scores_).sum() == len(GRID) * 3 * 2
    assert np.all(sampled.alpha_ == sampled.alpha_[:, :1])
    full = _raw(alpha=GRID, alpha_groups="token", score_columns=4).fit(X, Y)
    np.testing.assert_array_equal(full.alpha_, est.alpha_)


def test_test_batch_calibration_equals_numpy():
    X, Y, Xt, _ = _data(40, 30, (2, 3))
    est = BlockRidge(alpha=3.0, calibration="test_batch", target_batch=4).fit(X, Y)
    raw = Ridge(alpha=3.0).fit(_zscore(X, X), Y.reshape(40, -1)).predict(_zscore(Xt, X))
    Y2 = Y.reshape(40, -1)
    ref = (raw - raw.mean(0)) / raw.std(0) * Y2.std(0) + Y2.mean(0)
    np.testing.assert_allclose(est.predict(Xt).reshape(len(Xt), -1), ref, rtol=1e-4, atol=1e-4)


def test_loo_calibration_uses_train_loo_predictions_and_is_non_transductive():
    X, Y, Xt, _ = _data(25, 35, (3,), seed=5)
    est = _raw(calibration="loo").fit(X, Y)
    Xs = _zscore(X, X)
    loo = np.array([Ridge(alpha=3.0).fit(np.delete(Xs, i, 0), np.delete(Y, i, 0)).predict(Xs[i:i + 1])[0]
                    for i in range(len(X))])
    raw = Ridge(alpha=3.0).fit(Xs, Y).predict(_zscore(Xt, X))
    ref = (raw - loo.mean(0)) / loo.std(0) * Y.std(0) + Y.mean(0)
    full = est.predict(Xt)
    np.testing.assert_allclose(full, ref, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(est.predict(Xt[2:5]), full[2:5], rtol=1e-10, atol=1e-10)
    tb = _raw(calibration="test_batch").fit(X, Y)
    assert not np.allclose(tb.predict(Xt[2:5]), tb.predict(Xt)[2:5])
    sub = _raw(calibration="loo", calibration_rows=10).fit(X, Y)
    np.testing.assert_allclose(sub.predict(Xt[:3]), sub.predict(Xt)[:3], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("alpha", [3.0, GRID])
def test_pattern_push_through_equals_pattern_at_weights(alpha):
    X, Y, _, _ = _data(30, 50, (2, 3), seed=6)
    est = _raw(alpha=alpha, alpha_groups="target").fit(X, Y)
    roi = np.zeros((2, 50))
    roi[0, :10] = 1
    roi[1, 20:45] = 1
    W = est.get_weights().reshape(50, -1)
    out = est.push_pattern(roi)
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out.reshape(2, -1), roi @ W, rtol=1e-8, atol=1e-10)
    with_b = est.push_pattern(roi[0], add_intercept=True)
    np.testing.assert_allclose(with_b.reshape(1, -1), roi[:1] @ W + np.ravel(est.intercept_), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("kw", [{"alpha": 3.0}, {"alpha": GRID, "alpha_groups": "target"},
                                {"alpha": 3.0, "calibration": "loo"}])
@pytest.mark.parametrize("n,p", [(30, 50), (60, 20)])
def test_model_state_round_trip(kw, n, p):
    X, Y, Xt, _ = _data(n, p, (2, 3))
    est = BlockRidge(**{"calibration": "test_batch", **kw}).fit(X, Y)
    state = est.get_model_state()
    assert all(isinstance(v, np.ndarray) for v in state["arrays"].values())
    assert all(isinstance(v, (int, float, str, bool, list, dict, type(None))) for v in state["attrs"].values())
    again = BlockRidge.from_model_state(state, Y)
    np.testing.assert_array_equal(again.predict(Xt), est.predict(Xt))
    np.testing.assert_array_equal(np.asarray(again.alpha_), np.asarray(est.alpha_))


def test_zero_variance_voxel_warns_and_stays_finite(caplog):
    X, Y, Xt, _ = _data(30, 20, (3,))
    X[:, [3, 7]] = 42.0
    with caplog.at_level(logging.WARNING, logger="fmri2img.ridge"):
        est = _raw().fit(X, Y)
    assert "2 of 20 voxels have zero variance" in caplog.text
    assert np.isfinite(est.predict(Xt)).all()
    Xs = _zscore(np.delete(X, [3, 7], 1), np.delete(X, [3, 7], 1))
    ref = Ridge(alpha=3.0).fit(Xs, Y).predict(_zscore(np.delete(Xt, [3, 7], 1), np.delete(X, [3, 7], 1)))
    np.testing.assert_allclose(est.predict(Xt), ref, rtol=1e-8, atol=1e-8)


def test_reduced_vdvae_width_and_brain_diffuser_presets():
    from fmri2img.ridge import BRAIN_DIFFUSER_ALPHAS, VDVAE_REDUCED_COLUMNS

    assert dict(BRAIN_DIFFUSER_ALPHAS) == {"vdvae": 5e4, "clip_text": 1e5, "clip_vision": 6e4}
    assert VDVAE_REDUCED_COLUMNS == 2 * 16 + 4 * 256 + 4 * 1024
    X, Y, Xt, _ = _data(20, 30, (517,), seed=7)  # odd width, blocks of 128 columns
    est = BlockRidge(alpha=BRAIN_DIFFUSER_ALPHAS["vdvae"] / 1e3, calibration="none",
                     dtype="float64", target_batch=128).fit(X, Y)
    ref = Ridge(alpha=50.0).fit(_zscore(X, X), Y).predict(_zscore(Xt, X))
    np.testing.assert_allclose(est.predict(Xt), ref, rtol=1e-8, atol=1e-8)


def test_fit_shared_equals_separate_fits():
    from fmri2img.ridge import fit_shared

    X, Y1, Xt, _ = _data(30, 50, (5,), seed=8)
    _, Y2, _, _ = _data(30, 50, (2, 3), seed=9)
    models = fit_shared(X, {"a": (Y1, 3.0), "b": (Y2, GRID)}, calibration="none", dtype="float64")
    assert models["a"].X_train_ is models["b"].X_train_
    np.testing.assert_allclose(models["a"].predict(Xt), _raw(3.0).fit(X, Y1).predict(Xt), rtol=1e-10)
    np.testing.assert_allclose(models["b"].predict(Xt), _raw(GRID).fit(X, Y2).predict(Xt), rtol=1e-10)
