"""A BIDS session with fMRIPrep derivatives as the glm stage's input (:func:`~.stage.glm_session`).

:class:`BIDSInputs` wraps what :func:`fmri2img.storage.bids.prepare_glm_inputs` checked and read (the
runs' designs on their grid, confounds as extra regressors, the runs' common brain mask, the TR of
the design grid, the trials' median duration as ``stimdur``) and gives it the interface of
:mod:`fmri2img.pipeline.glm.inputs`; ``condition_images()`` are the store's NSD ids of the
conditions' stimuli, matched by pixels (:mod:`fmri2img.pipeline.glm.stimuli`), -1 for images the
store does not hold. The participant keeps their own voxels (the mask's, in the fMRIPrep space
asked for): nothing is resampled to an NSD subject's space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fmri2img.pipeline.glm.inputs import RunDesign

__all__ = ["BIDSInputs"]


@dataclass(frozen=True, eq=False)
class BIDSInputs:
    """One BIDS session (or a dataset without sessions) of one participant and task.

    Parameters
    ----------
    prepared : fmri2img.storage.bids.GLMInputs
        The checked runs (:func:`fmri2img.storage.bids.prepare_glm_inputs`).
    images : int array of shape (n_conditions,)
        0-based NSD-73k id of each condition's stimulus, -1 when it is not one of the store's.
    source : str
        The dataset's URL, redacted (provenance).
    """

    prepared: Any
    images: np.ndarray
    source: str = ""

    @property
    def runs(self) -> list[RunDesign]:
        out = []
        for run in self.prepared.runs:
            confounds = run.confounds if run.confounds is not None and run.confounds.shape[1] else None
            out.append(RunDesign(np.asarray(run.design), None if confounds is None else np.asarray(confounds)))
        return out

    @property
    def tr(self) -> float:
        return float(self.prepared.tr)

    @property
    def stimdur(self) -> float:
        return float(self.prepared.stimdur)

    @property
    def voxels(self) -> np.ndarray:
        return np.asarray(self.prepared.voxels, np.int64)

    @property
    def volume_shape(self) -> tuple:
        return tuple(int(s) for s in self.prepared.mask.shape)

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.prepared.affine, dtype=float)

    @property
    def conditions(self) -> list[str]:
        """The stimulus of each design column."""
        return list(self.prepared.conditions)

    def condition_images(self) -> np.ndarray:
        return np.asarray(self.images, np.int64)

    def read_run(self, r: int, voxels: Any = None) -> np.ndarray:
        return self.prepared.read_run(r, voxels)

    def summary(self) -> dict:
        return {"kind": "bids", "source": self.source, **self.prepared.summary(),
                "images": [int(i) for i in self.images]}
