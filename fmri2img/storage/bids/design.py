"""From BIDS events to GLMsingle's design: trial onsets on a time grid, conditions, onset matrices.

BIDS onsets are seconds "from the beginning of the acquisition of the first data point stored"
(specification, "Task events"), and seldom fall on the TR grid; GLMsingle takes a design per run
of shape (time points, conditions) with a 1 at each trial's onset time point, one TR for all runs
and one stimulus duration (Prince et al. 2022; GLMsingle's ``fit(design, data, stimdur, tr)``).
Two ways to put the onsets on a grid:

- ``"round"``: each onset goes to the nearest volume; the largest rounding error (s) is recorded.
- ``"resample"``: as NSD did (Allen et al. 2022 upsampled its time series with cubic interpolation to
  1.333 s, a grid on which its 4-s trial onsets fall), each run's time series is interpolated to a
  grid of step ``d`` and per-run phase on which every onset falls within ``tolerance``. ``d`` is the
  coarsest ``TR·a/b`` (b ≤ 12, d ≥ TR/4) that fits every run, or the step given; the phase is the
  centre of the shortest arc that holds all onsets modulo ``d`` (so the largest error is the
  smallest possible for that step). The interpolation is a not-a-knot cubic spline, a linear map
  (:func:`~fmri2img.storage.bids.nifti.resample_matrix`) applied alike to data and confounds.

Slice timing (what a volume's time is): when the preprocessed BOLD's sidecar says
``SliceTimingCorrected: true`` with a ``StartTime`` (fMRIPrep writes ``StartTime = first + slice_time_ref
× (last - first)`` of the SliceTiming, slice_time_ref 0.5 by default; fMRIPrep's ``prepare_timing_parameters``
and its "Outputs" page), volume n is taken at ``StartTime + n·TR``. Without slice-timing correction,
volume n is taken at ``n·TR`` (the start of its acquisition, GLMsingle's and nilearn's default), which
errs by up to the slice spread (``max(SliceTiming)``) for the last slices; the spread is recorded. A
``frame_offset`` overrides both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.storage.bids.errors import EventsError, MetadataError, OnsetGridError, TRMismatchError, listing

logger = logging.getLogger(__name__)

__all__ = ["RunTiming", "Grid", "ONSET_METHODS", "run_timing", "event_trials", "choose_grid", "build_design"]

ONSET_METHODS = ("round", "resample")
_TR_TOLERANCE = 1e-3  # s: sidecar vs header


@dataclass(frozen=True)
class RunTiming:
    """When a run's volumes were sampled.

    Attributes
    ----------
    tr : float
        Repetition time (s).
    n_volumes : int
    frame_offset : float
        Time (s, on the events' clock) that volume 0 represents.
    slice_timing_corrected : bool
    slice_spread : float
        ``max(SliceTiming) - min(SliceTiming)`` (s), 0 when unknown.
    """

    tr: float
    n_volumes: int
    frame_offset: float
    slice_timing_corrected: bool
    slice_spread: float

    @property
    def frame_times(self) -> np.ndarray:
        """Times of the volumes, shape (n_volumes,)."""
        return self.frame_offset + self.tr * np.arange(self.n_volumes)

    @property
    def end(self) -> float:
        """End of the acquisition (s): ``n_volumes · TR``."""
        return self.n_volumes * self.tr


def run_timing(raw_meta: Mapping[str, Any], preproc_meta: Mapping[str, Any], header_tr: float | None,
               n_volumes: int, *, where: str, frame_offset: float | None = None) -> RunTiming:
    """Check a run's TR (sidecars against the NIfTI header) and decide its volumes' times.

    Raises
    ------
    MetadataError
        No RepetitionTime (e.g. a sparse acquisition with VolumeTiming, which is not supported).
    TRMismatchError
        The sidecar's RepetitionTime and the header's differ by more than 1 ms.
    """
    if "RepetitionTime" not in raw_meta:
        extra = " (VolumeTiming: sparse acquisitions are not supported)" if "VolumeTiming" in raw_meta else ""
        raise MetadataError(f"{where}: the BOLD sidecars have no RepetitionTime{extra}; fields found: "
                            f"{listing(sorted(raw_meta))}. Fix: add RepetitionTime (s) to the run's _bold.json "
                            f"or to task-<label>_bold.json at the root")
    tr = float(raw_meta["RepetitionTime"])
    pre_tr = preproc_meta.get("RepetitionTime")
    for what, other in (("NIfTI header (pixdim[4])", header_tr), ("preprocessed BOLD's sidecar", pre_tr)):
        if other is not None and float(other) > 0 and abs(float(other) - tr) > _TR_TOLERANCE:
            raise TRMismatchError(f"{where}: RepetitionTime is {tr:g} s in the raw sidecar but {float(other):g} s "
                                  f"in the {what}; they must agree. Fix: correct the sidecar (or the header) to "
                                  f"the TR the scanner used")
    if header_tr is not None and header_tr <= 0:
        logger.warning("%s: the NIfTI header has no TR (pixdim[4] = %s); using the sidecar's %g s", where,
                       header_tr, tr)
    slices = [float(s) for s in raw_meta.get("SliceTiming") or []]
    spread = (max(slices) - min(slices)) if len(slices) > 1 else 0.0
    stc = bool(preproc_meta.get("SliceTimingCorrected", False))
    if frame_offset is None:
        if stc and "StartTime" in preproc_meta:
            frame_offset = float(preproc_meta["StartTime"])
        elif stc:  # fMRIPrep's default reference: the middle of the slice acquisitions
            frame_offset = (min(slices) + 0.5 * spread) if slices else 0.0
        else:
            frame_offset = 0.0
            if spread:
                logger.info("%s: not slice-time corrected; volumes taken at their start (slices span %.3f s)",
                            where, spread)
    return RunTiming(tr=tr, n_volumes=int(n_volumes), frame_offset=float(frame_offset), slice_timing_corrected=stc,
                     slice_spread=spread)


def event_trials(table: pd.DataFrame, stim_column: str, timing: RunTiming, *, where: str) -> pd.DataFrame:
    """The stimulus trials of an events table, checked.

    Rows whose stimulus is ``n/a`` are not trials (other events: blanks, responses).

    Returns
    -------
    DataFrame with columns ``onset``, ``duration`` (float, s) and ``stimulus`` (str), sorted by onset.

    Raises
    ------
    EventsError
        No onset/duration/stimulus column (lists the columns found), n/a onsets or durations of
        trials, or onsets before 0 or at/after the run's end.
    """
    missing = [c for c in ("onset", "duration", stim_column) if c not in table.columns]
    if missing:
        raise EventsError(f"{where}: no column {listing(missing)}; the columns are {listing(table.columns)}. "
                          f"Fix: BIDS events need onset and duration (s); name the column that identifies the "
                          f"stimulus with --stim-column (e.g. stim_file, trial_type)")
    stim = table[stim_column]
    rows = table[stim.notna() & (stim.astype(str).str.strip() != "")]
    if rows.empty:
        raise EventsError(f"{where}: column {stim_column!r} is n/a in every row: no trials. Fix: choose the "
                          f"column that names the stimuli (columns: {listing(table.columns)})")
    onset = pd.to_numeric(rows["onset"], errors="coerce").to_numpy(float)
    duration = pd.to_numeric(rows["duration"], errors="coerce").to_numpy(float)
    for name, values in (("onset", onset), ("duration", duration)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise EventsError(f"{where}: {name} is n/a or not a number in trial rows {listing(rows.index[bad] + 2)} "
                              f"(file lines). Fix: give every trial its {name} in seconds")
    out = (onset < 0) | (onset >= timing.end)
    if out.any():
        lines = rows.index[out] + 2
        raise EventsError(f"{where}: onsets {listing(np.round(onset[out], 3))} (file lines {listing(lines)}) lie "
                          f"outside the run, which lasts {timing.end:g} s ({timing.n_volumes} volumes × "
                          f"{timing.tr:g} s). Fix: check that the events belong to this run (and that its "
                          f"preprocessed BOLD is complete), or drop those rows")
    trials = pd.DataFrame({"onset": onset, "duration": duration, "stimulus": [_stimulus(v) for v in rows[stim_column]]})
    return trials.sort_values("onset", kind="stable").reset_index(drop=True)


def _stimulus(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class Grid:
    """The time grid the design lives on.

    Attributes
    ----------
    method : {"round", "resample"}
    step : float
        Seconds between design rows (the design's TR; the acquisition TR for ``round``).
    starts : tuple of float
        Per run, the time (s, events' clock) of design row 0.
    lengths : tuple of int
        Per run, the number of design rows.
    max_error : float
        The largest |onset - time of its row| over all trials (s).
    tolerance : float or None
        What ``resample`` had to meet.
    """

    method: str
    step: float
    starts: tuple[float, ...]
    lengths: tuple[int, ...]
    max_error: float = 0.0
    tolerance: float | None = None
    resampled: tuple[bool, ...] = field(default=())

    def times(self, run: int) -> np.ndarray:
        """Times of run ``run``'s design rows, shape (lengths[run],)."""
        return self.starts[run] + self.step * np.arange(self.lengths[run])


def _best_phase(onsets: np.ndarray, step: float) -> tuple[float, float]:
    """The phase p minimising max_i dist(onset_i - p, step·Z), and that distance."""
    r = np.sort(np.mod(onsets, step))
    gaps = np.diff(np.concatenate([r, [r[0] + step]]))
    k = int(np.argmax(gaps))
    arc = step - gaps[k]
    return float(np.mod(r[(k + 1) % len(r)] + arc / 2, step)), float(arc / 2)


def _candidate_steps(tr: float, max_den: int = 12, min_fraction: float = 0.25) -> list[float]:
    ratios = {Fraction(a, b) for b in range(1, max_den + 1) for a in range(1, b + 1) if a / b >= min_fraction}
    return [tr * float(q) for q in sorted(ratios, reverse=True)]


def choose_grid(onsets: Sequence[np.ndarray], timings: Sequence[RunTiming], method: str = "round", *,
                step: float | None = None, tolerance: float = 0.02) -> Grid:
    """Choose the design grid for a set of runs.

    Parameters
    ----------
    onsets : list of arrays of shape (n_trials_r,)
        Trial onsets per run (s).
    timings : list of RunTiming
    method : {"round", "resample"}
    step : float, optional
        ``resample`` only: the grid step (s), e.g. NSD's 4/3; default: the coarsest that fits.
    tolerance : float
        ``resample`` only: the largest onset error allowed (s).

    Raises
    ------
    OnsetGridError
        ``resample`` finds no step within ``tolerance`` (the message gives the best it found).
    """
    if method not in ONSET_METHODS:
        raise EventsError(f"onsets method {method!r} is not known; expected one of {listing(ONSET_METHODS)}. Fix: "
                          f"'round' (nearest volume) or 'resample' (interpolate to a grid the onsets fall on)")
    trs = {round(t.tr, 6) for t in timings}
    if len(trs) > 1:
        raise MetadataError(f"runs have different TRs ({listing(sorted(trs))} s); GLMsingle fits one TR per "
                            f"session. Fix: select runs with one TR (--session / --task)")
    tr = timings[0].tr
    if method == "round":
        errors = [np.abs(o - t.frame_offset - tr * np.clip(np.rint((o - t.frame_offset) / tr), 0, t.n_volumes - 1))
                  for o, t in zip(onsets, timings)]
        return Grid("round", tr, tuple(t.frame_offset for t in timings), tuple(t.n_volumes for t in timings),
                    max_error=float(max((e.max() for e in errors if len(e)), default=0.0)),
                    resampled=tuple(False for _ in timings))
    best = (np.inf, None)
    for d in ([float(step)] if step else _candidate_steps(tr)):
        phases = [_best_phase(o, d) for o in onsets]
        worst = max(err for _, err in phases)
        if worst < best[0]:
            best = (worst, d)
        if worst <= tolerance:
            return _resampled_grid(d, phases, onsets, timings, worst, tolerance)
    raise OnsetGridError(
        f"no time grid puts every onset within {tolerance:g} s: the best step, {best[1]:.4f} s, leaves "
        f"{best[0]:.3f} s (TR {tr:g} s, steps tried: {'the one given' if step else 'TR·a/b down to TR/4'}). "
        f"Fix: use onsets='round' (records the rounding error), raise the tolerance, or give the step")


def _resampled_grid(d: float, phases: list[tuple[float, float]], onsets: Sequence[np.ndarray],
                    timings: Sequence[RunTiming], worst: float, tolerance: float) -> Grid:
    starts, lengths, moved = [], [], []
    for (phase, _), o, t in zip(phases, onsets, timings):
        first = min(t.frame_offset, float(o.min()) if len(o) else t.frame_offset)
        start = phase + d * np.ceil((first - phase - 1e-9) / d)
        last = t.frame_times[-1]
        n = int(np.floor((last - start) / d + 1e-9)) + 1
        starts.append(float(start))
        lengths.append(n)
        moved.append(not (abs(d - t.tr) < 1e-9 and abs(start - t.frame_offset) < 1e-9 and n == t.n_volumes))
    return Grid("resample", d, tuple(starts), tuple(lengths), max_error=worst, tolerance=tolerance,
                resampled=tuple(moved))


def build_design(trials: Sequence[pd.DataFrame], grid: Grid, run_keys: Sequence[str] | None = None
                 ) -> tuple[list[np.ndarray], pd.DataFrame, list[str]]:
    """GLMsingle's per-run onset matrices and the trial table.

    Conditions are the distinct stimuli, in order of first appearance (run by run, by onset): a
    repeated image is a repeated condition, which GLMsingle's cross-validation needs.

    Parameters
    ----------
    trials : list of DataFrame
        Per run, from :func:`event_trials`.
    grid : Grid
    run_keys : list of str, optional
        Run names for the trial table.

    Returns
    -------
    designs : list of arrays of shape (grid.lengths[r], n_conditions), uint8
        1 at each trial's onset row.
    table : DataFrame
        One row per trial: ``run``, ``run_key``, ``trial``, ``onset``, ``duration``, ``row`` (design row),
        ``onset_error`` (s, onset minus its row's time), ``condition``, ``stimulus``.
    conditions : list of str
        The stimulus of each condition.

    Raises
    ------
    EventsError
        Two trials of one condition fall on the same design row (they would merge into one).
    """
    keys = list(run_keys) if run_keys is not None else [str(r) for r in range(len(trials))]
    order: dict[str, int] = {}
    for t in trials:
        for s in t["stimulus"]:
            order.setdefault(s, len(order))
    frames, designs = [], []
    for r, t in enumerate(trials):
        rows = np.clip(np.rint((t["onset"].to_numpy() - grid.starts[r]) / grid.step), 0, grid.lengths[r] - 1)
        rows = rows.astype(np.int64)
        cond = np.array([order[s] for s in t["stimulus"]], dtype=np.int64)
        pairs = rows * len(order) + cond
        if len(np.unique(pairs)) < len(pairs):
            dup = pd.Series(pairs).duplicated(keep=False).to_numpy()
            raise EventsError(f"run {keys[r]}: trials of one stimulus at onsets {listing(t['onset'][dup].round(3))} "
                              f"fall on the same design row (step {grid.step:.4f} s) and would merge. Fix: use "
                              f"onsets='resample' or a finer step")
        design = np.zeros((grid.lengths[r], len(order)), np.uint8)
        design[rows, cond] = 1
        designs.append(design)
        frames.append(pd.DataFrame({
            "run": r, "run_key": keys[r], "trial": np.arange(len(t)), "onset": t["onset"].to_numpy(),
            "duration": t["duration"].to_numpy(), "row": rows,
            "onset_error": t["onset"].to_numpy() - (grid.starts[r] + grid.step * rows),
            "condition": cond, "stimulus": t["stimulus"].to_numpy()}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return designs, table, list(order)
