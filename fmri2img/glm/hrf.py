"""HRFs: GLMsingle's canonical HRF and its library of 20, sampled at the data's TR.

Both start from tables sampled every 0.1 s for a 0.1-s stimulus, shipped as data files
beside this module (their numbers are GLMsingle's; see the files' headers):
``canonical_hrf.tsv`` (490 samples, ``basichrf`` in glmsingle/hrf/gethrf.py) and
``hrf_library.tsv`` (501 × 20, glmsingle/hrf/getcanonicalhrflibrary.tsv, derived from
NSD). For a stimulus of ``stimdur`` seconds, GLMsingle convolves each with a boxcar of
``round(stimdur / 0.1)`` samples (at least 1), resamples it at the TR with a PCHIP
interpolant and scales it to a peak of 1 (``getcanonicalhrf``, ``getcanonicalhrflibrary``
in glmsingle/hrf/gethrf.py; ``normalisemax`` per column in ``GLM_single.fit``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
from scipy.interpolate import PchipInterpolator

from .errors import HrfLibraryError

__all__ = ["canonical_hrf", "hrf_library", "check_hrfs", "round_half_away"]

#: Sampling step (s) of the tables shipped with the module.
TABLE_DT = 0.1
#: Duration range accepted for an HRF (s); GLMsingle's last ~53 s. Outside: another time step.
MIN_HRF_SECONDS = 10.0
MAX_HRF_SECONDS = 100.0


def round_half_away(x: float) -> int:
    """Round half away from zero, as MATLAB does (GLMsingle ``utils/alt_round.py``)."""
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


@lru_cache(maxsize=None)
def _table(name: str) -> np.ndarray:
    text = resources.files(__package__).joinpath(name).read_text()
    table = np.loadtxt(text.splitlines(), comments="#", ndmin=2)
    table.setflags(write=False)
    return table


def _boxcar(table: np.ndarray, stimdur: float) -> np.ndarray:
    duration = 0.1 if stimdur == 0 else stimdur
    width = max(1, round_half_away(duration / TABLE_DT))
    kernel = np.ones(width)
    return np.stack([np.convolve(col, kernel) for col in table.T], axis=1)


def _resample(curves: np.ndarray, sampler: np.ndarray) -> np.ndarray:
    t_old = np.arange(curves.shape[0]) * TABLE_DT
    out = PchipInterpolator(t_old, curves, axis=0)(sampler)
    return out / out.max(axis=0, keepdims=True)


def _check_timing(stimdur: float, tr: float) -> None:
    if not (np.isfinite(tr) and tr > 0):
        raise HrfLibraryError(f"tr must be a positive number of seconds, got {tr!r}")
    if not (np.isfinite(stimdur) and stimdur >= 0):
        raise HrfLibraryError(f"stimdur must be a non-negative number of seconds, got {stimdur!r}")


def hrf_library(stimdur: float, tr: float) -> np.ndarray:
    """GLMsingle's library of 20 HRFs for a ``stimdur``-second stimulus, sampled every ``tr``.

    Parameters
    ----------
    stimdur : float
        Stimulus duration in seconds (0 is treated as 0.1 s).
    tr : float
        Sampling step of the data in seconds.

    Returns
    -------
    library : array of shape (n_time, 20)
        Column ``h`` is HRF ``h`` at times ``0, tr, 2 tr, ...`` from onset, peak 1.
        The times are ``np.arange(0, ceil(n * 0.1), tr)`` with ``n`` the boxcar-convolved
        table's length (glmsingle/hrf/gethrf.py, ``getcanonicalhrflibrary``).
    """
    _check_timing(stimdur, tr)
    curves = _boxcar(_table("hrf_library.tsv"), stimdur)
    sampler = np.arange(0, int(np.ceil(curves.shape[0] * TABLE_DT)), tr)
    return _resample(curves, sampler)


def canonical_hrf(stimdur: float, tr: float) -> np.ndarray:
    """GLMsingle's canonical HRF (``hrftoassume``) for a ``stimdur``-second stimulus.

    Returns
    -------
    hrf : array of shape (n_time,)
        Samples at ``np.arange(0, (n - 1) * 0.1, tr)`` from onset, peak 1
        (glmsingle/hrf/gethrf.py, ``getcanonicalhrf``).
    """
    _check_timing(stimdur, tr)
    curve = _boxcar(_table("canonical_hrf.tsv"), stimdur)
    sampler = np.arange(0, (curve.shape[0] - 1) * TABLE_DT, tr)
    return _resample(curve, sampler)[:, 0]


def check_hrfs(hrfs: np.ndarray, tr: float, name: str = "hrf_library") -> np.ndarray:
    """Check a user HRF library (or assumed HRF) and scale each HRF to a peak of 1.

    Parameters
    ----------
    hrfs : array of shape (n_time, n_hrf) or (n_time,)
        HRFs sampled every ``tr`` seconds from onset.
    tr : float
        The data's TR in seconds.
    name : str
        The input's name for messages.

    Returns
    -------
    hrfs : array of shape (n_time, n_hrf)
        float64, each column divided by its maximum (GLMsingle ``normalisemax``).

    Raises
    ------
    HrfLibraryError
        Not 1-D/2-D, fewer than 2 samples, non-finite, a column whose peak is not positive,
        or lasting under 10 s or over 100 s (a library at another time step, e.g.
        GLMsingle's 0.1-s table passed as is).
    """
    arr = np.asarray(hrfs, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise HrfLibraryError(f"{name} must be (time, n_hrf) with at least 2 time points, got shape {np.shape(hrfs)}")
    if not np.all(np.isfinite(arr)):
        raise HrfLibraryError(f"{name} holds NaN or inf values")
    seconds = arr.shape[0] * tr
    if not MIN_HRF_SECONDS <= seconds <= MAX_HRF_SECONDS:
        raise HrfLibraryError(
            f"{name} has {arr.shape[0]} time points, {seconds:.1f} s at TR {tr} s, but an HRF should last "
            f"{MIN_HRF_SECONDS:.0f}-{MAX_HRF_SECONDS:.0f} s: is it sampled at another time step (GLMsingle's "
            f"table is every {TABLE_DT} s)? Resample it to the TR, e.g. fmri2img.glm.hrf_library(stimdur, tr)"
        )
    peaks = arr.max(axis=0)
    if np.any(peaks <= 0):
        bad = np.flatnonzero(peaks <= 0).tolist()
        raise HrfLibraryError(f"{name} column(s) {bad} have no positive peak: HRFs are scaled to peak 1")
    return arr / peaks
