"""Pure solvers and alpha selection against sklearn, scipy and plain NumPy."""

import numpy as np
import pytest
import scipy.linalg as sla
from sklearn.linear_model import Ridge, RidgeCV

from fmri2img.ridge import (
    choose_form, factorize, gcv_scores, group_labels, loo_scores, ridge_predict,
    ridge_weights, select_alphas,
)

SHAPES = [(30, 50), (60, 20)]  # dual (n < p) and primal (n >= p)
TAILS = [(), (6,), (3, 4)]


def _data(n, p, tail, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + rng.normal(size=p)
    B = rng.normal(size=(p, int(np.prod(tail))))
    Y = X @ B + 2.0 * rng.normal(size=(n, B.shape[1])) + 5.0
    return X, Y.reshape((n,) + tail), rng.normal(size=(7, p))


def _scipy_reference(X, Y, alpha):
    """float64 primal normal equations with an unpenalised intercept via centring."""
    Y2 = Y.reshape(len(Y), -1)
    xm, ym = X.mean(0), Y2.mean(0)
    Xc = X - xm
    W = sla.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (Y2 - ym), assume_a="pos")
    return W, ym - xm @ W


@pytest.mark.parametrize("n,p", SHAPES)
@pytest.mark.parametrize("tail", TAILS)
def test_predict_and_weights_match_sklearn_and_scipy(n, p, tail):
    X, Y, Xt = _data(n, p, tail)
    sk = Ridge(alpha=3.0, fit_intercept=True).fit(X, Y.reshape(n, -1))
    W_ref, b_ref = _scipy_reference(X, Y, 3.0)
    P = ridge_predict(X, Y, Xt, 3.0)
    assert P.shape == (7,) + tail
    np.testing.assert_allclose(P.reshape(7, -1), sk.predict(Xt).reshape(7, -1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(P.reshape(7, -1), Xt @ W_ref + b_ref, rtol=1e-9, atol=1e-9)
    W, b = ridge_weights(X, Y, 3.0)
    assert W.shape == (p,) + tail and b.shape == tail
    np.testing.assert_allclose(W.reshape(p, -1), W_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.ravel(), np.ravel(sk.intercept_), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("n,p", SHAPES)
def test_float32_compute_is_close(n, p):
    X, Y, Xt = _data(n, p, (5,))
    ref = ridge_predict(X, Y, Xt, 3.0)
    np.testing.assert_allclose(ridge_predict(X, Y, Xt, 3.0, dtype=np.float32), ref, rtol=1e-4, atol=1e-4)


def test_form_is_chosen_by_shape():
    assert choose_form(30, 50) == "dual"
    assert choose_form(60, 20) == "primal"
    assert factorize(np.ones((3, 5)) * np.arange(5), 1.0).form == "dual"


@pytest.mark.parametrize("n,p", SHAPES)
@pytest.mark.parametrize("form", ["dual", "primal"])
def test_eigen_and_cholesky_operators_agree(n, p, form):
    X, _, Xt = _data(n, p, ())
    Xc = X - X.mean(0)
    alphas = [0.5, 7.0]
    M_chol = factorize(Xc, alphas, "cholesky", form).operator(Xt, Xc)
    M_eig = factorize(Xc, alphas, "eigen", form).operator(Xt, Xc)
    np.testing.assert_allclose(M_chol, M_eig, rtol=1e-7, atol=1e-10)


GRID = np.logspace(-1, 3, 9)


def _cv_data(n, p, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    B = rng.normal(size=(p, 6)) * rng.uniform(0, 1, 6)
    return X, X @ B + rng.normal(size=(n, 6)) * rng.uniform(0.5, 5, 6)


@pytest.mark.parametrize("n,p", [(40, 60), (80, 20)])
def test_loo_picks_sklearn_ridgecv_alphas(n, p):
    X, Y = _cv_data(n, p)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    scores = loo_scores(factorize(Xc, GRID, "eigen"), Yc)
    per_target = RidgeCV(alphas=GRID, alpha_per_target=True).fit(X, Y)
    np.testing.assert_array_equal(GRID[select_alphas(scores, np.arange(6))], per_target.alpha_)
    shared = RidgeCV(alphas=GRID, alpha_per_target=False).fit(X, Y)
    assert np.all(GRID[select_alphas(scores, np.zeros(6, int))] == shared.alpha_)


def test_loo_scores_equal_brute_force_refits():
    X, Y = _cv_data(25, 40)
    scores = loo_scores(factorize(X - X.mean(0), GRID[3:5], "eigen"), Y - Y.mean(0))
    for k, a in enumerate(GRID[3:5]):
        err = []
        for i in range(len(X)):
            keep = np.arange(len(X)) != i
            err.append(Y[i] - Ridge(alpha=a).fit(X[keep], Y[keep]).predict(X[i:i + 1])[0])
        np.testing.assert_allclose(scores[k], np.mean(np.square(err), axis=0), rtol=1e-8)


@pytest.mark.parametrize("n,p", [(40, 60), (80, 20)])
def test_gcv_equals_direct_numpy(n, p):
    X, Y = _cv_data(n, p)
    Xc = X - X.mean(0)
    scores = gcv_scores(factorize(Xc, GRID, "eigen"), Y - Y.mean(0))
    for k, a in enumerate(GRID):
        H = np.ones((n, n)) / n + Xc @ np.linalg.solve(Xc.T @ Xc + a * np.eye(p), Xc.T)
        R = (np.eye(n) - H) @ Y
        ref = (R**2).mean(0) / (np.trace(np.eye(n) - H) / n) ** 2
        np.testing.assert_allclose(scores[k], ref, rtol=1e-8)


def test_group_labels():
    np.testing.assert_array_equal(group_labels("token", (3, 2)), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(group_labels("target", (3, 2)), np.arange(6))
    np.testing.assert_array_equal(group_labels("all", (3, 2)), np.zeros(6))
    np.testing.assert_array_equal(group_labels(np.array([1, 1, 0]), (3,)), [1, 1, 0])
    with pytest.raises(ValueError, match="alpha_groups"):
        group_labels("voxel", (3,))
    with pytest.raises(ValueError, match="3 integer labels"):
        group_labels(np.array([0, 1]), (3,))


def test_select_alphas_sums_group_scores_and_ignores_unscored():
    scores = np.array([[1.0, 5.0, 0.0, 9.0], [2.0, 1.0, 9.0, 0.0]])
    np.testing.assert_array_equal(select_alphas(scores, np.array([0, 0, 1, 1])), [1, 1, 0, 0])
    scored = np.array([True, False, True, True])
    np.testing.assert_array_equal(select_alphas(scores, np.array([0, 0, 1, 1]), scored), [0, 0, 0, 0])
