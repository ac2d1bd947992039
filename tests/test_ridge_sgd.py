"""The streaming SVRG solver converges to the closed-form ridge solution."""

import dask.array as da
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from fmri2img.ridge import BlockRidge, sgd_ridge


def _data(n=160, p=25, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + rng.normal(size=p)
    Y = X @ rng.normal(size=(p, d)) + rng.normal(size=(n, d)) + 4.0
    return X, Y


@pytest.mark.parametrize("alpha", [5.0, 50.0])
def test_sgd_converges_to_exact_solution_within_stated_bound(alpha):
    X, Y = _data()
    W, b = sgd_ridge(da.from_array(X, chunks=(40, 25)), da.from_array(Y, chunks=(32, 3)), alpha, tol=1e-6)
    sk = Ridge(alpha=alpha).fit(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    g0 = np.linalg.norm(Xc.T @ Yc) / len(X)
    assert np.linalg.norm(W - sk.coef_.T) <= 1e-6 * g0 * len(X) / alpha  # the docstring bound
    np.testing.assert_allclose(W, sk.coef_.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, sk.intercept_, rtol=1e-4, atol=1e-4)


def test_sgd_estimator_matches_exact_estimator():
    X, Y = _data(n=120, p=20, d=8)
    X = X * 300
    Y = Y.reshape(120, 2, 4)
    kw = {"alpha": 20.0, "calibration": "none", "dtype": "float64"}
    exact = BlockRidge(**kw).fit(X, Y)
    sgd = BlockRidge(solver="sgd", sgd_options={"batch_rows": 30}, **kw).fit(
        da.from_array(X, chunks=(30, 20)), da.from_array(Y, chunks=(30, 2, 4)))
    Xt = X[:7] + 1.0
    np.testing.assert_allclose(sgd.predict(Xt).compute(), exact.predict(Xt), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sgd.get_weights(), exact.get_weights(), rtol=1e-4, atol=1e-5)
    again = BlockRidge.from_model_state(sgd.get_model_state(), da.from_array(Y))
    np.testing.assert_array_equal(again.predict(Xt).compute(), sgd.predict(Xt).compute())
