"""The betas a simulated session gives: each subject's anatomy and its single-trial responses.

Responses come from the simulated visual cortex of :mod:`fmri2img.mininsd.cortex`; values are
stored as NSD stores them (percent signal change × 300, int16; float32 when NaN voxels are
planted), in NSD's h5py order (trials, Z, Y, X).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fmri2img.mininsd import cortex
from fmri2img.mininsd.spec import MiniNSDSpec, rng_for
from fmri2img.storage.nsd import BETA_SCALE

_SHAPE_OFFSETS = ((0, 0, 0), (-2, -2, -1), (1, -1, 0), (-1, 1, -2), (2, 0, -1), (-2, 1, 0), (0, -2, 1), (1, 2, -1))


def subject_anatomy(spec: MiniNSDSpec, subject: int) -> cortex.Anatomy:
    k = (subject - 1) % len(_SHAPE_OFFSETS)
    shape = tuple(int(s + o) for s, o in zip(spec.volume_shape, _SHAPE_OFFSETS[k]))
    origin = (float(k) * 1.3, -4.0 + k, 2.0 - 0.5 * k)
    keep = spec.nsdgeneral_keep * (0.66 - 0.03 * k) / 0.66
    return cortex.build_anatomy(shape, rng_for(spec, 4, subject), keep=keep, origin_mm=origin)


_NOISE_BLOCK = 64 * 2**20  # bytes of float32 background noise drawn at a time


def _zyx(flat_xyz: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Flat C-order (X, Y, Z) voxel indices → flat indices into a C-order (Z, Y, X) volume."""
    x, y, z = np.unravel_index(flat_xyz, shape)
    return (z * shape[1] + y) * shape[0] + x


def session_betas(spec: MiniNSDSpec, anat: cortex.Anatomy, subject: int, session: int, trials: np.ndarray,
                  drive: np.ndarray, tuning: tuple[np.ndarray, np.ndarray], nan: tuple[list[int], np.ndarray]
                  ) -> np.ndarray:
    """One session's betas as stored, shape (trials, Z, Y, X): NSD's h5py order, and NIfTI's bytes.

    Brain voxels outside nsdgeneral get noise only; nsdgeneral voxels get
    baseline + session offset + amplitude × drive[image] + noise, in percent signal change × 300.
    """
    baseline, amp = tuning
    shape = anat.shape
    n_t = len(trials)
    srng = rng_for(spec, 6, subject, session)
    dtype = np.float32 if spec.nan_voxels else np.int16
    out = np.zeros((n_t, int(np.prod(shape))), dtype)
    brain = _zyx(np.flatnonzero(anat.brain), shape)
    step = max(1, _NOISE_BLOCK // (4 * max(len(brain), 1)))
    for t0 in range(0, n_t, step):
        t1 = min(n_t, t0 + step)
        noise = srng.standard_normal((t1 - t0, len(brain)), dtype=np.float32)
        noise *= np.float32(0.6 * spec.noise * BETA_SCALE)
        out[t0:t1, brain] = _stored(noise, dtype)
    offset = srng.normal(0.0, 0.3, len(anat.voxels))
    signal = baseline + offset + amp * drive[trials]
    signal += srng.normal(0.0, spec.noise, signal.shape)
    values = _stored(signal * BETA_SCALE, dtype)
    if spec.nan_voxels and session in nan[0]:
        values[:, np.isin(anat.voxels, nan[1])] = np.nan
    out[:, _zyx(anat.voxels, shape)] = values
    return out.reshape(n_t, *shape[::-1])


def _stored(values: np.ndarray, dtype: Any) -> np.ndarray:
    rounded = np.round(values)
    if dtype == np.int16:
        return np.clip(rounded, -32768, 32767).astype(np.int16)
    return rounded.astype(np.float32)
