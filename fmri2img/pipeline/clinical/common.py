"""What the clinical stages share: the decoded input, its groups, the fitted models it goes through.

:mod:`~fmri2img.pipeline.clinical.decode`, :mod:`~fmri2img.pipeline.clinical.align`,
:mod:`~fmri2img.pipeline.clinical.scores` and :mod:`~fmri2img.pipeline.clinical.imagery` all stand
on this module and none of them imports another back.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fmri2img.pipeline.reconstruct import RunSpec, recon_group
from fmri2img.pipeline.regress import load_model, model_group
from fmri2img.storage import decoded as inputs
from fmri2img.storage import nsd, schema
from fmri2img.storage.store import Store

#: calibrations that keep a trial's prediction independent of the other trials decoded with it
CALIBRATIONS = {
    "loo": "leave-one-out: each feature's location and spread from the training images' closed-form "
           "leave-one-out predictions (non-transductive)",
    "none": "none: the ridge's raw predictions",
}
UNKNOWN_IMAGE = -1


class DecodeError(ValueError):
    """A decode cannot run as asked; the message says why and how to fix it."""


@dataclass(frozen=True)
class DecodeInput:
    """The rows to decode: masked betas and what is known about each trial."""

    name: str
    url: str
    fmri: np.ndarray  # (n, n_voxels) float32, percent signal change
    trials: np.ndarray  # (n,) 1-based row of the input
    images: np.ndarray  # (n,) 0-based NSD-73k id or UNKNOWN_IMAGE
    images_from: str
    #: (n,) row of ``shown_group`` (a store group with ``images``) each trial showed, when the pictures are not
    #: all NSD's: a BIDS participant's own stimuli (pipeline.clinical.participant); None: ``images`` say it
    shown: np.ndarray | None = None
    shown_group: str = ""

    @property
    def known(self) -> np.ndarray:
        """(n,) bool: the picture the trial showed is known (and can be shown and scored)."""
        return self.shown >= 0 if self.shown is not None else self.images >= 0

    @property
    def seed_ids(self) -> np.ndarray:
        """Per-row key of the randomness: the image id when known (as the reconstruct stage), else the trial."""
        return np.where(self.images >= 0, self.images, self.trials).astype(np.int64)

    @property
    def key(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.fmri).tobytes())
        for a in (self.trials, self.images, *(() if self.shown is None else (self.shown,))):
            h.update(np.asarray(a, np.int64).tobytes())
        return h.hexdigest()[:16]


def group(name: str, *parts: str) -> str:
    """``decoded/<name>/<parts...>``."""
    return "/".join(("decoded", name, *parts))


def subject_space(store: Store, subject: int, mask_url: str | None = None) -> inputs.SubjectSpace:
    """The fitted subject's voxels, trials per session and nsdgeneral mask (default: from its ingest source)."""
    bgroup = schema.subject_group(subject, "betas")
    if not store.has_group(bgroup):
        raise DecodeError(f"subject {subject} is not in the store {store.describe()}: ingest and fit it first "
                          f"(fmri2img run CONFIG with stages ingest, features, regress)")
    g = store.group(bgroup)
    ijk = np.stack([np.asarray(g[f"voxel_{c}"][:], np.int64) for c in "ijk"])
    source = g.attrs.get("source", "")
    mask = mask_url or (nsd.NSDLayout(source).roi(subject, "nsdgeneral") if source else "")
    return inputs.SubjectSpace(int(subject), ijk, int(g.attrs.get("trials_per_session", 750)), mask)


def load_models(store: Store, subject: int, features: Sequence[str], calibration: str) -> dict:
    """The subject's fitted models for ``features``, set to ``calibration``; one error naming all missing."""
    if calibration not in CALIBRATIONS:
        raise DecodeError(f"calibration {calibration!r} is not available for decode: expected one of "
                          f"{list(CALIBRATIONS)} ('test_batch' rescales by the batch decoded together, so a "
                          f"trial's picture would depend on the other scans)")
    missing = [f for f in features if not store.is_complete(model_group(subject, f))]
    if missing:
        raise DecodeError(f"subject {subject} has no fitted model for {missing} in {store.describe()}: fit them "
                          f"with the regress stage (fmri2img run CONFIG --stages features,regress, with {missing} "
                          f"among the [features] extractors)")
    models = {}
    for f in features:
        est = load_model(store, subject, f)
        est.calibration = calibration
        models[f] = est
    return models


def random_weights(run: RunSpec) -> bool:
    """Whether any model of ``run`` has seeded random weights (its pictures test plumbing, not decoding)."""
    return bool(run.vd.get("tiny") or any(run.extractor_options.get(n, {}).get("tiny")
                                          for n in run.features_needed()))


def stored_run(store: Store, subject: int, name: str) -> RunSpec:
    """The :class:`RunSpec` the reconstruct stage recorded for ``recon/subjNN/<name>`` (same models, seed)."""
    g = recon_group(subject, name, "stage1")
    if not store.has_group(g) or "run" not in store.group(g).attrs:
        raise DecodeError(f"run {name!r} was never reconstructed for subject {subject} in {store.describe()}: "
                          f"reconstruct it first, or give a config whose [reconstruct.runs] defines it (--config)")
    return RunSpec(**json.loads(store.group(g).attrs["run"]))
