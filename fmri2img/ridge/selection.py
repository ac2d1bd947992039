"""Alpha selection from one eigendecomposition: GCV and exact leave-one-out scores.

With ``K = U diag(s) Uᵀ`` the centred kernel and an unpenalised intercept, the hat
matrix is ``H = 11ᵀ/n + K (K + aI)^-1`` and ``(I - H) y = a (K + aI)^-1 yc``. Hence

* GCV (Golub, Heath & Wahba):
  ``GCV(a) = (||(I-H)y||² / n) / ((n - 1 - Σ s/(s+a)) / n)²`` and
  ``||(K+aI)^-1 yc||² = Σ (Uᵀyc)²/(s+a)² + (||yc||² - ||Uᵀyc||²)/a²``: after one
  projection ``Uᵀ Yc`` each alpha costs O(rank × targets).
* LOO (exact, as sklearn's ``RidgeCV(cv=None)``):
  ``e = c / g`` with ``c = (K+aI)^-1 yc`` and ``g = diag((K+aI)^-1) - 1/(n a)``;
  each alpha costs one n × rank × targets product, so score a column sample when the
  alphas are chosen per group.

Scores are per target column; a group's score is the sum over its columns, and the
group's alpha is the grid value with the smallest score (first one on ties).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from .solvers import SpectralFactor

logger = logging.getLogger(__name__)

__all__ = [
    "gcv_scores", "gcv_from_projection", "loo_scores", "loo_from_projection", "SCORERS",
    "select_alphas", "group_labels",
]


def _project(factor: SpectralFactor, Yc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proj = np.asarray(factor.U.T @ Yc.astype(factor.U.dtype, copy=False), dtype=np.float64)
    yy = np.einsum("ij,ij->j", Yc, Yc, dtype=np.float64)
    return proj, yy


def gcv_scores(factor: SpectralFactor, Yc: np.ndarray) -> np.ndarray:
    """GCV score of every alpha of ``factor`` for every column of ``Yc``.

    Parameters
    ----------
    factor : SpectralFactor
    Yc : array of shape (n_samples, n_targets)
        Column-centred targets.

    Returns
    -------
    scores : array of shape (n_alphas, n_targets), float64 (lower is better)
    """
    proj, yy = _project(factor, Yc)
    return gcv_from_projection(factor, proj, yy, Yc.shape[0])


def gcv_from_projection(factor: SpectralFactor, proj: Any, yy: Any, n: int,
                        out: Any = None) -> Any:
    """GCV scores from ``proj = Uᵀ Yc`` (rank × b) and ``yy = ||Yc||²`` per column (b,).

    NumPy arrays, or torch tensors on one device (``factor.s`` too) with ``out`` a
    float64 tensor of shape (n_alphas, b) there (the torch backend).
    """
    p2 = proj**2
    rest = (yy - p2.sum(axis=0)).clip(0.0, None)
    out = np.empty((len(factor.alphas), proj.shape[1])) if out is None else out
    for i, a in enumerate(factor.alphas):
        d = factor.s + a
        sq = (1.0 / d**2) @ p2 + rest / a**2
        dof = (n - 1 - (factor.s / d).sum()) / n
        out[i] = a**2 * sq / n / dof**2
    return out


def loo_scores(factor: SpectralFactor, Yc: np.ndarray) -> np.ndarray:
    """Mean squared leave-one-out error of every alpha for every column of ``Yc``.

    Same parameters and return as :func:`gcv_scores`; equals sklearn's
    ``RidgeCV(fit_intercept=True, cv=None)`` criterion.
    """
    U = factor.U.astype(np.float64)
    proj, _ = _project(factor, Yc)
    resid = Yc.astype(np.float64) - U @ proj
    return loo_from_projection(factor, U, proj, resid, np.empty((len(factor.alphas), Yc.shape[1])))


def loo_from_projection(factor: SpectralFactor, U: Any, proj: Any, resid: Any, out: Any) -> Any:
    """LOO scores from ``U`` (n × rank, float64), ``proj = Uᵀ Yc`` and ``resid = Yc - U proj``.

    Writes ``out`` (n_alphas × b, float64) and returns it. NumPy arrays, or torch tensors
    on one device (``factor.s`` too; the torch backend).
    """
    n = U.shape[0]
    u2 = U**2
    for i, a in enumerate(factor.alphas):
        d = factor.s + a
        c = U @ (proj / d[:, None]) + resid / a
        g = u2 @ (1.0 / d) + (1.0 - u2.sum(axis=1)) / a - 1.0 / (n * a)
        out[i] = ((c / g[:, None]) ** 2).mean(axis=0)
    return out


#: Criterion name → scorer(factor, Yc) -> (n_alphas, n_targets).
SCORERS: dict[str, Callable[[SpectralFactor, np.ndarray], np.ndarray]] = {
    "gcv": gcv_scores,
    "loo": loo_scores,
}


def _groups_token(shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) < 2:
        return _groups_target(shape)
    return np.repeat(np.arange(shape[0]), int(np.prod(shape[1:])))


def _groups_target(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)))


def _groups_all(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(int(np.prod(shape)), dtype=np.int64)


#: alpha_groups name → labels(target_shape) over flattened columns.
GROUPINGS: dict[str, Callable[[tuple[int, ...]], np.ndarray]] = {
    "token": _groups_token,
    "target": _groups_target,
    "all": _groups_all,
}


def group_labels(alpha_groups: Any, target_shape: tuple[int, ...]) -> np.ndarray:
    """Integer group label per flattened target column.

    Parameters
    ----------
    alpha_groups : {"token", "target", "all"} or array of shape (n_columns,)
        "token": one group per index of the first trailing axis (CLIP tokens; for 1-D
        or 2-D targets this is per column); "target": one per column; "all": one alpha.
    target_shape : tuple
        Trailing shape of the targets (``Y.shape[1:]``).

    Returns
    -------
    labels : int array of shape (n_columns,)
    """
    d = int(np.prod(target_shape))
    if isinstance(alpha_groups, str):
        if alpha_groups not in GROUPINGS:
            raise ValueError(
                f"alpha_groups={alpha_groups!r} is not one of {sorted(GROUPINGS)}; pass "
                f"one of those or an int array of {d} group labels (one per column)."
            )
        return GROUPINGS[alpha_groups](tuple(target_shape))
    labels = np.asarray(alpha_groups).ravel()
    if labels.shape != (d,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"alpha_groups as an array must hold {d} integer labels (one per flattened "
            f"target column); got dtype {labels.dtype} and shape {labels.shape}."
        )
    return labels


def select_alphas(scores: np.ndarray, labels: np.ndarray,
                  scored: np.ndarray | None = None) -> np.ndarray:
    """Best alpha index per column, chosen per group.

    Parameters
    ----------
    scores : array of shape (n_alphas, n_columns)
        Per-column scores (columns not in ``scored`` are ignored).
    labels : int array of shape (n_columns,)
    scored : bool array of shape (n_columns,), optional
        Which columns were scored (the column sample); default all.

    Returns
    -------
    alpha_index : int array of shape (n_columns,)
    """
    uniq, inv = np.unique(labels, return_inverse=True)
    mask = np.ones(labels.shape, bool) if scored is None else scored
    totals = np.zeros((scores.shape[0], len(uniq)))
    np.add.at(totals.T, inv[mask], scores[:, mask].T)
    best = np.argmin(totals, axis=0)
    return best[inv]
