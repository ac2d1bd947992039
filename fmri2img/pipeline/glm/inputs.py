"""What the glm stage fits: a session's runs, from arrays, NSD's time-series files or a BIDS dataset.

Every kind of input gives the same small interface (:func:`fmri2img.pipeline.glm.stage.glm_session`
reads nothing else): ``runs`` (each with ``design``, an (n_volumes_r, n_conditions) 0/1 onset
matrix, and ``confounds``, an (n_volumes_r, k) array or None), ``tr`` and ``stimdur`` (seconds),
``voxels`` ((n_voxels, 3) NIfTI i, j, k), ``volume_shape``, ``condition_images()`` (0-based NSD-73k
id of each design column, -1 when unknown), ``read_run(r, voxels=None)`` ((n_volumes_r,
n_voxels) float32, read on a worker) and ``summary()`` (plain values for provenance and for the
resume key). Each is picklable: it holds URLs and small arrays, never the time series.

- :class:`ArrayInputs`: runs held in memory (tests, notebooks);
- :class:`NSDInputs`: a session of NSD's ``nsddata_timeseries`` layout
  (:mod:`fmri2img.storage.nsd.timeseries`);
- BIDS datasets with fMRIPrep derivatives: :class:`BIDSInputs` around
  :func:`fmri2img.storage.bids.prepare_glm_inputs`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RunDesign", "ArrayInputs"]


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
