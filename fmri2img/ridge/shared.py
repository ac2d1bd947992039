"""Fit several target sets of one subject in one pass: they share X and the Gram matrix."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ._validation import RidgeInputError
from .estimator import BlockRidge

logger = logging.getLogger(__name__)

__all__ = ["fit_shared"]


def fit_shared(X: Any, targets: Mapping[str, tuple[Any, Any]], **params: Any) -> dict[str, BlockRidge]:
    """Fit one :class:`BlockRidge` per target set, standardising X and forming its Gram
    matrix once.

    Each model gets its own factorisation (one Cholesky per alpha, or one
    eigendecomposition for a grid) of the shared Gram matrix, and all of them hold the
    same standardised training array (one copy in memory, and one on the ``device``
    when one is given).

    Parameters
    ----------
    X : array of shape (n_samples, n_voxels)
        Raw training fMRI.
    targets : mapping of name to (Y, alpha)
        ``Y`` : array of shape (n_samples,) or (n_samples, ...), NumPy or Dask;
        ``alpha`` : float or alpha grid, e.g. ``BRAIN_DIFFUSER_ALPHAS[name]``.
    **params
        Other :class:`BlockRidge` parameters, shared by all models (e.g.
        ``device="cuda"``: the Gram matrix and every factorisation are then computed
        there).

    Returns
    -------
    dict of name to fitted BlockRidge
        In the order of ``targets``.

    Examples
    --------
    >>> models = fit_shared(X, {"vdvae": (Y_vdvae, 5e4), "clip_text": (Y_text, 1e5)})  # doctest: +SKIP
    """
    if not targets:
        raise RidgeInputError("targets is empty: pass {name: (Y, alpha), ...}.")
    if params.get("solver") == "sgd" or "alpha" in params:
        raise RidgeInputError(
            "fit_shared takes each alpha with its targets and shares an exact factor; do "
            "not pass alpha= or solver='sgd' (fit SGD models one by one instead)."
        )
    models: dict[str, BlockRidge] = {}
    checked = []
    for name, (Y, alpha) in targets.items():
        est = BlockRidge(alpha=alpha, **params)
        checked.append((name, est, *est._start(X, Y, name=f"targets[{name!r}]")))
    first = checked[0][1]
    first._fit_inputs(X)
    backend = first._backend()
    G = backend.gram(first._x_backend(backend), first.form_)
    for i, (name, est, alphas, Y) in enumerate(checked):
        for attr in ("scaler_", "x_mean_", "X_train_", "form_", "_x_on_device"):
            setattr(est, attr, getattr(first, attr))
        last = i == len(checked) - 1
        models[name] = est._fit_targets(Y, alphas, G if last else backend.copy(G))
        logger.info("ridge: fitted %r (%d columns) on the shared Gram matrix", name, est._n_columns)
    return models
