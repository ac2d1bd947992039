"""What the glm stage fits: a session's runs, from arrays, NSD's time-series files or a BIDS dataset.

Every kind of input gives the same small interface (:func:`fmri2img.pipeline.glm.stage.glm_session`
reads nothing else): ``runs`` (each with ``design``, an (n_volumes_r, n_conditions) 0/1 onset
matrix, and ``confounds``, an (n_volumes_r, k) array or None), ``tr`` and ``stimdur`` (seconds),
``voxels`` ((n_voxels, 3) NIfTI i, j, k), ``volume_shape``, ``affine``, ``condition_images()`` (0-based NSD-73k
id of each design column, -1 when unknown), ``read_run(r, voxels=None)`` ((n_volumes_r,
n_voxels) float32, read on a worker) and ``summary()`` (plain values for provenance and for the
resume key). Each is picklable: it holds URLs and small arrays, never the time series.

- :class:`ArrayInputs`: runs held in memory (tests, notebooks);
- :class:`NSDInputs`: a session of NSD's ``nsddata_timeseries`` layout
  (:mod:`fmri2img.storage.nsd.timeseries`);
- BIDS datasets with fMRIPrep derivatives: :class:`~fmri2img.pipeline.glm.bids_inputs.BIDSInputs` around
  :func:`fmri2img.storage.bids.prepare_glm_inputs`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RunDesign", "ArrayInputs", "NSDInputs"]


@dataclass(frozen=True, eq=False)
class RunDesign:
    """One run's design: its onset matrix and nuisance regressors."""

    design: np.ndarray
    confounds: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class ArrayInputs:
    """A session held in memory: one (n_volumes_r, n_voxels) array per run.

    Parameters
    ----------
    data : list of arrays of shape (n_volumes_r, n_voxels)
    designs : list of arrays of shape (n_volumes_r, n_conditions)
    tr, stimdur : float
    voxels : array of shape (n_voxels, 3), optional
        NIfTI i, j, k of each voxel (default: a line of voxels).
    images : array of shape (n_conditions,), optional
        0-based NSD-73k id of each condition (default unknown, -1).
    confounds : list of arrays of shape (n_volumes_r, k) or None, optional
    name : str
        Shown in provenance.
    """

    data: list
    designs: list
    tr: float
    stimdur: float
    voxels: np.ndarray | None = None
    images: np.ndarray | None = None
    confounds: list | None = None
    name: str = "arrays"
    volume_shape: tuple = field(default=())

    def __post_init__(self) -> None:
        n = np.asarray(self.data[0]).shape[1]
        if self.voxels is None:
            object.__setattr__(self, "voxels", np.stack([np.arange(n), np.zeros(n, int), np.zeros(n, int)], 1))
        if not self.volume_shape:
            object.__setattr__(self, "volume_shape", tuple(int(v) + 1 for v in np.max(self.voxels, axis=0)))

    @property
    def affine(self) -> np.ndarray:
        return np.eye(4)

    @property
    def runs(self) -> list[RunDesign]:
        extra = self.confounds or [None] * len(self.designs)
        return [RunDesign(np.asarray(d), None if c is None else np.asarray(c)) for d, c in zip(self.designs, extra)]

    def read_run(self, r: int, voxels: Any = None) -> np.ndarray:
        data = np.asarray(self.data[r], dtype=np.float32)
        return data if voxels is None else data[:, voxels]

    def condition_images(self) -> np.ndarray:
        n = np.asarray(self.designs[0]).shape[1]
        return np.full(n, -1, np.int64) if self.images is None else np.asarray(self.images, np.int64)

    def summary(self) -> dict:
        h = hashlib.sha256()
        for a in self.data:
            h.update(np.ascontiguousarray(a).tobytes())
        return {"kind": "arrays", "name": self.name, "runs": len(self.data), "sha256": h.hexdigest()[:16],
                "tr": float(self.tr), "stimdur": float(self.stimdur)}


def _onset_matrix(design: np.ndarray, conditions: np.ndarray) -> np.ndarray:
    """NSD design rows (1-based 73k id at a trial's onset, else 0) → (n_rows, n_conditions) 0/1."""
    out = np.zeros((len(design), len(conditions)), np.uint8)
    rows = np.flatnonzero(design)
    out[rows, np.searchsorted(conditions, design[rows] - 1)] = 1
    return out


@dataclass(frozen=True, eq=False)
class NSDInputs:
    """A session of NSD's time-series layout (``nsddata_timeseries``), from any fsspec URL.

    Runs are the session's task runs (a 14-run session's resting-state runs 1 and 14 are left
    out, as NSD's own GLM does); each run keeps its design's rows (NSD: 225 of 226 volumes, the
    trailing volume dropped as NSD's GLM does); the TR is the runs' NIfTI header's; the stimulus
    lasts 3 s (:data:`fmri2img.storage.nsd.timeseries.STIMULUS_SECONDS`); the voxels are the
    subject's brain mask (``nsddata/ppdata/subjNN/<space>/brainmask.nii.gz``, or ``mask_url``).
    Conditions are the session's distinct images (the design's 73k ids), in ascending id order.
    Build it with :meth:`open`.
    """

    url: str
    storage_options: dict = field(repr=False)
    subject: int
    session: int
    space: str
    mask_url: str
    session_runs: Any
    mask: np.ndarray
    images: np.ndarray
    sizes: tuple

    @classmethod
    def open(cls, url: str, subject: int, session: int, *, storage_options: dict | None = None,
             space: str = "func1pt8mm", mask_url: str = "") -> "NSDInputs":
        """Read and check a session's headers, designs, mask and file sizes (a few small reads; nothing is written)."""
        from fmri2img.storage import nsd, urls
        from fmri2img.storage.nsd import timeseries as ts
        from fmri2img.storage.nsd.headers import check_nifti_file

        options = dict(storage_options or {})
        fs, root = urls.filesystem(url, options or None)
        layout = ts.TimeseriesLayout(root, space)
        if mask_url:
            mfs, mpath = urls.filesystem(mask_url, options or None)
        else:
            mfs, mpath = fs, layout.brainmask(subject)
        mask = nsd.read_mask(mfs, mpath)
        runs = ts.read_session_runs(fs, layout, subject, session, mask_shape=mask.shape)
        task = runs.task_runs
        for run in task:  # whole files: the gzip trailer's size matches the header (a download cut short fails here)
            check_nifti_file(fs, run.path, what="run time series", fix="download the session's time series again")
        images = np.unique(np.concatenate([r.design[r.design > 0] for r in task]) - 1).astype(np.int64)
        sizes = tuple(int(fs.size(r.path)) for r in task)
        return cls(url, options, int(subject), int(session), space, mask_url, runs, mask, images, sizes)

    @property
    def runs(self) -> list[RunDesign]:
        return [RunDesign(_onset_matrix(r.design, self.images)) for r in self.session_runs.task_runs]

    @property
    def tr(self) -> float:
        return float(self.session_runs.tr)

    @property
    def stimdur(self) -> float:
        from fmri2img.storage.nsd.timeseries import STIMULUS_SECONDS

        return float(STIMULUS_SECONDS)

    @property
    def voxels(self) -> np.ndarray:
        return np.argwhere(self.mask).astype(np.int64)

    @property
    def volume_shape(self) -> tuple:
        return tuple(int(s) for s in self.mask.shape)

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.session_runs.runs[0].header.affine, dtype=float)

    def condition_images(self) -> np.ndarray:
        return self.images

    def read_run(self, r: int, voxels: Any = None) -> np.ndarray:
        from fmri2img.storage import urls
        from fmri2img.storage.nsd import timeseries as ts

        run = self.session_runs.task_runs[r]
        fs, _ = urls.filesystem(self.url, dict(self.storage_options) or None)
        return ts.read_run(fs, run.path, self.mask, block=voxels, n_volumes=run.n_rows)

    def summary(self) -> dict:
        from fmri2img.storage import secrets

        return {"kind": "nsd-timeseries", "source": secrets.redact(self.url), "subject": self.subject,
                "session": self.session, "space": self.space, "mask": secrets.redact(self.mask_url) or "brainmask",
                "runs": [int(r.run) for r in self.session_runs.task_runs], "bytes": list(self.sizes),
                "tr": self.tr, "voxels": int(self.mask.sum())}
