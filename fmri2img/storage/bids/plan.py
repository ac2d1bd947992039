"""Everything the GLM stage needs from a BIDS dataset, checked before anything is written.

:func:`prepare_glm_inputs` reads only small files (sidecars, events, confounds tables, NIfTI
headers, brain masks) and raises the first bad input as one :class:`BIDSError` subclass; when it
returns, every run has its preprocessed BOLD, mask and confounds, the TRs agree, the events fit the
runs, and the confound strategy's columns exist. The time series themselves are read later, a run
(or a voxel block of it) at a time, by :meth:`GLMInputs.read_run`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.storage.bids.confounds import ConfoundStrategy, confound_regressors, parse_strategy, strategy_record
from fmri2img.storage.bids.dataset import BIDSDataset, BoldRun, _label, open_bids
from fmri2img.storage.bids.design import Grid, RunTiming, build_design, choose_grid, event_trials, run_timing
from fmri2img.storage.bids.errors import BIDSFormatError, BIDSSelectionError, listing
from fmri2img.storage.bids.nifti import NiftiInfo, mask_voxels, read_mask, read_nifti_info, read_timeseries
from fmri2img.storage.bids.nifti import resample_matrix
from fmri2img.storage.bids.tables import read_json, read_tsv

logger = logging.getLogger(__name__)

__all__ = ["RunInputs", "GLMInputs", "prepare_glm_inputs"]


@dataclass(frozen=True)
class RunInputs:
    """One run, ready for the GLM.

    Attributes
    ----------
    run : BoldRun
    info : NiftiInfo
        The preprocessed BOLD's header.
    timing : RunTiming
    design : array of shape (n_rows, n_conditions), uint8
        GLMsingle's onset matrix on the design grid.
    confounds : array of shape (n_rows, n_regressors), float64
        Nuisance regressors (GLMsingle's ``extra_regressors``), on the design grid.
    confound_names : list of str
    resample : array of shape (n_rows, n_volumes) or None
        The interpolation from the volumes to the design grid (None: the grid is the volumes).
    """

    run: BoldRun
    info: NiftiInfo
    timing: RunTiming
    design: np.ndarray = field(repr=False)
    confounds: np.ndarray = field(repr=False)
    confound_names: list[str] = field(repr=False)
    resample: np.ndarray | None = field(repr=False)


@dataclass
class GLMInputs:
    """A participant's selected runs with designs, confounds and a common voxel set.

    Attributes
    ----------
    dataset : BIDSDataset
    participant, task, space, stim_column : str
    session : str or None
    runs : list of RunInputs
    grid : Grid
        The design grid (``grid.step`` is the TR to give GLMsingle).
    trials : DataFrame
        One row per trial (see :func:`~fmri2img.storage.bids.design.build_design`).
    conditions : list of str
        Stimulus of each design column.
    stimdur : float
        The trials' median duration (s), GLMsingle's ``stimdur``.
    mask : array of shape (X, Y, Z), bool
        Voxels inside every run's brain mask.
    affine : array of shape (4, 4)
    voxels : array of shape (n_voxels, 3), int64
        (i, j, k) of the mask's voxels, C order: the voxel axis of every array read.
    strategy : ConfoundStrategy
    """

    dataset: BIDSDataset
    participant: str
    session: str | None
    task: str
    space: str
    stim_column: str
    runs: list[RunInputs]
    grid: Grid
    trials: pd.DataFrame
    conditions: list[str]
    stimdur: float
    mask: np.ndarray
    affine: np.ndarray
    voxels: np.ndarray
    strategy: ConfoundStrategy

    @property
    def tr(self) -> float:
        """The design's time step (s): GLMsingle's ``tr``."""
        return self.grid.step

    def read_run(self, r: int, voxels: slice | np.ndarray | None = None) -> np.ndarray:
        """Run ``r``'s time series on the design grid, streamed volume by volume.

        Parameters
        ----------
        r : int
            Index into :attr:`runs`.
        voxels : slice or array of int, optional
            A block of :attr:`voxels` (positions along the voxel axis); default all.

        Returns
        -------
        series : array of shape (grid.lengths[r], n_selected), float32
        """
        run = self.runs[r]
        chosen = self.voxels if voxels is None else self.voxels[voxels]
        path = self.dataset.deriv_path(run.run.preproc)
        return read_timeseries(self.dataset.deriv_fs, path, chosen, resample=run.resample, info=run.info)

    def summary(self) -> dict[str, Any]:
        """What was read and decided, as plain values (for attrs and provenance)."""
        return dict(
            participant=self.participant, session=self.session, task=self.task, space=self.space,
            stim_column=self.stim_column, runs=[r.run.key for r in self.runs], n_voxels=int(len(self.voxels)),
            n_trials=int(len(self.trials)), n_conditions=len(self.conditions),
            onsets=self.grid.method, tr=self.grid.step, acquisition_tr=self.runs[0].timing.tr,
            grid_starts=list(self.grid.starts), grid_lengths=list(self.grid.lengths),
            max_onset_error=self.grid.max_error, tolerance=self.grid.tolerance, stimdur=self.stimdur,
            durations=[float(self.trials["duration"].min()), float(self.trials["duration"].max())],
            frame_offsets=[r.timing.frame_offset for r in self.runs],
            slice_timing_corrected=[r.timing.slice_timing_corrected for r in self.runs],
            slice_spread=max(r.timing.slice_spread for r in self.runs),
            confounds=strategy_record(self.strategy), confound_names=[r.confound_names for r in self.runs],
            files=[dict(bold=r.run.bold, events=r.run.events, preproc=r.run.preproc, mask=r.run.mask,
                        confounds=r.run.confounds) for r in self.runs],
        )


def prepare_glm_inputs(bids: BIDSDataset | str, participant: str, *, session: str | None = None,
                       task: str | None = None, space: str = "T1w", stim_column: str = "stim_file",
                       confounds: str | ConfoundStrategy | None = "none", onsets: str = "round",
                       step: float | None = None, tolerance: float = 0.02, frame_offset: float | None = None,
                       storage_options: Mapping[str, Any] | None = None, derivatives: str | None = None) -> GLMInputs:
    """Find, read and check everything a GLM of one participant's runs needs.

    Parameters
    ----------
    bids : BIDSDataset or str
        An opened dataset, or its URL (opened with ``storage_options`` and ``derivatives``).
    participant : str
        Label, with or without ``sub-``.
    session, task : str, optional
        Labels; the task may be left out when the participant has runs of one task only.
    space : str
        fMRIPrep output space of the preprocessed BOLD and mask (``T1w``: the person's own voxels).
    stim_column : str
        The events column naming the stimulus (``stim_file``, a 73k id column, ``trial_type``, ...).
    confounds : str or ConfoundStrategy
        See :mod:`fmri2img.storage.bids.confounds` (``none``, ``simple``, ``motion=basic+high_pass``, ...).
    onsets : {"round", "resample"}
        See :mod:`fmri2img.storage.bids.design`.
    step, tolerance : float
        ``resample``: the grid step (default: chosen) and the largest onset error allowed (s).
    frame_offset : float, optional
        The time volume 0 represents (s); default from the slice-timing metadata.

    Raises
    ------
    BIDSError
        One subclass per bad input: NotBIDSError, BIDSSelectionError, DerivativesMissingError,
        EventsError (OnsetGridError), MetadataError (TRMismatchError), ConfoundsError, BIDSFormatError.
    """
    dataset = bids if isinstance(bids, BIDSDataset) else open_bids(bids, storage_options, derivatives=derivatives)
    participant, session, task = _label(participant, "sub"), _label(session, "ses"), _label(task, "task")
    strategy = parse_strategy(confounds)
    if task is None:
        tasks = dataset.tasks(participant, session)
        if len(tasks) > 1:
            raise BIDSSelectionError(f"sub-{participant} has BOLD runs of several tasks ({listing(tasks)}); a GLM "
                                     f"fits one task. Fix: pass --task with one of them")
        task = tasks[0] if tasks else None
    runs = dataset.runs(participant, session=session, task=task, space=space)
    checked = [_check_run(dataset, run, stim_column, strategy, frame_offset) for run in runs]
    timings = [c[1] for c in checked]
    grid = choose_grid([c[2]["onset"].to_numpy() for c in checked], timings, onsets, step=step, tolerance=tolerance)
    designs, trials, conditions = build_design([c[2] for c in checked], grid, [r.key for r in runs])
    mask, affine = _common_mask(dataset, checked)
    inputs = []
    for r, (run, timing, _, info, regressors, names) in enumerate(checked):
        resample = resample_matrix(timing.frame_times, grid.times(r)) if grid.resampled[r] else None
        inputs.append(RunInputs(run=run, info=info, timing=timing, design=designs[r],
                                confounds=regressors if resample is None else resample @ regressors,
                                confound_names=names, resample=resample))
    logger.info("sub-%s task %s: %d runs, %d trials, %d conditions, onsets by %s (largest error %.3f s)",
                participant, task, len(inputs), len(trials), len(conditions), grid.method, grid.max_error)
    return GLMInputs(dataset=dataset, participant=participant, session=session, task=runs[0].task, space=space,
                     stim_column=stim_column, runs=inputs, grid=grid, trials=trials, conditions=conditions,
                     stimdur=float(np.median(trials["duration"])), mask=mask, affine=affine,
                     voxels=mask_voxels(mask), strategy=strategy)


def _check_run(dataset: BIDSDataset, run: BoldRun, stim_column: str, strategy: ConfoundStrategy,
               frame_offset: float | None) -> tuple:
    preproc = dataset.shown(run.preproc, derivative=True)
    info = read_nifti_info(dataset.deriv_fs, dataset.deriv_path(run.preproc))
    if len(info.shape) != 4:
        raise BIDSFormatError(f"{preproc} has shape {info.shape}; expected a 4-D time series. Fix: use fMRIPrep's "
                              f"*_desc-preproc_bold.nii.gz")
    timing = run_timing(run.metadata, run.preproc_metadata, info.tr, info.n_volumes,
                        where=dataset.shown(run.bold), frame_offset=frame_offset)
    events = dataset.shown(run.events)
    trials = event_trials(read_tsv(dataset.fs, dataset.path(run.events)), stim_column, timing, where=events)
    where = dataset.shown(run.confounds, derivative=True)
    table = read_tsv(dataset.deriv_fs, dataset.deriv_path(run.confounds))
    if len(table) != info.n_volumes:
        raise BIDSFormatError(f"{where} has {len(table)} rows but {preproc} has {info.n_volumes} volumes; the "
                              f"confounds must have one row per volume. Fix: use the confounds fMRIPrep wrote "
                              f"with this preprocessed BOLD")
    meta = read_json(dataset.deriv_fs, dataset.deriv_path(run.confounds_json)) if run.confounds_json else None
    regressors, names = confound_regressors(table, strategy, meta, where=where)
    return run, timing, trials, info, regressors, names


def _common_mask(dataset: BIDSDataset, checked: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    common, affine, first = None, None, None
    for run, _, _, info, _, _ in checked:
        mask, mask_info = read_mask(dataset.deriv_fs, dataset.deriv_path(run.mask))
        where = dataset.shown(run.mask, derivative=True)
        if mask.shape != info.shape[:3] or not np.allclose(mask_info.affine, info.affine, atol=1e-3):
            raise BIDSFormatError(f"{where} is {mask.shape} voxels but its BOLD is {info.shape[:3]} (or their "
                                  f"affines differ): mask and BOLD must share a space. Fix: use the mask of the same "
                                  f"space ({run.space}) as the BOLD")
        if common is None:
            common, affine, first = mask, info.affine, run.key
        elif mask.shape != common.shape or not np.allclose(info.affine, affine, atol=1e-3):
            raise BIDSFormatError(f"{where} is on another voxel grid than run {first} ({mask.shape} vs "
                                  f"{common.shape}); the runs of a GLM must share voxels. Fix: use one output "
                                  f"space for all runs (fMRIPrep resamples every run to T1w)")
        else:
            common = common & mask
    if common is None or not common.any():
        raise BIDSFormatError("the runs' brain masks have no voxel in common. Fix: check the masks")
    return common, affine
