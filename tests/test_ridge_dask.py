"""BlockRidge on Dask targets: equals the NumPy path, streams from Zarr, runs under a
distributed Client, and never hands a block task more than one target block."""

import dask
from dask.core import get_deps
import dask.array as da
import numpy as np
import pytest
import zarr

from fmri2img.ridge import BlockRidge

TAIL = (5, 6)


def _data(n=40, p=60, m=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + m, p)) * 300
    d = int(np.prod(TAIL))
    Y = (X / 300) @ rng.normal(size=(p, d)) * 0.2 + rng.normal(size=(n + m, d)) + 1.0
    return X[:n], Y[:n].reshape((n,) + TAIL).astype(np.float32), X[n:]


KWARGS = [
    {"alpha": 10.0, "calibration": "test_batch"},
    {"alpha": 10.0, "calibration": "loo"},
    {"alpha": np.logspace(0, 3, 5), "alpha_groups": "target", "calibration": "none"},
]


@pytest.mark.parametrize("kw", KWARGS)
def test_dask_targets_equal_numpy_targets(kw):
    X, Y, Xt = _data()
    ref = BlockRidge(target_batch=12, **kw).fit(X, Y)
    est = BlockRidge(target_batch=12, **kw).fit(X, da.from_array(Y, chunks=(13, 2, 6)))
    P = est.predict(Xt)
    assert isinstance(P, da.Array) and P.shape == (len(Xt),) + TAIL
    assert P.chunks[1] == (2, 2, 1) and P.chunks[2] == (6,)
    np.testing.assert_allclose(P.compute(), ref.predict(Xt), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(est.alpha_), np.asarray(ref.alpha_))
    np.testing.assert_allclose(est.get_weights().compute(), ref.get_weights(), rtol=1e-4, atol=1e-6)


def test_zarr_streamed_targets_equal_in_memory(tmp_path):
    X, Y, Xt = _data()
    z = zarr.create_array(str(tmp_path / "y.zarr"), shape=Y.shape, chunks=(40, 1, 6), dtype="float32")
    z[:] = Y
    est = BlockRidge(alpha=10.0, target_batch=6).fit(X, da.from_zarr(str(tmp_path / "y.zarr")))
    ref = BlockRidge(alpha=10.0, target_batch=6).fit(X, Y)
    np.testing.assert_allclose(est.predict(Xt).compute(), ref.predict(Xt), rtol=1e-5, atol=1e-5)
    state = est.get_model_state()
    again = BlockRidge.from_model_state(state, da.from_zarr(str(tmp_path / "y.zarr")))
    np.testing.assert_array_equal(again.predict(Xt).compute(), est.predict(Xt).compute())


def test_block_tasks_only_ever_see_one_target_block():
    X, Y, Xt = _data()
    seen = []

    def load(block_info=None):
        (r0, r1), (a0, a1), (b0, b1) = block_info[None]["array-location"]
        seen.append((r1 - r0) * (a1 - a0) * (b1 - b0))
        return Y[r0:r1, a0:a1, b0:b1]

    Yd = da.map_blocks(load, chunks=((40,), (1,) * 5, (6,)), dtype=np.float32)
    est = BlockRidge(alpha=10.0, target_batch=6).fit(X, Yd)
    P = est.predict(Xt)
    with dask.config.set(scheduler="synchronous"):
        out = P.compute()
    assert max(seen) == 40 * 6 and len(seen) == 5
    np.testing.assert_allclose(out, BlockRidge(alpha=10.0).fit(X, Y).predict(Xt), rtol=1e-5, atol=1e-5)


def test_under_distributed_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    X, Y, Xt = _data()
    z = zarr.create_array(str(tmp_path / "y.zarr"), shape=Y.shape, chunks=(40, 1, 6), dtype="float32")
    z[:] = Y
    ref = BlockRidge(alpha=10.0, calibration="loo", target_batch=6).fit(X, Y).predict(Xt)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        est = BlockRidge(alpha=10.0, calibration="loo", target_batch=6).fit(
            X, da.from_zarr(str(tmp_path / "y.zarr")))
        P = est.predict(Xt)
        deps, _ = get_deps(dict(P.__dask_graph__()))
        blocks = [k for k in deps if isinstance(k, tuple) and str(k[0]).startswith("ridge-stream")]
        shared = set.intersection(*(deps[k] for k in blocks))
        assert len(blocks) == 5 and len(shared) == 2  # the operator and the LOO operator keys
        out = P.compute()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_native_target_chunks_are_kept_for_dask_targets():
    X, Y, Xt = _data()
    est = BlockRidge(alpha=10.0).fit(X, da.from_array(Y, chunks=(13, 2, 6)))
    assert est.Y_.chunks == ((40,), (2, 2, 1), (6,))
    assert BlockRidge(alpha=10.0, target_batch=12).fit(X, Y).Y_.chunks == ((40,), (2, 2, 1), (6,))
    np.testing.assert_allclose(est.predict(Xt).compute(), BlockRidge(alpha=10.0).fit(X, Y).predict(Xt),
                               rtol=1e-5, atol=1e-5)


def test_several_lazy_outputs_compute_together():
    X, Y, Xt = _data()
    est = BlockRidge(alpha=10.0, calibration="none").fit(X, da.from_array(Y, chunks=(40, 1, 6)))
    other = BlockRidge(alpha=99.0, calibration="none").fit(X, da.from_array(Y, chunks=(40, 1, 6)))
    P1, P2, R = dask.compute(est.predict(Xt), other.predict(Xt), est.push_pattern(np.ones(60)))
    np.testing.assert_allclose(P1, BlockRidge(alpha=10.0, calibration="none").fit(X, Y).predict(Xt), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(P2, BlockRidge(alpha=99.0, calibration="none").fit(X, Y).predict(Xt), rtol=1e-5, atol=1e-5)
    assert not np.allclose(P1, P2) and R.shape == (1,) + TAIL
