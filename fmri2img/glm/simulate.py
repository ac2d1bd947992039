"""A seeded simulator of one fMRI session with known single-trial responses.

For tests and benchmarks of the GLM. The timing follows NSD's facts (Allen et al.
2022; NSD data manual): TR 1.333 s, 3-s stimuli every 4 s (= 3 volumes), 62–63 trials per
run, 12 runs of 226 volumes, 750 trials a session with repeated images; no trial within
8 s of a run's end (GLMsingle warns below that). Each voxel is

    y(t) = baseline · (1 + [Σ_trials β_trial h_v(t − onset) + drift + nuisance + noise] / 100)

with ``h_v`` one of the library HRFs (signal voxels only), ``β`` in percent signal change
(condition mean + trial noise), per-run polynomial drift, a few smooth time courses
shared by all voxels with voxel-specific loadings (what GLMdenoise's PCs should find),
and white noise. Dark voxels outside an ellipsoidal "brain" have a low baseline, as in a
real volume, so GLMsingle's brightness threshold has something to exclude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .design import convolve_onsets
from .hrf import hrf_library

__all__ = ["SimulatedSession", "trial_slots", "simulate_design", "simulate_session"]


@dataclass(frozen=True, eq=False)
class SimulatedSession:
    """A simulated session and its ground truth.

    Attributes
    ----------
    runs : list of arrays of shape (n_volumes, n_voxels), float32
    design : list of arrays of shape (n_volumes, n_conditions), uint8
    tr, stimdur : float
    shape : tuple of int or None
        Volume shape (voxels are its C-order flattening), None for a plain voxel list.
    betas : array of shape (n_trials, n_voxels)
        True single-trial responses, percent signal change (0 off the signal voxels).
    hrf_index : array of shape (n_voxels,), int
        True library HRF of signal voxels, -1 elsewhere.
    signal, brain : arrays of shape (n_voxels,), bool
    conditions : array of shape (n_trials,)
        Condition of each trial, chronological.
    """

    runs: list
    design: list
    tr: float
    stimdur: float
    shape: tuple | None
    betas: np.ndarray
    hrf_index: np.ndarray
    signal: np.ndarray
    brain: np.ndarray
    conditions: np.ndarray


def trial_slots(n_volumes: int, tr: float, spacing: int = 3, end_buffer: float = 8.0) -> np.ndarray:
    """Onset volumes every ``spacing`` volumes from ``spacing``, ending ≥ ``end_buffer`` s before the run's end."""
    last = n_volumes - 1 - int(np.ceil(end_buffer / tr))
    return np.arange(spacing, last + 1, spacing)


def simulate_design(rng: np.random.Generator, n_runs: int, n_volumes: int, tr: float,
                    n_conditions: int, repeats: int) -> list[np.ndarray]:
    """Per-run 0/1 designs: every condition ``repeats`` times, shuffled, spread evenly over runs.

    Returns
    -------
    list of arrays of shape (n_volumes, n_conditions), uint8
    """
    slots = trial_slots(n_volumes, tr)
    order = rng.permutation(np.repeat(np.arange(n_conditions), repeats))
    sizes = np.diff(np.round(np.linspace(0, order.size, n_runs + 1)).astype(int))
    if sizes.max() > slots.size:
        raise ValueError(f"{sizes.max()} trials do not fit a run's {slots.size} slots: use more runs or volumes")
    design, start = [], 0
    for size in sizes:
        mat = np.zeros((n_volumes, n_conditions), dtype=np.uint8)
        onsets = np.sort(rng.choice(slots, size=size, replace=False))
        mat[onsets, order[start:start + size]] = 1
        design.append(mat)
        start += size
    return design


def _smooth(rng: np.random.Generator, n: int, k: int, width: float) -> np.ndarray:
    t = np.arange(-3 * width, 3 * width + 1)
    kernel = np.exp(-0.5 * (t / width) ** 2)
    out = np.stack([np.convolve(rng.standard_normal(n + t.size), kernel, mode="same")[t.size // 2:][:n]
                    for _ in range(k)], axis=1)
    return (out - out.mean(axis=0)) / out.std(axis=0)


def _voxels(rng: np.random.Generator, shape: tuple | None, n_voxels: int | None, signal_fraction: float):
    if shape is not None:
        grids = np.meshgrid(*[(np.arange(s) + 0.5) / s * 2 - 1 for s in shape], indexing="ij")
        brain = (sum(g**2 for g in grids) <= 1).ravel()
    else:
        brain = np.ones(int(n_voxels), bool)
    signal = brain & (rng.random(brain.size) < signal_fraction)
    baseline = np.where(brain, rng.uniform(800, 1200, brain.size), rng.uniform(30, 80, brain.size))
    return brain, signal, baseline


def simulate_session(*, n_runs: int = 12, n_volumes: int = 226, tr: float = 1.333, stimdur: float = 3.0,
                     shape: tuple | None = None, n_voxels: int | None = None, n_conditions: int | None = None,
                     repeats: int = 3, signal_fraction: float = 0.4, gain: tuple = (0.5, 2.5),
                     trial_noise: float = 0.35, n_nuisance: int = 4, nuisance_sd: float = 1.2,
                     drift_sd: float = 1.0, noise_sd: float = 1.5, seed: int = 0) -> SimulatedSession:
    """Simulate a session (see the module docstring); NSD's size by default (750 trials).

    Parameters
    ----------
    n_runs, n_volumes : int
        Runs and volumes per run (NSD: 12 × 226).
    tr, stimdur : float
        Seconds (NSD: 1.333, 3).
    shape : tuple of int, optional
        A volume with an ellipsoidal brain; or ``n_voxels`` brain voxels (default 200).
    n_conditions : int, optional
        Default: trials that fit (62–63 a run for NSD's runs) divided by ``repeats``.
    repeats : int
        Presentations of each condition.
    signal_fraction : float
        Fraction of brain voxels that respond.
    gain : (float, float)
        Range of a voxel's mean response (percent signal change).
    trial_noise : float
        Trial-to-trial sd of responses, relative to the voxel's gain.
    n_nuisance, nuisance_sd : int, float
        Shared smooth components and the sd of their loadings (percent).
    drift_sd, noise_sd : float
        Sd of drift coefficients and of white noise (percent).
    seed : int

    Returns
    -------
    SimulatedSession
    """
    rng = np.random.default_rng(seed)
    if n_conditions is None:
        per_run = min(trial_slots(n_volumes, tr).size, int(round(750 / 12)))
        n_conditions = max(1, (per_run * n_runs) // repeats)
    design = simulate_design(rng, n_runs, n_volumes, tr, n_conditions, repeats)
    brain, signal, baseline = _voxels(rng, shape, n_voxels if n_voxels is not None else 200, signal_fraction)
    n_vox, library = brain.size, hrf_library(stimdur, tr)
    hrf_index = np.where(signal, rng.integers(0, library.shape[1], n_vox), -1)
    conditions = np.concatenate([np.argmax(d[d.any(axis=1)], axis=1) for d in design])
    g = rng.uniform(*gain, n_vox) * signal
    cond_resp = g[None, :] * (1 + 0.6 * rng.standard_normal((n_conditions, n_vox)))
    betas = cond_resp[conditions] + trial_noise * g[None, :] * rng.standard_normal((conditions.size, n_vox))
    loadings = nuisance_sd * rng.standard_normal((n_nuisance, n_vox)) * np.where(brain, 1.0, 0.2)
    runs, start = [], 0
    for mat in design:
        onsets = np.flatnonzero(mat.any(axis=1))
        b = betas[start:start + onsets.size]
        start += onsets.size
        resp = np.zeros((n_volumes, n_vox))
        for h in np.unique(hrf_index[signal]):
            cols = hrf_index == h
            resp[:, cols] = convolve_onsets(onsets, n_volumes, library[:, h]) @ b[:, cols]
        t = np.linspace(-1, 1, n_volumes)[:, None]
        drift = drift_sd * (rng.standard_normal(n_vox) + t * rng.standard_normal(n_vox)
                            + (t**2 - 1 / 3) * rng.standard_normal(n_vox))
        nuis = _smooth(rng, n_volumes, n_nuisance, width=2.0) @ loadings
        noise = noise_sd * rng.standard_normal((n_volumes, n_vox)) * np.where(brain, 1.0, 20.0)
        runs.append((baseline * (1 + (resp + drift + nuis + noise) / 100)).astype(np.float32))
    return SimulatedSession(runs=runs, design=design, tr=tr, stimdur=stimdur, shape=shape, betas=betas,
                            hrf_index=hrf_index, signal=signal, brain=brain, conditions=conditions)
