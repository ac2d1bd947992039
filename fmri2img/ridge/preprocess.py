"""fMRI preprocessing with train statistics (Brain-Diffuser convention).

``X_std = (X / scale - mean) / std`` where ``mean`` and ``std`` (ddof=1) are computed per
voxel on the *training* images and reused unchanged for any other images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Standardizer", "fit_standardizer"]


@dataclass(frozen=True)
class Standardizer:
    """Per-voxel affine map fitted on training fMRI.

    Attributes
    ----------
    scale : float
        Divisor applied first (300 for NSD betas; 1.0 for none).
    mean : array of shape (n_voxels,)
        Train mean of ``X / scale`` (zeros when z-scoring is off).
    std : array of shape (n_voxels,)
        Train std (ddof=1) of ``X / scale``; zero-variance voxels hold 1.0.
    """

    scale: float
    mean: np.ndarray
    std: np.ndarray

    def transform(self, X: Any, dtype: Any = np.float32) -> Any:
        """Apply the map.

        Parameters
        ----------
        X : array of shape (n_samples, n_voxels)
            NumPy or Dask array of raw fMRI.
        dtype : numpy dtype
            Output dtype.

        Returns
        -------
        X_std : array of shape (n_samples, n_voxels)
            Same array type as ``X``.
        """
        a = (1.0 / (self.scale * self.std)).astype(dtype)
        b = (self.mean / self.std).astype(dtype)
        if isinstance(X, da.Array):
            return X.astype(dtype) * a - b
        out = np.asarray(X, dtype=dtype) * a
        out -= b
        return out


def fit_standardizer(X: Any, scale: float | None = 300.0, zscore: bool = True) -> Standardizer:
    """Fit ÷scale and per-voxel z-scoring (ddof=1) on training fMRI.

    A voxel with zero variance would give inf/NaN; its std is set to 1 (so it maps to
    0 after centring) and one warning reports how many voxels were affected.

    Parameters
    ----------
    X : array of shape (n_samples, n_voxels)
        Training fMRI, NumPy or Dask (reduced block by block in float64).
    scale : float or None
        Divisor applied before z-scoring (None means 1).
    zscore : bool
        If False, only the division is applied (mean 0, std 1).

    Returns
    -------
    Standardizer
    """
    scale = 1.0 if scale is None else float(scale)
    p = X.shape[1]
    if not zscore:
        return Standardizer(scale, np.zeros(p), np.ones(p))
    if isinstance(X, da.Array):
        xs = X.astype(np.float64) / scale
        mean, var = da.compute(xs.mean(axis=0), xs.var(axis=0, ddof=1))
    else:  # float64 statistics, a few voxels at a time (no full float64 copy of X)
        X = np.asarray(X)
        mean, var = np.empty(p), np.empty(p)
        for j in range(0, p, 1024):
            xs = X[:, j:j + 1024].astype(np.float64) / scale
            mean[j:j + 1024], var[j:j + 1024] = xs.mean(axis=0), xs.var(axis=0, ddof=1)
    std = np.sqrt(var)
    # A constant voxel gives var ~ (eps * mean)^2 rather than exactly 0 in floating point.
    zero = ~(std > 1e-10 * np.abs(mean))
    if zero.any():
        logger.warning(
            "%d of %d voxels have zero variance on the training images; their std is "
            "set to 1 so they standardise to 0. Mask them out upstream to silence this.",
            int(zero.sum()), p,
        )
        std = np.where(zero, 1.0, std)
    return Standardizer(scale, np.asarray(mean), np.asarray(std))
