"""Ingest's betas from the glm stage: a session's chosen model read from ``subjects/subjNN/glm/sessionSS``.

When a subject's betas come from its own time series (``fmri2img glm``), ingest writes
``subjects/subjNN/betas`` and everything after it (train/test averages, ROI masks, stimuli)
exactly as for NSD's betas files, but reads each session's rows from the store's glm group:
the chosen model (``fithrf_glmdenoise_rr`` by default, GLMsingle's type D, the model NSD
released), at the ingest voxels (nsdgeneral), in float32 percent signal change, without the
int16 × 300 rounding of NSD's files. Each session's trials must show the images the NSD
design says, in the same order; every ingest voxel must be inside the glm's brain mask.
"""
from __future__ import annotations

import numpy as np

from fmri2img.storage import schema
from fmri2img.storage.store import Store

__all__ = ["GLM_MODELS", "GlmBetasError", "glm_session_group", "read_glm_betas", "glm_identity"]

#: the glm stage's models, GLMsingle's types B, C, D
GLM_MODELS = ("fithrf", "fithrf_glmdenoise", "fithrf_glmdenoise_rr")


class GlmBetasError(ValueError):
    """The glm stage's output cannot serve as the subject's betas; the message says why and the fix."""


def glm_session_group(subject: int, session: int) -> str:
    """``subjects/subjNN/glm/sessionSS`` (the glm stage's output)."""
    return schema.subject_group(subject, f"glm/session{int(session):02d}")


def _positions(store: Store, group: str, voxels: np.ndarray, volume_shape: tuple) -> np.ndarray:
    """Positions along the glm group's voxel axis of the flat C-order ``voxels``."""
    g = store.group(group)
    ijk = np.stack([np.asarray(g[f"voxel_{c}"][:], np.int64) for c in "ijk"])
    flat = np.ravel_multi_index(tuple(ijk), tuple(volume_shape))
    order = np.argsort(flat)
    at = np.searchsorted(flat[order], voxels)
    at = np.clip(at, 0, len(flat) - 1)
    missing = flat[order][at] != voxels
    if missing.any():
        raise GlmBetasError(f"{group}: {int(missing.sum())} of the subject's {len(voxels)} ingest voxels "
                            f"(nsdgeneral) are outside the brain mask the GLM was fitted on; fit the GLM with a mask "
                            f"that covers nsdgeneral (the subject's brainmask.nii.gz does)")
    return order[at]


def read_glm_betas(store: Store, subject: int, session: int, voxels: np.ndarray, volume_shape: tuple,
                   model: str, images: np.ndarray) -> np.ndarray:
    """One session's betas (n_trials, n_voxels) float32 from the glm group, checked against the design.

    Parameters
    ----------
    voxels : array of shape (n_voxels,)
        Flat C-order indices of the ingest voxels in the (X, Y, Z) volume.
    model : str
        One of :data:`GLM_MODELS`.
    images : array of shape (n_trials,)
        The session's 0-based 73k ids in trial order, from NSD's design (``nsd_expdesign.mat``).
    """
    group = glm_session_group(subject, session)
    if not store.is_complete(group):
        raise GlmBetasError(f"{group} is missing or unfinished in {store.describe()}: run `fmri2img glm` for "
                            f"subject {subject} session {session} first")
    g = store.group(group)
    models = [str(m) for m in g["model"][:]]
    if model not in models:
        raise GlmBetasError(f"{group} has no model {model!r}; it has {models} (set [glm] model to one of them)")
    found = np.asarray(g["image"][:], np.int64)
    if len(found) != len(images) or not np.array_equal(found, np.asarray(images, np.int64)):
        raise GlmBetasError(f"{group}: its {len(found)} trials do not show the images NSD's design gives session "
                            f"{session} ({len(images)} trials); the time series' design files and "
                            f"nsd_expdesign.mat must come from the same dataset")
    positions = _positions(store, group, np.asarray(voxels, np.int64), volume_shape)
    betas = np.asarray(g["betas"][models.index(model)], np.float32)
    return betas[:, positions]


def glm_identity(store: Store, subject: int, sessions, model: str) -> dict[str, str]:
    """Session label → what its betas come from (the glm group's template and inputs), for the resume check."""
    out = {}
    for s in sessions:
        group = glm_session_group(subject, s)
        attrs = store.group(group).attrs if store.has_group(group) else {}
        out[f"session-{int(s):02d}"] = f"glm:{model}:{attrs.get('fmri2img_template', 'missing')}"
    return out
