"""The plan: everything that depends only on the design and the options, computed once.

:func:`prepare` checks the design, the timing, the HRFs, the extra regressors and the
options, and returns a small picklable :class:`GlmPlan` (trial onsets, HRFs, per-run
drift and nuisance bases, cross-validation pairs, the fractions to fit). Block functions
and global steps take it as their first argument; nothing in it depends on the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .design import (
    TrialDesign,
    check_run_lengths,
    orthonormal_complement_basis,
    parse_design,
    polynomial_basis,
)
from .errors import GlmOptionError, RepeatsError, RunTimingError
from . import hrf as _hrf
from .hrf import check_hrfs, round_half_away
from .options import GlmOptions, check_options

__all__ = ["GlmPlan", "prepare"]

logger = logging.getLogger(__name__)

#: GLMsingle warns when a trial starts less than this many seconds before its run ends.
END_BUFFER_SECONDS = 8.0


@dataclass(frozen=True, eq=False)
class GlmPlan:
    """Design-only quantities of one session's GLM (see :func:`prepare`).

    Attributes
    ----------
    options : GlmOptions
        Checked options.
    tr, stimdur : float
        TR and stimulus duration (s).
    trials : TrialDesign
        Onsets, conditions and runs of the trials.
    library : array of shape (n_time, n_hrf)
        Candidate HRFs (peak 1); the assumed HRF alone when ``wantlibrary`` is False.
    assumed_hrf : array of shape (n_time_a,)
        HRF of the ON-OFF model (type A).
    poly : tuple of arrays of shape (n_volumes_r, d_r + 1)
        Orthonormal polynomial drift basis per run.
    extra : tuple of arrays of shape (n_volumes_r, k_r)
        Orthonormal basis of the extra regressors per run, orthogonal to ``poly``.
    pairs : (array of shape (n_pairs,), array of shape (n_pairs,))
        Cross-validation pairs (training trial, held-out trial), over all folds.
    folds : tuple of tuple of int
        Held-out runs of each fold.
    fracs_to_use : array of shape (n_fits,)
        Ridge fractions fitted for type D, descending; index 0 is always 1 (the
        unregularised reference of the cross-validation and of the rescaling).
    frac_start : int
        First index of ``fracs_to_use`` that may be chosen (1 when 1 was added only as
        the reference, GLMsingle's "weird special case").
    fixed_frac : int or None
        Index into ``fracs_to_use`` used for every voxel when there is no choice.
    """

    options: GlmOptions
    tr: float
    stimdur: float
    trials: TrialDesign
    library: np.ndarray
    assumed_hrf: np.ndarray
    poly: tuple[np.ndarray, ...]
    extra: tuple[np.ndarray, ...]
    pairs: tuple[np.ndarray, np.ndarray]
    folds: tuple[tuple[int, ...], ...]
    fracs_to_use: np.ndarray
    frac_start: int
    fixed_frac: int | None

    @property
    def n_runs(self) -> int:
        """Number of runs."""
        return self.trials.n_runs

    @property
    def n_trials(self) -> int:
        """Number of trials."""
        return self.trials.n_trials

    @property
    def n_hrf(self) -> int:
        """Number of candidate HRFs."""
        return int(self.library.shape[1])

    @property
    def n_volumes(self) -> tuple[int, ...]:
        """Volumes per run."""
        return self.trials.n_volumes

    @property
    def fixed_pcnum(self) -> int | None:
        """``-pcstop`` when ``pcstop <= 0`` (no cross-validation), else None."""
        return int(-self.options.pcstop) if self.options.pcstop <= 0 else None

    @property
    def models(self) -> tuple[str, ...]:
        """Names of the single-trial models fitted, GLMsingle's B, C, D (in that order)."""
        names = ["fithrf"]
        if self.options.wantglmdenoise:
            names.append("fithrf_glmdenoise")
        if self.options.wantfracridge:
            names.append("fithrf_glmdenoise_rr")
        return tuple(names)

    def denoise_uses_extra(self, n_pc: int) -> bool:
        """Whether the extra regressors enter a type-C/D fit with ``n_pc`` PCs (option policy)."""
        policy = self.options.denoise_extra_regressors
        return policy == "all" or (policy == "python" and n_pc > 0)


def _common_tr(tr: float | Sequence[float], n_runs: int) -> float:
    values = np.atleast_1d(np.asarray(tr, dtype=float))
    if values.size not in (1, n_runs):
        raise RunTimingError(f"tr has {values.size} values but there are {n_runs} runs: give one TR, or one per run")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise RunTimingError(f"tr must be positive seconds, got {tr!r}")
    if np.ptp(values) > 1e-9 * values.max():
        raise RunTimingError(
            f"runs have different TRs {sorted(set(values.tolist()))} s: one GLM needs one TR; resample the "
            "runs to a common TR or fit the groups of runs separately"
        )
    return float(values[0])


def _poly_degrees(opts: GlmOptions, n_volumes: Sequence[int], tr: float) -> list[int]:
    deg = opts.maxpolydeg
    if deg is None:  # round(L/2), L the run's minutes (GLM_single.fit, 'maxpolydeg')
        return [round_half_away(n * tr / 60 / 2) for n in n_volumes]
    if isinstance(deg, tuple):
        if len(deg) != len(n_volumes):
            raise GlmOptionError(f"option maxpolydeg has {len(deg)} degrees but there are {len(n_volumes)} runs")
        return [int(d) for d in deg]
    return [int(deg)] * len(n_volumes)


def _extra_bases(extra: Sequence[Any] | None, n_volumes: Sequence[int], poly: Sequence[np.ndarray]) -> tuple:
    if extra is None:
        return tuple(np.zeros((n, 0)) for n in n_volumes)
    extra = list(extra)
    lengths = [int(np.shape(x)[0]) if x is not None and np.ndim(x) > 0 else None for x in extra]
    expected = list(n_volumes) + [0] * max(0, len(extra) - len(n_volumes))
    check_run_lengths(n_volumes, [e if n is None else n for n, e in zip(lengths, expected)], what="extra_regressors")
    out = []
    for run, (x, basis) in enumerate(zip(extra, poly)):
        arr = np.zeros((basis.shape[0], 0)) if x is None else np.asarray(x, dtype=float)
        arr = arr[:, None] if arr.ndim == 1 else arr
        if arr.ndim != 2 or not np.all(np.isfinite(arr)):
            raise RunTimingError(f"extra_regressors run {run} must be a finite (volumes, regressors) array")
        out.append(orthonormal_complement_basis(arr, basis))
    return tuple(out)


def _folds(scheme: Any, n_runs: int) -> tuple[tuple[int, ...], ...]:
    if scheme == "leave-one-run-out":
        return tuple((r,) for r in range(n_runs))
    if scheme == "run-pairs":
        return tuple(tuple(range(r, min(r + 2, n_runs))) for r in range(0, n_runs, 2))
    bad = sorted({r for fold in scheme for r in fold if not 0 <= r < n_runs})
    if bad:
        raise GlmOptionError(f"option xval_scheme names run(s) {bad} but runs are 0..{n_runs - 1}")
    return tuple(tuple(fold) for fold in scheme)


def _pairs(trials: TrialDesign, folds: Sequence[Sequence[int]], match: str) -> tuple[np.ndarray, np.ndarray]:
    """(training trial, held-out trial) pairs of the same condition across folds (``calcbadness``)."""
    train_out, test_out = [], []
    for fold in folds:
        held = np.isin(trials.runs, fold)
        test_cols = np.concatenate([np.flatnonzero(trials.runs == r) for r in fold])
        train_cols = np.flatnonzero(~held)
        for t in test_cols:
            matches = train_cols[trials.conditions[train_cols] == trials.conditions[t]]
            if match == "first":
                matches = matches[:1]
            train_out.append(matches)
            test_out.append(np.full(matches.size, t))
    if not train_out:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(train_out).astype(int), np.concatenate(test_out).astype(int)


def _frac_plan(opts: GlmOptions) -> tuple[np.ndarray, int, int | None]:
    """Fractions to fit and which may be chosen (GLM_single.fit, type C/D set-up)."""
    fracs = np.asarray(opts.fracs, dtype=float)
    with_ref = fracs if fracs[0] == 1 else np.r_[1.0, fracs]
    start = 0 if fracs[0] == 1 else 1
    if fracs.size == 1:
        return with_ref, start, start
    return with_ref, start, None


def _warn_end_buffer(trials: TrialDesign, tr: float) -> None:
    """Log a warning for trials too close to their run's end (GLM_single.fit, 'endbuffers')."""
    short = [r for r, (onsets, n) in enumerate(zip(trials.onsets, trials.n_volumes))
             if (n - 1 - onsets[-1]) * tr < END_BUFFER_SECONDS]
    if short:
        logger.warning(
            "run(s) %s have a trial onset less than %.0f s before the run's end, whose response is mostly "
            "unobserved; consider leaving such trials out of the design (silence with "
            "logging.getLogger('fmri2img.glm').setLevel(logging.ERROR))", short, END_BUFFER_SECONDS)


def _check_repeats(opts: GlmOptions, pairs: tuple[np.ndarray, np.ndarray], trials: TrialDesign) -> None:
    steps = []
    if opts.wantglmdenoise and opts.pcstop > 0:
        steps.append(f"type C's number of noise PCs (pcstop={opts.pcstop}; fix it with pcstop=-B for B PCs, "
                     "or wantglmdenoise=False)")
    if opts.wantfracridge and len(opts.fracs) > 1:
        steps.append(f"type D's ridge fraction ({len(opts.fracs)} fracs; fix it with fracs=(f,) for one "
                     "fraction, or wantfracridge=False)")
    if steps and pairs[0].size == 0:
        repeated = int(np.sum(np.bincount(trials.conditions) > 1))
        raise RepeatsError(
            "cross-validation needs a condition shown in two different folds of runs, but no condition "
            f"is ({repeated} of {trials.n_conditions} conditions repeat, none across folds). It cannot "
            "choose " + "; nor ".join(steps) + ". Or repeat conditions across runs."
        )


def prepare(
    design: Sequence[Any],
    tr: float | Sequence[float],
    stimdur: float,
    options: GlmOptions | None = None,
    *,
    extra_regressors: Sequence[Any] | None = None,
    hrf_library: np.ndarray | None = None,
    hrf_to_assume: np.ndarray | None = None,
) -> GlmPlan:
    """Check the design and options and compute everything that does not depend on the data.

    Parameters
    ----------
    design : sequence of arrays of shape (n_volumes_r, n_conditions)
        Per-run 0/1 condition design (GLMsingle's ``design``).
    tr : float or sequence of float
        TR in seconds (one per run allowed; they must agree).
    stimdur : float
        Stimulus duration in seconds.
    options : GlmOptions, optional
        Default: the ``glmsingle`` preset.
    extra_regressors : sequence of arrays of shape (n_volumes_r, k_r) or None, optional
        Per-run nuisance regressors (e.g. fMRIPrep confounds); None entries for none.
    hrf_library : array of shape (n_time, n_hrf), optional
        Candidate HRFs sampled at the TR. Default: :func:`~fmri2img.glm.hrf.hrf_library`.
    hrf_to_assume : array of shape (n_time,), optional
        HRF of the ON-OFF model. Default: :func:`~fmri2img.glm.hrf.canonical_hrf`.

    Returns
    -------
    GlmPlan

    Raises
    ------
    DesignError, RunTimingError, HrfLibraryError, GlmOptionError, RepeatsError
    """
    opts = check_options(options if options is not None else GlmOptions())
    trials = parse_design(design)
    tr_ = _common_tr(tr, trials.n_runs)
    _warn_end_buffer(trials, tr_)
    assumed = check_hrfs(_hrf.canonical_hrf(stimdur, tr_) if hrf_to_assume is None else hrf_to_assume,
                         tr_, "hrf_to_assume")[:, 0]
    if not opts.wantlibrary:
        library = assumed[:, None].copy()
    else:
        library = check_hrfs(_hrf.hrf_library(stimdur, tr_) if hrf_library is None else hrf_library, tr_)
    poly = tuple(polynomial_basis(n, d) for n, d in zip(trials.n_volumes, _poly_degrees(opts, trials.n_volumes, tr_)))
    folds = _folds(opts.xval_scheme, trials.n_runs)
    pairs = _pairs(trials, folds, opts.xval_match)
    _check_repeats(opts, pairs, trials)
    fracs, start, fixed = _frac_plan(opts)
    return GlmPlan(
        options=opts, tr=tr_, stimdur=float(stimdur), trials=trials, library=library, assumed_hrf=assumed,
        poly=poly, extra=_extra_bases(extra_regressors, trials.n_volumes, poly), pairs=pairs, folds=folds,
        fracs_to_use=fracs, frac_start=start, fixed_frac=fixed,
    )
