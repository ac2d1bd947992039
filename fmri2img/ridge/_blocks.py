"""Target-block layout and the per-block tasks that stream Y through a shared operator.

Y (n_samples, *tail) is cut along its trailing axes only (every block holds all
samples), so one block task computes ``M @ (Y_block - mean)`` for its columns. The
operator stack ``M`` (n_alphas, r, n_samples) is passed as one Dask key that every block
task depends on; it is shipped to each worker once.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np

from ._validation import NonFiniteInputError
from .calibration import CALIBRATIONS

logger = logging.getLogger(__name__)

#: Default bytes per target block (all samples × block columns, float32).
DEFAULT_BLOCK_BYTES = 128 * 2**20


def default_target_batch(n_samples: int, itemsize: int = 4) -> int:
    """Columns per block so that one block is about 128 MB."""
    return max(1, DEFAULT_BLOCK_BYTES // (n_samples * itemsize))


def trailing_chunks(tail: tuple[int, ...], target_batch: int) -> tuple[tuple[int, ...], ...]:
    """Chunks of the trailing axes with at most ``target_batch`` columns per block.

    Trailing axes are kept whole from the last one backwards while they fit, so blocks
    of a (tokens, dim) target are whole tokens when ``dim <= target_batch``.
    """
    sizes: list[int] = []
    room = max(1, int(target_batch))
    for size in reversed(tail):
        step = size if size <= room else room
        sizes.append(step)
        room = max(1, room // size) if size <= room else 1
    chunks = []
    for size, step in zip(tail, reversed(sizes)):
        chunks.append(tuple([step] * (size // step) + ([size % step] if size % step else [])))
    return tuple(chunks)


#: Native trailing chunks of a Dask Y are kept when a block (all samples) is at most this big.
MAX_NATIVE_BLOCK_BYTES = 512 * 2**20


def as_blocked(Y: Any, target_batch: int | None) -> da.Array:
    """View Y as a Dask array of shape (n, *tail) in target blocks (no copy for NumPy).

    With ``target_batch=None`` a Dask Y keeps its own trailing chunks (e.g. the Zarr
    chunks, so each block task reads whole storage chunks) unless a block would exceed
    512 MB; otherwise blocks of about 128 MB are used.
    """
    if Y.ndim == 1:
        Y = Y[:, None]
    n, itemsize = Y.shape[0], np.dtype(Y.dtype).itemsize
    native = isinstance(Y, da.Array) and target_batch is None
    if native and max(np.prod([max(c) for c in Y.chunks[1:]]), 1) * n * itemsize <= MAX_NATIVE_BLOCK_BYTES:
        return Y.rechunk({0: -1})
    batch = target_batch or default_target_batch(n, itemsize)
    chunks = ((n,),) + trailing_chunks(tuple(Y.shape[1:]), batch)
    if isinstance(Y, da.Array):
        return Y.rechunk(chunks)
    return da.from_array(Y, chunks=chunks, asarray=False)


def column_array(values: np.ndarray, Yb: da.Array) -> da.Array:
    """A (1, *tail) Dask array of per-column values aligned with the blocks of ``Yb``."""
    arr = np.asarray(values).reshape((1,) + Yb.shape[1:])
    return da.from_array(arr, chunks=((1,),) + Yb.chunks[1:])


def _check_block(Yb: np.ndarray, Y2: np.ndarray, name: str, block_info: dict | None) -> None:
    if np.isfinite(Y2).all():
        return
    row, col = np.argwhere(~np.isfinite(Y2))[0]
    idx = np.unravel_index(col, Yb.shape[1:])
    if block_info:
        idx = tuple(a + i for (a, _), i in zip(block_info[0]["array-location"][1:], idx))
    raise NonFiniteInputError(
        f"{name} holds {int((~np.isfinite(Y2)).sum())} NaN/inf value(s) in one target "
        f"block; the first is at row {int(row)}, target index {tuple(int(i) for i in idx)}. "
        "Expected finite targets: fix or drop those features upstream (re-run the "
        "features stage)."
    )


def _apply(ops: np.ndarray, aidx: np.ndarray, Y2: np.ndarray, ybar: np.ndarray) -> np.ndarray:
    """``ops[alpha(col)] @ (Y2 - ybar)`` per column, without copying the block.

    Uses ``M (Y - 1 ybarᵀ) = M Y - (M 1) ybarᵀ`` (the operators' rows sum to ~0, so the
    correction is small and float32 accuracy is kept), in float64 output.
    """
    uniq = np.unique(aidx)
    if len(uniq) == 1:
        M = ops[uniq[0]]
        return np.asarray(M @ Y2, np.float64) - np.outer(M.sum(axis=1, dtype=np.float64), ybar)
    out = np.empty((ops.shape[1], Y2.shape[1]))
    for a in uniq:
        cols = aidx == a
        M = ops[a]
        out[:, cols] = M @ Y2[:, cols] - np.outer(M.sum(axis=1, dtype=np.float64), ybar[cols])
    return out


def _centred_sumsq(Y2: np.ndarray, ybar: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Column sums of ``(Y2 - ybar)**2`` in float64, a few rows at a time (no full copy)."""
    yb = ybar.astype(Y2.dtype)
    out = np.zeros(Y2.shape[1])
    for i in range(0, Y2.shape[0], rows):
        d = Y2[i:i + rows] - yb
        out += np.einsum("ij,ij->j", d, d)
    return out


def stream_block(Yb: np.ndarray, aidx_b: np.ndarray, ops: np.ndarray, add_mean: bool,
                 calibration: str, loo_ops: Any, dtype: Any,
                 block_info: dict | None = None) -> np.ndarray:
    """One block task: ``P = M[alpha(col)] @ (Y - mean) (+ mean)``, then calibrate.

    Parameters
    ----------
    Yb : array of shape (n_samples, *block_tail)
    aidx_b : int array of shape (1, *block_tail)
        Alpha index of each column.
    ops : array of shape (n_alphas, r, n_samples)
    add_mean : bool
        Add the training column mean (predictions and intercepts) or not (weights,
        pattern push-through).
    calibration : str
        Key of :data:`~fmri2img.ridge.calibration.CALIBRATIONS`.
    loo_ops : tuple (Q, rows) or None
        ``Q`` (n_alphas, len(rows), n_samples) with LOO predictions
        ``Y[rows] - Q @ Yc``; needed only for ``calibration="loo"``.
    dtype : numpy dtype
        Compute dtype of the products.

    Returns
    -------
    array of shape (r, *block_tail), in ``dtype``
    """
    n = Yb.shape[0]
    Y2 = np.asarray(Yb).reshape(n, -1)
    _check_block(Yb, Y2, "Y", block_info)
    Y2 = Y2.astype(dtype, copy=False)
    a = np.asarray(aidx_b).ravel()
    ybar = Y2.mean(axis=0, dtype=np.float64)
    P = _apply(ops, a, Y2, ybar)
    if add_mean:
        P += ybar
    if calibration != "none":

        def loo() -> np.ndarray:
            Q, rows = loo_ops
            return Y2[rows].astype(np.float64) - _apply(Q, a, Y2, ybar)

        y_std = np.sqrt(_centred_sumsq(Y2, ybar) / n)
        P = CALIBRATIONS[calibration](P, ybar, y_std, loo)
    return P.astype(dtype).reshape((P.shape[0],) + Yb.shape[1:])


def stream(Yb: da.Array, aidx: da.Array, ops: Any, add_mean: bool,
           calibration: str = "none", loo_ops: Any = None, dtype: Any = np.float32,
           block: Callable[..., np.ndarray] = stream_block) -> da.Array:
    """Lazy ``(r, *tail)`` result of ``block`` (:func:`stream_block`, or the torch
    backend's) over every target block; ``ops`` is anything with ``.shape`` that
    ``block`` takes."""
    ops_key = dask.delayed(ops, pure=True)
    loo_key = dask.delayed(loo_ops, pure=True) if loo_ops is not None else None
    r = ops.shape[1]
    return da.map_blocks(
        block, Yb, aidx, ops_key, add_mean, calibration, loo_key, np.dtype(dtype),
        chunks=((r,),) + Yb.chunks[1:], dtype=np.dtype(dtype), meta=np.empty((0,) * Yb.ndim, dtype),
        token="ridge-stream",
    )


def score_block(Yb: np.ndarray, mask_b: np.ndarray, factor: Any, criterion: str,
                block_info: dict | None = None) -> np.ndarray:
    """Alpha scores (n_alphas, *block_tail) of the masked columns of one block (NaN elsewhere)."""
    from .selection import SCORERS, gcv_from_projection

    n = Yb.shape[0]
    Y2 = np.asarray(Yb).reshape(n, -1)
    _check_block(Yb, Y2, "Y", block_info)
    m = np.asarray(mask_b).ravel()
    out = np.full((len(factor.alphas), Y2.shape[1]), np.nan)
    if m.all() and criterion == "gcv":
        Y2 = Y2.astype(factor.U.dtype, copy=False)
        ybar = Y2.mean(axis=0, dtype=np.float64)
        proj = _apply(factor.U.T[None], np.zeros(Y2.shape[1], int), Y2, ybar)
        out[:] = gcv_from_projection(factor, proj, _centred_sumsq(Y2, ybar), n)
    elif m.any():
        Ys = Y2[:, m].astype(np.float64)
        Ys -= Ys.mean(axis=0)
        out[:, m] = SCORERS[criterion](factor, Ys.astype(factor.U.dtype))
    return out.reshape((out.shape[0],) + Yb.shape[1:])


def score(Yb: da.Array, mask: da.Array, factor: Any, criterion: str,
          block: Callable[..., np.ndarray] = score_block) -> da.Array:
    """Lazy (n_alphas, *tail) alpha scores of ``block`` (:func:`score_block`, or the
    torch backend's) for every target block."""
    key = dask.delayed(factor, pure=True)
    k = len(factor.alphas)
    return da.map_blocks(
        block, Yb, mask, key, criterion, chunks=((k,),) + Yb.chunks[1:],
        dtype=np.float64, meta=np.empty((0,) * Yb.ndim), token="ridge-score",
    )
