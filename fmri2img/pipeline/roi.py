"""The ROI analysis stage: what does each brain region "see"?

For each of the 13 ROI masks of ``subjects/subjNN/rois`` (V1–V4 from prf-visualrois,
floc-faces/words/places/bodies, eccentricity bands), the indicator pattern is pushed
through the fitted models in kernel form (no voxel × target weights), scaled as
Brain-Diffuser does (:mod:`fmri2img.ridge.roi`), and decoded by a reconstruction run
(stage 1, and stage 2 when the run has one).  Writes ``roi/subjNN/features/<name>``
(roi × feature dims) and ``roi/subjNN/<run>/{stage1,final}`` (roi × y × x × rgb), plus
PNGs ``roi/subjNN/<run>/<part>/<roi>.png`` in the outputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Mapping

import dask
import numpy as np
import xarray as xr

from fmri2img.storage import secrets
from fmri2img.pipeline.reconstruct import STAGE1, RunSpec, part_provenance, run_stage2
from fmri2img.pipeline.regress import _aligned_targets, load_model, model_group
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.ridge.roi import CLIP_SCALES, roi_clip_embeddings, roi_vdvae_latents
from fmri2img.storage import schema
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Region, Store

logger = logging.getLogger(__name__)


def roi_group(subject: int, *parts: str) -> str:
    return "/".join([f"roi/{schema.subject_key(subject)}", *parts])


def _train_stats(store: Store, subject: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    train_ids = store.open_dataset(schema.subject_group(subject, "train")).image.values
    _, Y, _, _ = _aligned_targets(store, name, train_ids, subject)
    Y = Y.reshape(Y.shape[0], -1).astype(np.float64)
    mean, std = dask.compute(Y.mean(axis=0), Y.std(axis=0))
    return np.asarray(mean), np.asarray(std)


def synthetic_features(store: Store, subject: int, name: str, masks: np.ndarray) -> np.ndarray:
    """ROI patterns pushed through the model of ``name`` and scaled (roi × feature dims)."""
    est = load_model(store, subject, name)
    pushed, intercept = dask.compute(est.push_pattern(masks.astype(np.float32)), est.intercept_)
    pushed, intercept = np.asarray(pushed), np.asarray(intercept)
    shape = pushed.shape
    if name in CLIP_SCALES:
        return roi_clip_embeddings(pushed, intercept, CLIP_SCALES[name])
    mean, std = _train_stats(store, subject, name)
    if name == "vdvae":
        return roi_vdvae_latents(pushed.reshape(len(masks), -1), intercept.ravel(), mean, std).reshape(shape)
    # other features (pixels): Brain-Diffuser's VDVAE recipe without its latent-specific norms —
    # z-score the pushed patterns across ROIs and give them the train features' mean and std
    flat = pushed.reshape(len(masks), -1).astype(np.float64)
    sd = flat.std(axis=0)
    z = (flat - flat.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return (z * std + mean).astype(np.float32).reshape(shape)


#: attribute of each ROI group: the identity of everything its content depends on
INPUTS_ATTR = "fmri2img_inputs"


def inputs_key(store: Store, subject: int, run: RunSpec, names: list[str], masks: np.ndarray) -> str:
    """A hash of what the ROI images of ``run`` depend on: the run's settings, the masks and the fits.

    The fits are identified by the salt regress records with each model (its options, features
    and train images), so a refit with other settings changes the key and the ROI work is redone.
    """
    h = hashlib.sha256(json.dumps(secrets.redact(dataclasses.asdict(run)), sort_keys=True, default=str).encode())
    h.update(json.dumps(names).encode())
    h.update(np.packbits(np.asarray(masks, dtype=bool)).tobytes())
    for name in sorted(run.features_needed()):
        group = model_group(subject, name)
        h.update(f"{name}={store.group(group).attrs.get('fmri2img_salt', '') if store.has_group(group) else ''}"
                 .encode())
    return h.hexdigest()[:16]


def _parts(run: RunSpec) -> list[str]:
    return ["stage1", "final"] if run.preset else ["stage1"]


def _finished(store: Store, subject: int, run: RunSpec, key: str) -> bool:
    groups = [roi_group(subject, run.name, p) for p in _parts(run)]
    return all(store.is_complete(g) and store.group(g).attrs.get(INPUTS_ATTR) == key for g in groups)


def roi_block(store: Store, subject: int, run: RunSpec, names: list[str], outputs: Outputs | None,
              key: str = "") -> dict:
    """Decode the synthetic ROI features of ``run`` (task)."""
    feats = {n: np.asarray(store.group(roi_group(subject, "features", n))["features"][:]) for n in
             run.features_needed()}
    ids = np.arange(len(names))  # seeds come from (run seed, ROI index)
    stage1 = STAGE1[run.stage1_kind](feats[run.stage1], ids, run)
    parts = {"stage1": stage1}
    if run.preset:
        parts["final"], _ = run_stage2(stage1, ids, {n: feats[n] for n in (run.vision, run.text) if n in feats}, run)
    provenance = part_provenance(run)
    for part, images in parts.items():
        group = roi_group(subject, run.name, part)
        ds = xr.Dataset({"images": (("roi", "y", "x", "rgb"), images)}, coords={"roi": ("roi", np.array(names, object))})
        region = [Region(0, "roi", 0, len(names), "all")]
        store.write_template(group, ds, region, attrs={"run": run.name, **provenance[part], INPUTS_ATTR: key})
        store.mark_done(group, region[0])
        if outputs is not None:
            outputs.write_pngs(f"roi/{schema.subject_key(subject)}/{run.name}/{part}", names, images)
    return {"rois": len(names), "parts": list(parts)}


def roi_analysis(store: Store, subject: int, run: RunSpec, *, client=None, outputs: Outputs | None = None,
                 progress: bool = True, config: Mapping[str, Any] | None = None) -> dict:
    """Synthetic fMRI of each ROI → features → images for one reconstruction run."""
    t0 = time.perf_counter()
    rois = store.open_dataset(schema.subject_group(subject, "rois"))
    names = [str(r) for r in rois.roi.values]
    if not names:
        raise ValueError(f"subjects/{schema.subject_key(subject)}/rois has no masks: the ROI files were missing at "
                         f"ingest (see its warnings); add them and re-run ingest")
    masks = np.asarray(rois.masks.values, dtype=bool)
    key = inputs_key(store, subject, run, names, masks)
    if _finished(store, subject, run, key):  # a rerun redoes nothing (the runner's promise)
        logger.info("ROI analysis of %s for subj%02d: finished with the same inputs, skipped", run.name, subject)
        return {"subject": int(subject), "run": run.name, "rois": len(names), "parts": _parts(run), "skipped": True,
                "seconds": round(time.perf_counter() - t0, 3)}
    attrs = {**schema.provenance(config=config), "rois": json.dumps(names)}
    for name in run.features_needed():
        values = synthetic_features(store, subject, name, masks)
        dims = ("roi", *[f"dim_{i}" for i in range(values.ndim - 1)])
        ds = xr.Dataset({"features": (dims, values)}, coords={"roi": ("roi", np.array(names, object))})
        region = [Region(0, "roi", 0, len(names), "all")]
        store.write_template(roi_group(subject, "features", name), ds, region, attrs=attrs)
        store.mark_done(roi_group(subject, "features", name), region[0])
    task = Task(f"{run.name}", roi_block, (store, subject, run, names, outputs, key))
    [result] = run_tasks([task], stage=f"roi-{schema.subject_key(subject)}", client=client, progress=progress)
    summary = {"subject": int(subject), "run": run.name, **result, "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("ROI analysis: %s", summary)
    return summary
