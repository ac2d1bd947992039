"""Design matrices: trials from a condition design, HRF convolution, drift and nuisance bases.

GLMsingle takes the design as one (volumes × conditions) 0/1 matrix per run and turns it
into a single-trial design: every 1 becomes its own trial column, trials ordered run by
run and, within a run, by volume (``GLM_single.fit``, "PRE-PROCESSING FOR THE
EXPERIMENTAL DESIGN", glmsingle/glmsingle.py). A trial's column is its onset convolved
with the HRF and cut at the run's end (``convolve_design``, glmsingle/design/
convolve_design.py). Drift is modelled per run by polynomials of degrees 0..d in
``linspace(-1, 1, n)`` (``make_polynomial_matrix``, glmsingle/ols/make_poly_matrix.py);
only the span matters, so here it is one orthonormal basis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import DesignError, RunTimingError

__all__ = [
    "TrialDesign",
    "parse_design",
    "convolve_onsets",
    "polynomial_basis",
    "orthonormal_complement_basis",
]

#: Relative tolerance below which a nuisance direction counts as already spanned.
RANK_TOL = 1e-10


@dataclass(frozen=True, eq=False)
class TrialDesign:
    """The single-trial structure of a session's design.

    Attributes
    ----------
    n_volumes : tuple of int
        Volumes per run.
    n_conditions : int
        Columns of the condition design.
    onsets : tuple of arrays of shape (n_trials_r,)
        Onset volume of each trial of run ``r``, ascending.
    conditions : array of shape (n_trials,)
        Condition of each trial, chronological (run by run).
    runs : array of shape (n_trials,)
        Run of each trial.
    """

    n_volumes: tuple[int, ...]
    n_conditions: int
    onsets: tuple[np.ndarray, ...]
    conditions: np.ndarray
    runs: np.ndarray

    @property
    def n_runs(self) -> int:
        """Number of runs."""
        return len(self.n_volumes)

    @property
    def n_trials(self) -> int:
        """Number of trials in the session."""
        return int(self.conditions.size)

    def run_slice(self, run: int) -> slice:
        """The trials of ``run`` as a slice of the chronological trial axis."""
        counts = np.cumsum([0] + [o.size for o in self.onsets])
        return slice(int(counts[run]), int(counts[run + 1]))


def _as_run_matrix(run: object, index: int) -> np.ndarray:
    arr = np.asarray(run)
    if hasattr(run, "toarray"):  # scipy.sparse, as GLMsingle accepts
        arr = np.asarray(run.toarray())
    if arr.ndim != 2:
        raise DesignError(f"design run {index} must be a (volumes, conditions) matrix, got shape {arr.shape}")
    if arr.size and not np.all(np.isin(arr, (0, 1))):
        raise DesignError(
            f"design run {index} holds values other than 0 and 1: mark each trial onset with a 1 "
            "in its condition's column (GLMsingle: '<design> must consist of 0s and 1s')"
        )
    return arr.astype(bool)


def parse_design(design: Sequence[object]) -> TrialDesign:
    """Trials, their conditions and runs from a per-run (volumes × conditions) 0/1 design.

    Parameters
    ----------
    design : sequence of arrays of shape (n_volumes_r, n_conditions)
        One 0/1 matrix per run (a single matrix is one run); 1 marks a trial onset.

    Returns
    -------
    TrialDesign

    Raises
    ------
    DesignError
        Not 0/1, runs with different condition counts, two onsets in one volume, a run
        without trials, or no trial at all.
    """
    runs = [design] if isinstance(design, np.ndarray) and np.ndim(design) == 2 else list(design)
    if not runs:
        raise DesignError("design has no runs: pass one (volumes, conditions) 0/1 matrix per run")
    mats = [_as_run_matrix(r, i) for i, r in enumerate(runs)]
    n_cond = mats[0].shape[1]
    onsets, conditions, run_of = [], [], []
    for i, mat in enumerate(mats):
        if mat.shape[1] != n_cond:
            raise DesignError(
                f"design run {i} has {mat.shape[1]} conditions but run 0 has {n_cond}: every run "
                "needs the same condition columns (empty columns are fine)"
            )
        per_volume = mat.sum(axis=1)
        if np.any(per_volume > 1):
            vol = int(np.flatnonzero(per_volume > 1)[0])
            raise DesignError(
                f"design run {i}, volume {vol} has {int(per_volume[vol])} onsets: two conditions "
                "cannot start in the same volume (GLMsingle refuses it too)"
            )
        vols = np.flatnonzero(per_volume)
        onsets.append(vols)
        conditions.append(np.argmax(mat[vols], axis=1))
        run_of.append(np.full(vols.size, i))
    n_trials = sum(o.size for o in onsets)
    if n_trials == 0:
        raise DesignError("design has no trials: no 1 anywhere in its matrices; mark each trial onset with a 1")
    empty = [i for i, o in enumerate(onsets) if o.size == 0]
    if empty:
        raise DesignError(
            f"design run(s) {empty} have no trials: leave them out of the single-trial GLM "
            "(with data and design both)"
        )
    return TrialDesign(
        n_volumes=tuple(int(m.shape[0]) for m in mats),
        n_conditions=int(n_cond),
        onsets=tuple(onsets),
        conditions=np.concatenate(conditions),
        runs=np.concatenate(run_of),
    )


def convolve_onsets(onsets: np.ndarray, n_volumes: int, hrf: np.ndarray) -> np.ndarray:
    """One column per onset: the HRF starting at the onset volume, cut at the run's end.

    Equals ``np.convolve(delta, hrf)[:n_volumes]`` for each onset's delta column
    (GLMsingle ``convolve_design``).

    Parameters
    ----------
    onsets : array of shape (n_onsets,)
        Onset volumes (integers, 0-based).
    n_volumes : int
        Volumes in the run.
    hrf : array of shape (n_time,)
        HRF sampled every TR from onset.

    Returns
    -------
    columns : array of shape (n_volumes, n_onsets)
    """
    out = np.zeros((n_volumes, onsets.size))
    for j, onset in enumerate(onsets):
        stop = min(n_volumes, onset + hrf.size)
        out[onset:stop, j] = hrf[: stop - onset]
    return out


def polynomial_basis(n_volumes: int, degree: int) -> np.ndarray:
    """Orthonormal basis of the polynomials of degrees 0..``degree`` in linspace(-1, 1, n).

    Returns
    -------
    basis : array of shape (n_volumes, min(degree + 1, n_volumes))
        Same span as GLMsingle's ``make_polynomial_matrix(n, degree)``.
    """
    t = np.linspace(-1, 1, n_volumes)
    vander = np.vander(t, min(degree + 1, n_volumes), increasing=True)
    q, _ = np.linalg.qr(vander)
    return q


def orthonormal_complement_basis(columns: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis of what ``columns`` add to the span of the orthonormal ``basis``.

    Parameters
    ----------
    columns : array of shape (n_volumes, k)
        New regressors (e.g. extra regressors, noise PCs).
    basis : array of shape (n_volumes, m)
        Orthonormal columns already in the model.

    Returns
    -------
    added : array of shape (n_volumes, k')
        Orthonormal, orthogonal to ``basis``, ``k' <= k``; directions whose residual is
        below ``RANK_TOL`` times the largest column norm are dropped (a rank-deficient
        set of regressors spans what it spans, as GLMsingle's ``pinv`` treats it).
    """
    cols = np.asarray(columns, dtype=float)
    if cols.ndim != 2 or cols.shape[1] == 0:
        return np.zeros((basis.shape[0], 0))
    resid = cols - basis @ (basis.T @ cols)
    scale = max(float(np.linalg.norm(cols, axis=0).max()), np.finfo(float).tiny)
    u, s, _ = np.linalg.svd(resid, full_matrices=False)
    return u[:, s > RANK_TOL * scale]


def check_run_lengths(n_volumes: Sequence[int], data_lengths: Sequence[int], what: str = "data") -> None:
    """Raise :class:`RunTimingError` unless every run of ``what`` has its design's volume count."""
    if len(data_lengths) != len(n_volumes):
        raise RunTimingError(
            f"{what} has {len(data_lengths)} runs but the design has {len(n_volumes)}: pass one "
            "array per run, in the design's order"
        )
    for run, (n_data, n_design) in enumerate(zip(data_lengths, n_volumes)):
        if n_data != n_design:
            raise RunTimingError(
                f"run {run} of {what} has {n_data} volumes but its design has {n_design}: trim the "
                "longer one (GLMsingle silently truncates; here they must match)"
            )
