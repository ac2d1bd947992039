"""Calibration of predicted features (per output column), as a registry.

* ``"none"``: predictions as the ridge gives them.
* ``"test_batch"`` (Brain-Diffuser): z-score each column across the predicted batch
  (ddof=0), then ``× std(Y_train) + mean(Y_train)`` (ddof=0). Transductive: a row's
  output depends on which other images are predicted with it.
* ``"loo"`` (non-transductive): like ``"test_batch"`` but the batch mean/std are
  replaced by the mean/std of the closed-form leave-one-out predictions of the
  *training* images for that column. Those are genuine out-of-sample predictions (each
  training image predicted by the model fitted without it), so they estimate the
  location and spread of test predictions, and they come cheaply from the shared
  factor: ``ŷ_loo = Y - (I - H)Yc / (1 - diag H)`` with ``H`` the hat matrix. The output
  for an image is the same whatever other images are predicted with it.

Each function takes ``P`` (n_pred × b, float64 raw predictions), the training mean and
std (ddof=0) of the same target columns and a callable returning the LOO predictions
(r × b; only ``"loo"`` calls it) and returns the calibrated ``P``. All of them are NumPy
arrays, or all torch tensors on one device (the torch backend calibrates there).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CALIBRATIONS", "calibrate_none", "calibrate_test_batch", "calibrate_loo"]


def _safe_std(x: Any) -> Any:
    """Column std (ddof=0, float64), with 1 where it is 0; a NumPy array or a torch tensor."""
    if isinstance(x, np.ndarray):
        s = x.std(axis=0, dtype=np.float64)
        return np.where(s > 0, s, 1.0)
    s = x.double().std(axis=0, correction=0)
    return s.where(s > 0, 1.0)


def _rescale(P: np.ndarray, loc: np.ndarray, scale: np.ndarray, y_mean: np.ndarray,
             y_std: np.ndarray) -> np.ndarray:
    return (P - loc) / scale * y_std + y_mean


def calibrate_none(P: np.ndarray, y_mean: np.ndarray, y_std: np.ndarray,
                   loo: Callable[[], np.ndarray]) -> np.ndarray:
    """Return ``P`` unchanged (no calibration)."""
    return P


def calibrate_test_batch(P: np.ndarray, y_mean: np.ndarray, y_std: np.ndarray,
                         loo: Callable[[], np.ndarray]) -> np.ndarray:
    """Brain-Diffuser: z-score over the predicted batch, then train mean/std (ddof=0).

    Parameters
    ----------
    P : array of shape (n_pred, b)
    y_mean, y_std : array of shape (b,)
        Training-target mean and std (ddof=0) of the same columns.

    Returns
    -------
    array of shape (n_pred, b)
    """
    return _rescale(P, P.mean(axis=0), _safe_std(P), y_mean, y_std)


def calibrate_loo(P: np.ndarray, y_mean: np.ndarray, y_std: np.ndarray,
                  loo: Callable[[], np.ndarray]) -> np.ndarray:
    """Non-transductive: LOO-prediction mean/std on the train set replace the batch's.

    Parameters
    ----------
    P : array of shape (n_pred, b)
    y_mean, y_std : array of shape (b,)
        Training-target mean and std (ddof=0) of the same columns.
    loo : callable returning array of shape (r, b)
        Leave-one-out predictions of r training images (all or a fixed sample).

    Returns
    -------
    array of shape (n_pred, b)
    """
    L = loo()
    return _rescale(P, L.mean(axis=0), _safe_std(L), y_mean, y_std)


#: Calibration name → function(P, y_mean, y_std, loo_callable).
CALIBRATIONS: dict[str, Callable[..., np.ndarray]] = {
    "none": calibrate_none,
    "test_batch": calibrate_test_batch,
    "loo": calibrate_loo,
}
