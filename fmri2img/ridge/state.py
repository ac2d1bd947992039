"""A fitted :class:`~fmri2img.ridge.estimator.BlockRidge` as plain arrays and scalars, and back.

The state holds the standardisation, the training fMRI and the Gram factor (or the SGD
coefficients), never the targets: a model is rebuilt from its state plus the same targets,
re-opened from wherever they live (:meth:`BlockRidge.from_model_state`).
"""
from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ._validation import TargetShapeError
from .preprocess import Standardizer
from .solvers import CholeskyFactor, SpectralFactor

__all__ = ["model_state", "restore_state"]

#: estimator parameters that are not saved (they are arrays or runtime choices)
_UNSAVED = ("alpha", "alpha_groups", "sgd_options", "device")


def model_state(est: Any, version: int) -> dict[str, Any]:
    """``{"arrays": {name: np.ndarray}, "attrs": {name: JSON value}}`` of a fitted estimator."""
    arrays = {"scaler_mean": est.scaler_.mean, "scaler_std": est.scaler_.std,
              "alphas": est.alphas_, "alpha_index": est.alpha_index_}
    if est.form_ == "sgd":
        arrays.update(coef=est.coef_sgd_, intercept=est.intercept_sgd_)
        kind = "sgd"
    else:
        arrays.update(X_train=est.X_train_, x_mean=est.x_mean_, **est.factor_.state())
        kind = "cholesky" if isinstance(est.factor_, CholeskyFactor) else "eigen"
    params = {k: v for k, v in est.get_params().items() if k not in _UNSAVED}
    attrs = {"version": version, "form": est.form_, "factor": kind,
             "scale": est.scaler_.scale, "target_shape": list(est.target_shape_),
             "n_samples": est.n_samples_, "n_features": est.n_features_in_,
             "params": params}
    return {"arrays": arrays, "attrs": attrs}


def restore_state(cls: type, state: dict[str, Any], Y: Any, device: str | None) -> Any:
    """An estimator of class ``cls`` with the fitted attributes of ``state`` (targets not yet set).

    Raises
    ------
    TargetShapeError
        ``Y`` is not shaped like the targets the model was fitted on.
    """
    arrays, attrs = state["arrays"], state["attrs"]
    est = cls(**{**attrs["params"], "device": device})
    est._backend()  # an unavailable device fails here
    shape = (attrs["n_samples"],) + tuple(attrs["target_shape"])
    if tuple(Y.shape) != shape:
        raise TargetShapeError(
            f"Y has shape {tuple(Y.shape)} but the saved model was fitted on targets of "
            f"shape {shape}: re-open the same features array the model was fitted on."
        )
    est._y_is_numpy = not isinstance(Y, da.Array)
    est.target_shape_ = tuple(attrs["target_shape"])
    est.n_samples_, est.n_features_in_ = attrs["n_samples"], attrs["n_features"]
    est.form_ = attrs["form"]
    est.scaler_ = Standardizer(attrs["scale"], arrays["scaler_mean"], arrays["scaler_std"])
    alphas = np.asarray(arrays["alphas"], dtype=np.float64)
    if attrs["factor"] == "sgd":
        est.coef_sgd_, est.intercept_sgd_ = arrays["coef"], arrays["intercept"]
        est._sgd_alphas = alphas
    else:
        est.X_train_ = np.asarray(arrays["X_train"])
        est.x_mean_ = np.asarray(arrays["x_mean"])
        if attrs["factor"] == "cholesky":
            est.factor_ = CholeskyFactor(est.form_, alphas, np.asarray(arrays["chols"]))
        else:
            est.factor_ = SpectralFactor(est.form_, alphas, np.asarray(arrays["U"]), np.asarray(arrays["s"]))
    return est
