"""BlockRidge on the torch backend (``device=``): equals sklearn and the NumPy path for
every form, alpha option and calibration; streams Dask targets one block at a time on
the device; saved state loads anywhere; unavailable devices fail with one clear error.

Runs on CPU torch; the "cuda" cases run only where CUDA is available (the GPU machine).
"""

import pickle
import subprocess
import sys
import time
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from fmri2img.ridge import BlockRidge, DeviceUnavailableError, NonFiniteInputError, fit_shared
from tests.test_ridge_estimator import GRID, _data, _zscore

torch = pytest.importorskip("torch")
from fmri2img.ridge import _torch  # noqa: E402  (needs torch)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _pair(device, **kw):
    """The same BlockRidge on NumPy (reference) and on ``device``."""
    kw = {"target_batch": 5, **kw}
    return BlockRidge(**kw), BlockRidge(device=device, **kw)


def _outputs(est, Xt, p):
    return {"pred": est.predict(Xt), "W": est.get_weights(), "b": est.intercept_,
            "push": est.push_pattern(np.linspace(-1, 1, p)), "alpha": est.alpha_}


def _assert_same(a, b, rtol, atol):
    for key in a:
        np.testing.assert_allclose(np.asarray(b[key]), np.asarray(a[key]), rtol=rtol, atol=atol,
                                   err_msg=key)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,p,form", [(30, 50, "dual"), (60, 20, "primal")])
@pytest.mark.parametrize("tail", [(), (3, 4)])
def test_float64_equals_sklearn_and_numpy_path(device, n, p, form, tail):
    X, Y, Xt, _ = _data(n, p, tail)
    ref, est = _pair(device, alpha=3.0, calibration="none", dtype="float64")
    ref.fit(X, Y), est.fit(X, Y)
    assert est.form_ == form
    out = _outputs(est, Xt, p)
    assert isinstance(out["pred"], np.ndarray) and out["pred"].dtype == np.float64
    assert out["pred"].shape == (len(Xt),) + tail and out["W"].shape == (p,) + tail
    _assert_same(_outputs(ref, Xt, p), out, rtol=1e-9, atol=1e-9)
    sk = Ridge(alpha=3.0).fit(_zscore(X, X), Y.reshape(n, -1))
    ref_pred = sk.predict(_zscore(Xt, X)).reshape(len(Xt), -1)
    np.testing.assert_allclose(out["pred"].reshape(len(Xt), -1), ref_pred, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(out["W"].reshape(p, -1), sk.coef_.reshape(-1, p).T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.ravel(out["b"]), np.ravel(sk.intercept_), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,p", [(30, 50), (60, 20)])
@pytest.mark.parametrize("calibration", ["none", "test_batch", "loo"])
def test_float32_single_alpha_each_calibration_equals_numpy_path(device, n, p, calibration):
    X, Y, Xt, _ = _data(n, p, (2, 3), seed=1)
    ref, est = _pair(device, alpha=3.0, calibration=calibration, calibration_rows=20)
    ref.fit(X, Y), est.fit(X, Y)
    out = _outputs(est, Xt, p)
    assert out["pred"].dtype == np.float32
    _assert_same(_outputs(ref, Xt, p), out, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_calibrations_equal_the_independent_reference(device):
    X, Y, Xt, _ = _data(25, 35, (3,), seed=5)
    Xs, Xts = _zscore(X, X), _zscore(Xt, X)
    raw = Ridge(alpha=3.0).fit(Xs, Y).predict(Xts)
    loo = np.array([Ridge(alpha=3.0).fit(np.delete(Xs, i, 0), np.delete(Y, i, 0)).predict(Xs[i:i + 1])[0]
                    for i in range(len(X))])
    refs = {"test_batch": (raw - raw.mean(0)) / raw.std(0) * Y.std(0) + Y.mean(0),
            "loo": (raw - loo.mean(0)) / loo.std(0) * Y.std(0) + Y.mean(0)}
    for calibration, ref in refs.items():
        est = BlockRidge(alpha=3.0, calibration=calibration, dtype="float64", device=device).fit(X, Y)
        np.testing.assert_allclose(est.predict(Xt), ref, rtol=1e-7, atol=1e-8, err_msg=calibration)
    est = BlockRidge(alpha=3.0, calibration="loo", dtype="float64", device=device).fit(X, Y)
    np.testing.assert_allclose(est.predict(Xt[2:5]), est.predict(Xt)[2:5], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,p", [(40, 60), (80, 20)])
def test_loo_alpha_grid_picks_ridgecv_alphas(device, n, p):
    X, Y, Xt, _ = _data(n, p, (6,), seed=3)
    Xs = _zscore(X, X)
    est = BlockRidge(alpha=GRID, criterion="loo", alpha_groups="target", calibration="none",
                     dtype="float64", device=device).fit(X, Y)
    ref = RidgeCV(alphas=GRID, alpha_per_target=True).fit(Xs, Y)
    np.testing.assert_array_equal(est.alpha_, ref.alpha_)
    np.testing.assert_allclose(est.predict(Xt), ref.predict(_zscore(Xt, X)), rtol=1e-7, atol=1e-8)
    shared = BlockRidge(alpha=GRID, criterion="loo", alpha_groups="all", device=device).fit(X, Y)
    assert shared.alpha_ == RidgeCV(alphas=GRID).fit(Xs, Y).alpha_


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,p", [(40, 60), (80, 20)])
@pytest.mark.parametrize("kw", [
    {"criterion": "gcv", "alpha_groups": "target", "calibration": "none"},
    {"criterion": "gcv", "alpha_groups": "token", "score_columns": 2, "calibration": "test_batch"},
    {"criterion": "loo", "alpha_groups": "token", "calibration": "loo"},
])
def test_alpha_grid_equals_numpy_path(device, n, p, kw):
    X, Y, Xt, _ = _data(n, p, (3, 4), seed=4)
    # float32: alphas >= 1 (at 0.1, float32 scores carry ~1% rounding noise on both paths,
    # more than some gaps between the best and the next alpha here)
    ref, est = _pair(device, alpha=GRID[2:], **kw)
    ref.fit(X, Y), est.fit(X, Y)
    np.testing.assert_array_equal(est.alpha_, ref.alpha_)
    np.testing.assert_allclose(est.alpha_scores_, ref.alpha_scores_, rtol=1e-4)
    _assert_same(_outputs(ref, Xt, p), _outputs(est, Xt, p), rtol=2e-3, atol=2e-3)
    ref64, est64 = _pair(device, alpha=GRID, dtype="float64", **kw)
    ref64.fit(X, Y), est64.fit(X, Y)
    np.testing.assert_allclose(est64.alpha_scores_, ref64.alpha_scores_, rtol=1e-9)
    _assert_same(_outputs(ref64, Xt, p), _outputs(est64, Xt, p), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [{"alpha": 10.0, "calibration": "loo"},
                                {"alpha": np.logspace(0, 3, 5), "alpha_groups": "target",
                                 "calibration": "test_batch"}])
def test_dask_targets_in_several_blocks(device, kw):
    X, Y, Xt, _ = _data(40, 60, (5, 6), seed=6)
    Y = Y.astype(np.float32)
    Yd = da.from_array(Y, chunks=(13, 2, 6))
    est = BlockRidge(device=device, **kw).fit(X, Yd)
    P = est.predict(Xt)
    assert isinstance(P, da.Array) and P.chunks[1] == (2, 2, 1)
    ref = BlockRidge(**kw).fit(X, Y)
    np.testing.assert_allclose(P.compute(), ref.predict(Xt), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(est.get_weights().compute(), ref.get_weights(), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(est.alpha_), np.asarray(ref.alpha_))


def test_one_target_block_on_the_device_at_a_time(monkeypatch):
    X, Y, Xt, _ = _data(40, 60, (8, 6), seed=7)
    active, peak = [0], [0]
    upload = _torch._upload

    def slow_upload(*args):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        try:
            return upload(*args)
        finally:
            active[0] -= 1

    monkeypatch.setattr(_torch, "_upload", slow_upload)
    est = BlockRidge(alpha=10.0, device="cpu").fit(X, da.from_array(Y, chunks=(40, 1, 6)))
    with dask.config.set(scheduler="threads", num_workers=4):
        P = est.predict(Xt).compute()
    assert peak[0] == 1
    np.testing.assert_allclose(P, BlockRidge(alpha=10.0).fit(X, Y).predict(Xt), rtol=1e-4, atol=1e-4)


def test_lazy_results_pickle_as_numpy_and_run_under_distributed():
    distributed = pytest.importorskip("distributed")
    X, Y, Xt, _ = _data(40, 60, (5, 6), seed=6)
    Yd = da.from_array(Y.astype(np.float32), chunks=(40, 2, 6))
    ref = BlockRidge(alpha=10.0, calibration="loo").fit(X, Yd).predict(Xt).compute()
    est = BlockRidge(alpha=10.0, calibration="loo", device="cpu").fit(X, Yd)
    payload = pickle.dumps(est.predict(Xt))
    assert b"_rebuild_tensor" not in payload  # operators travel as NumPy
    np.testing.assert_allclose(pickle.loads(payload).compute(), ref, rtol=1e-4, atol=1e-4)
    grid = BlockRidge(alpha=GRID, alpha_groups="target", calibration="none", dtype="float64")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        np.testing.assert_allclose(est.predict(Xt).compute(), ref, rtol=1e-4, atol=1e-4)
        on_device = grid.set_params(device="cpu").fit(X, Yd)
    np.testing.assert_array_equal(on_device.alpha_, grid.set_params(device=None).fit(X, Yd).alpha_)


def test_fit_shared_on_device_equals_separate_numpy_fits():
    X, Y1, Xt, _ = _data(30, 50, (5,), seed=8)
    _, Y2, _, _ = _data(30, 50, (2, 3), seed=9)
    models = fit_shared(X, {"a": (Y1, 3.0), "b": (Y2, GRID)}, calibration="none", dtype="float64",
                        device="cpu")
    assert models["a"].X_train_ is models["b"].X_train_
    assert models["a"]._x_on_device[2] is models["b"]._x_on_device[2]
    for name, Y, alpha in (("a", Y1, 3.0), ("b", Y2, GRID)):
        ref = BlockRidge(alpha=alpha, calibration="none", dtype="float64").fit(X, Y)
        np.testing.assert_allclose(models[name].predict(Xt), ref.predict(Xt), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kw", [{"alpha": 3.0}, {"alpha": GRID, "alpha_groups": "target"},
                                {"alpha": 3.0, "calibration": "loo"}])
def test_model_state_is_numpy_and_loads_on_any_device(kw):
    X, Y, Xt, _ = _data(30, 50, (2, 3))
    est = BlockRidge(device="cpu", **kw).fit(X, Y)
    P = est.predict(Xt)
    state = est.get_model_state()
    assert all(isinstance(v, np.ndarray) for v in state["arrays"].values())
    assert "device" not in state["attrs"]["params"]
    for device in (None, "cpu"):
        again = BlockRidge.from_model_state(state, Y, device=device)
        assert again.device == device
        np.testing.assert_allclose(again.predict(Xt), P, rtol=1e-4, atol=1e-4)
    numpy_state = BlockRidge(**kw).fit(X, Y).get_model_state()
    on_device = BlockRidge.from_model_state(numpy_state, Y, device="cpu")
    np.testing.assert_allclose(on_device.predict(Xt), P, rtol=1e-4, atol=1e-4)
    unpickled = pickle.loads(pickle.dumps(est))
    assert not any(isinstance(v, torch.Tensor) for v in vars(unpickled.factor_).values())
    np.testing.assert_allclose(unpickled.predict(Xt), P, rtol=1e-6, atol=1e-6)


def test_device_can_change_after_fit():
    X, Y, Xt, _ = _data(30, 50, (4,))
    ref = BlockRidge(alpha=3.0, dtype="float64").fit(X, Y)
    P = ref.predict(Xt)
    np.testing.assert_allclose(ref.set_params(device="cpu").predict(Xt), P, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ref.set_params(device=None).predict(Xt), P, rtol=1e-9, atol=1e-9)


def test_read_only_targets_give_no_warning():
    X, Y, Xt, _ = _data(30, 50, (4,))
    Y.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P = BlockRidge(alpha=3.0, device="cpu").fit(X, Y).predict(Xt)
    np.testing.assert_allclose(P, BlockRidge(alpha=3.0).fit(X, Y).predict(Xt), rtol=1e-4, atol=1e-4)


def test_nan_in_a_target_block_is_located():
    X, Y, _, _ = _data(30, 50, (4, 3))
    Y[7, 2, 1] = np.nan
    est = BlockRidge(alpha=3.0, device="cpu").fit(X, da.from_array(Y, chunks=(30, 1, 3)))
    with pytest.raises(NonFiniteInputError, match=r"row 7, target index \(2, 1\)"):
        est.predict(X[:3]).compute()
    with pytest.raises(NonFiniteInputError, match=r"row 7, target index \(2, 1\)"):
        BlockRidge(alpha=GRID, device="cpu").fit(X, da.from_array(Y, chunks=(30, 1, 3)))


def test_unavailable_cuda_is_one_clear_error(monkeypatch):
    X, Y, _, _ = _data(20, 30, (3,))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available") as err:
            BlockRidge(device=device).fit(X, Y)
        assert "device=None" in str(err.value) and "device='cpu'" in str(err.value)
    state = BlockRidge(alpha=3.0).fit(X, Y).get_model_state()
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        BlockRidge.from_model_state(state, Y, device="cuda")
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        fit_shared(X, {"a": (Y, 3.0)}, device="cuda")


def test_cuda_device_resolution_without_a_gpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(_torch, "_WARNED", set())
    monkeypatch.setattr(_torch, "_tf32", lambda: False)
    assert _torch.resolve_device("cuda") == torch.device("cuda", 1)
    assert _torch.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceUnavailableError, match="2 CUDA device.*numbered 0 to 1"):
        _torch.resolve_device("cuda:2")
    assert not caplog.records
    monkeypatch.setattr(_torch, "_tf32", lambda: True)
    for _ in range(2):
        _torch.resolve_device("cuda")
    assert [r.message.count("TF32") for r in caplog.records] == [1]


def test_tf32_flag_is_read_from_either_api():
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has only the legacy flag")
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert _torch._tf32()
        matmul.fp32_precision = "ieee"
        assert not _torch._tf32()
    finally:
        matmul.fp32_precision = before


def test_other_device_errors(monkeypatch):
    X, Y, _, _ = _data(20, 30, (3,))
    with pytest.raises(DeviceUnavailableError, match="'gpu0' is not a torch device"):
        BlockRidge(device="gpu0").fit(X, Y)
    with pytest.raises(ValueError, match="solver='sgd' runs in NumPy/Dask only"):
        BlockRidge(solver="sgd", device="cpu").fit(X, Y)
    from fmri2img.ridge import backends

    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeviceUnavailableError, match="needs PyTorch"):
        BlockRidge(device="cpu").fit(X, Y)


def test_numpy_path_does_not_import_torch():
    code = ("import sys, numpy as np; from fmri2img.ridge import BlockRidge; "
            "X = np.random.default_rng(0).normal(size=(20, 30)); "
            "BlockRidge(alpha=3.0).fit(X, X[:, :4]).predict(X); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
