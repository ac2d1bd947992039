"""The global steps: small inputs gathered from every voxel block, small outputs.

- :func:`thresholds`: the ON-OFF R² tail threshold (``findtailthreshold``) and the
  brain-intensity threshold, from the per-voxel ON-OFF R² and mean volume of all blocks;
- :func:`noise_pool` and :func:`pc_voxels`: per-voxel masks from those thresholds;
- :func:`noise_components`: the noise PCs from the *sum over blocks* of each run's
  time × time Gram matrix of the noise pool's normalised time courses;
- :func:`choose_pcnum`: the number of PCs from the gathered cross-validation table.
"""

from __future__ import annotations

import logging
import warnings

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .crossval import pcnum_rule
from .errors import VoxelDataError
from .options import GlmOptions

logger = logging.getLogger(__name__)

__all__ = [
    "Thresholds",
    "robust_range",
    "tail_threshold",
    "thresholds",
    "noise_pool",
    "pc_voxels",
    "noise_components",
    "choose_pcnum",
]

#: findtailthreshold's internal constants (glmsingle/gmm/findtailthreshold.py).
_TAIL_MAX_VALUES = 1_000_000
_TAIL_GRID = 500
_TAIL_RESTARTS = 3
#: Voxels judged for pcnum when none passes the cutoff (GLM_single.fit: "best 100 voxels").
_PC_FALLBACK_VOXELS = 100


@dataclass(frozen=True)
class Thresholds:
    """Session-wide thresholds (all from small per-voxel vectors).

    Attributes
    ----------
    brain_r2 : float
        Noise-pool voxels have ON-OFF R² below this (percent).
    pc_r2_cutoff : float
        pcnum is judged on voxels with ON-OFF R² above this (percent).
    bright : float
        Brain voxels have ``meanvol`` above this.
    tail : float
        The tail threshold of the ON-OFF R² histogram (NaN if not needed).
    """

    brain_r2: float
    pc_r2_cutoff: float
    bright: float
    tail: float


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """A range holding most values but not far outliers (GLMsingle ``robustrange``).

    Percentiles p = (0.1, 10, 50, 90, 99.9); values beyond ``p50 ± 5 (p50 − p10 | p90 − p50)``
    are outliers and removed before trying again; otherwise each end is the absolute
    extreme if within 1.1 × the 0.1/99.9-percentile distance of the median, else that
    percentile.

    Returns
    -------
    (low, high) : tuple of float
    """
    m = np.asarray(values, dtype=float).ravel()
    while True:
        p = np.percentile(m, [0.1, 10, 50, 90, 99.9])
        pmn, pmx = p[2] - 5 * (p[2] - p[1]), p[2] + 5 * (p[3] - p[2])
        absmn, absmx = m.min(), m.max()
        rerun = False
        if p[4] <= pmx:
            high = absmx if absmx <= p[2] + 1.1 * (p[4] - p[2]) else p[4]
        else:
            rerun, m = True, m[~(m > pmx)]
        if p[0] >= pmn:
            low = absmn if absmn >= p[2] - 1.1 * (p[2] - p[0]) else p[0]
        else:
            rerun, m = True, m[~(m < pmn)]
        if not rerun:
            return float(low), float(high)


def tail_threshold(values: np.ndarray, seed: int = 0) -> float:
    """Where a two-Gaussian mixture's posterior crosses 50/50 (GLMsingle ``findtailthreshold``).

    Fit a 2-component Gaussian mixture (tol 1e-10, no covariance regularisation, 3
    restarts) to the finite values (a seeded random million if more), evaluate the
    posterior on 500 points spanning the robust range and both means, and return the
    largest grid point where the right-hand component's posterior is still ≤ 0.5.

    Parameters
    ----------
    values : array of shape (n_voxels,)
        E.g. the ON-OFF R² of every voxel of the session.
    seed : int
        Seed of the mixture's initialisation.

    Returns
    -------
    float

    Raises
    ------
    VoxelDataError
        Fewer than 2 distinct finite values, or the mixture cannot be fitted.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if np.unique(v).size < 2:
        raise VoxelDataError(
            f"the tail threshold needs at least 2 distinct finite ON-OFF R² values, got {np.unique(v).size}: "
            "fit more voxels, or set brain_r2 and pc_r2_cutoff explicitly"
        )
    if v.size > _TAIL_MAX_VALUES:  # picksubset(v, 1e6) with seed 0
        v = v[np.random.RandomState(0).permutation(v.size)[:_TAIL_MAX_VALUES]]
    gmm = GaussianMixture(n_components=2, tol=1e-10, reg_covar=0, n_init=_TAIL_RESTARTS, random_state=seed)
    try:
        with warnings.catch_warnings(record=True) as caught:  # tol 1e-10 is GLMsingle's: often not reached
            warnings.simplefilter("always", ConvergenceWarning)
            gmm.fit(v[:, None])
        if caught:
            logger.info("tail threshold: the mixture stopped before tol 1e-10 (%s); its fit is used as GLMsingle "
                        "uses it", caught[0].message)
    except ValueError as err:
        raise VoxelDataError(
            f"the ON-OFF R² histogram could not be split into two Gaussians ({err}): set brain_r2 and "
            "pc_r2_cutoff explicitly"
        ) from None
    low, high = robust_range(v)
    grid = np.linspace(min(low, gmm.means_.min()), max(high, gmm.means_.max()), _TAIL_GRID)
    post = gmm.predict_proba(grid[:, None])
    right = 0 if post[-1, 0] > 0.5 else 1
    below = np.flatnonzero(post[:, right] <= 0.5)
    return float(grid[below[-1]] if below.size else grid[0])


def thresholds(onoff_r2: np.ndarray, meanvol: np.ndarray, options: GlmOptions) -> Thresholds:
    """The session's thresholds from every voxel's ON-OFF R² and mean volume.

    ``bright = percentile(meanvol, A) · B`` with ``(A, B) = options.brainthresh``;
    ``brain_r2`` and ``pc_r2_cutoff`` default to the tail threshold of the ON-OFF R²
    (GLM_single.fit, "DETERMINE THRESHOLDS", and the noise pool set-up).

    Parameters
    ----------
    onoff_r2, meanvol : arrays of shape (n_voxels,)
        All voxels of the session (gathered from the blocks, any order).
    options : GlmOptions

    Returns
    -------
    Thresholds
    """
    needed = options.wantglmdenoise and (options.brain_r2 is None or options.pc_r2_cutoff is None)
    tail = tail_threshold(onoff_r2, options.tail_seed) if needed else float("nan")
    brain_r2 = tail if options.brain_r2 is None else float(options.brain_r2)
    cutoff = tail if options.pc_r2_cutoff is None else float(options.pc_r2_cutoff)
    pct, frac = options.brainthresh
    bright = float(np.percentile(np.asarray(meanvol, dtype=float).ravel(), pct) * frac)
    return Thresholds(brain_r2=brain_r2, pc_r2_cutoff=cutoff, bright=bright, tail=tail)


def noise_pool(onoff_r2: np.ndarray, meanvol: np.ndarray, th: Thresholds,
               exclude: np.ndarray | None = None) -> np.ndarray:
    """Noise-pool mask: bright voxels with ON-OFF R² below ``brain_r2``, not excluded.

    Elementwise, so a block can compute its own part. Shapes (n_voxels,) in and out.
    """
    pool = (np.asarray(meanvol) > th.bright) & (np.asarray(onoff_r2) < th.brain_r2)
    return pool if exclude is None else pool & ~np.asarray(exclude, dtype=bool)


def pc_voxels(onoff_r2: np.ndarray, th: Thresholds, mask: np.ndarray | None = None) -> np.ndarray:
    """Voxels that judge pcnum: ON-OFF R² above ``pc_r2_cutoff`` (within ``mask``).

    If none passes, the 100 voxels of ``mask`` with the highest ON-OFF R² (GLM_single.fit,
    "compute xvaltrend"). Global: needs every voxel's R².

    Parameters
    ----------
    onoff_r2 : array of shape (n_voxels,)
    th : Thresholds
    mask : array of shape (n_voxels,), optional
        Voxels allowed (GLMsingle ``pcR2cutoffmask``); default all.

    Returns
    -------
    array of shape (n_voxels,), bool
    """
    r2 = np.asarray(onoff_r2, dtype=float)
    allowed = np.ones(r2.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    chosen = (r2 > th.pc_r2_cutoff) & allowed
    if not chosen.any():
        candidates = np.flatnonzero(allowed)
        if candidates.size == 0:
            raise VoxelDataError("pc_r2_cutoff_mask selects no voxel: pcnum cannot be judged")
        order = np.argsort(np.where(np.isnan(r2[candidates]), -np.inf, r2[candidates]))[::-1]
        chosen[candidates[order[:_PC_FALLBACK_VOXELS]]] = True
    return chosen


def noise_components(grams: Sequence[np.ndarray], n_pcs: int) -> tuple[np.ndarray, ...]:
    """Noise PCs per run from the summed Gram matrices of the noise pool.

    For run ``r`` with noise-pool time courses ``y_v`` (polynomial drift removed, scaled to
    unit length), ``G_r = Σ_v y_v y_vᵀ``; the PCs are its top ``n_pcs + 1`` eigenvectors
    (the left singular vectors of the (time × voxels) matrix), each divided by its
    standard deviation (ddof 1) (GLM_single.fit, "DETERMINE GLMDENOISE REGRESSORS").
    Signs are fixed so that each PC's largest-magnitude entry is positive.

    Parameters
    ----------
    grams : sequence of arrays of shape (n_volumes_r, n_volumes_r)
        Per run, summed over all blocks.
    n_pcs : int

    Returns
    -------
    tuple of arrays of shape (n_volumes_r, min(n_pcs + 1, n_volumes_r))

    Raises
    ------
    VoxelDataError
        A run's Gram matrix is zero (the noise pool is empty).
    """
    out = []
    for run, gram in enumerate(grams):
        gram = np.asarray(gram, dtype=float)
        if not np.trace(gram) > 0:
            raise VoxelDataError(
                f"the noise pool is empty (run {run}'s Gram matrix is zero): no bright voxel has ON-OFF R² "
                "below brain_r2; raise brain_r2, lower brainthresh, or set wantglmdenoise=False"
            )
        evals, evecs = np.linalg.eigh((gram + gram.T) / 2)
        top = evecs[:, np.argsort(evals)[::-1][: n_pcs + 1]]
        peak = np.argmax(np.abs(top), axis=0)
        top = top * np.sign(top[peak, np.arange(top.shape[1])])
        out.append(top / top.std(axis=0, ddof=1))
    return tuple(out)


def choose_pcnum(table: np.ndarray, options: GlmOptions) -> tuple[int, np.ndarray]:
    """pcnum and the cross-validation trend from the gathered table of judged voxels.

    Parameters
    ----------
    table : array of shape (n_judged_voxels, n_pcs + 1)
        Rows of :func:`~fmri2img.glm.blocks.pcnum_xval_block` from every block.
    options : GlmOptions

    Returns
    -------
    pcnum : int
    xvaltrend : array of shape (n_pcs + 1,)
        ``−median`` over voxels (higher is better).
    """
    table = np.asarray(table, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        raise VoxelDataError("the pcnum cross-validation table is empty: no voxel judged the number of PCs")
    xvaltrend = -np.median(table, axis=0)
    if not np.all(np.isfinite(xvaltrend)):
        raise VoxelDataError("the pcnum cross-validation trend is not finite: check the data for extreme values")
    return pcnum_rule(xvaltrend, options.pcstop, options.pcnum_rule), xvaltrend
