"""Ingest of NSD-Imagery (``fmri2img ingest --experiment nsdimagery``): betas, trial labels, targets.

For one subject, from the same kind of NSD tree the main ingest reads
(:mod:`fmri2img.storage.nsd.imagery` says which files and what is assumed about them):

* ``subjects/subjNN/imagery``: ``betas`` (trial, voxel) float32 percent signal change over the
  subject's nsdgeneral voxels (the same C-order voxels as ``subjects/subjNN/betas``, checked
  when the subject is already in the store), with per-trial coordinates ``run``, ``run_index``,
  ``task`` (vision / imagery / attention), ``stim_set`` (A / B / C), ``trial_in_run``, ``epoch``
  (stimulus, or cue / detection for attention), ``condition`` (the target's letter), ``cue``
  (the letter shown) and ``target`` (row of ``imagery/targets``, -1 if none);
* ``imagery/targets`` (shared by the subjects): ``images`` (target, y, x, rgb) uint8 at the
  side of the store's stimuli (425 without them), ``has_image``, ``condition``, ``stim_set``,
  ``file_name``, ``nsd_id``.

The betas file is read once, by one task (a subject's 720 betas are ~45 MB of float32 over
NSD's nsdgeneral). Each group has one region and a completion record, salted by everything
that decides its values (source, the betas file's size and ETag/mtime, the labels, the reading
options), so a rerun skips finished work and a changed input rewrites the whole group (a group
never mixes two inputs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Mapping

import numpy as np
import xarray as xr

from fmri2img.pipeline.ingest import resume as ingest_resume
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import nsd, schema
from fmri2img.storage.nsd import imagery as nsdi
from fmri2img.storage.source import Source
from fmri2img.storage.store import Region, Store

logger = logging.getLogger(__name__)

TARGETS = "imagery/targets"
#: bump when this ingest writes different values for the same files and options
FORMAT = 1
_LABELS = ("run", "task", "stim_set", "epoch", "condition", "cue")


class ImageryIngestError(ValueError):
    """NSD-Imagery input that cannot be ingested as asked; the message names the fix."""


def imagery_group(subject: int) -> str:
    """``subjects/subjNN/imagery``."""
    return schema.subject_group(subject, "imagery")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def betas_template(design: nsdi.ImageryDesign, target: np.ndarray, voxels: np.ndarray,
                   volume_shape: tuple[int, int, int]) -> xr.Dataset:
    """(trial, voxel) float32 betas in one chunk row, labelled per trial."""
    n = design.n_betas
    coords: dict[str, tuple] = {"trial": ("trial", np.arange(1, n + 1, dtype=np.int64)),
                                "run_index": ("trial", design.run_index.astype(np.int16)),
                                "trial_in_run": ("trial", design.trial.astype(np.int16)),
                                "target": ("trial", np.asarray(target, np.int64)),
                                **schema.voxel_coords(voxels, volume_shape)}
    coords.update({name: ("trial", np.asarray(getattr(design, name), dtype=object)) for name in _LABELS})
    ds = xr.Dataset({"betas": (("trial", "voxel"), schema.lazy_zeros((n, len(voxels)), (n, schema.VOXEL_CHUNK),
                                                                 np.float32))}, coords=coords)
    ds["betas"].attrs.update(units="percent signal change", long_name="NSD-Imagery single-trial betas (int16 ÷ 300)")
    ds["target"].attrs["long_name"] = "row of imagery/targets (-1: not among the targets)"
    return ds


def targets_template(targets: nsdi.ImageryTargets, side: int) -> xr.Dataset:
    n = len(targets.condition)
    ds = xr.Dataset(
        {"images": (("target", "y", "x", "rgb"), schema.lazy_zeros((n, side, side, 3), (n, side, side, 3), np.uint8)),
         "has_image": ("target", np.asarray([bool(f) for f in targets.file_name.tolist()]))},
        coords={"target": ("target", np.arange(n, dtype=np.int64)),
                "condition": ("target", np.asarray(targets.condition, dtype=object)),
                "stim_set": ("target", np.asarray(targets.stim_set, dtype=object)),
                "file_name": ("target", np.asarray(targets.file_name, dtype=object)),
                "nsd_id": ("target", np.asarray(targets.nsd_id, np.int64))})
    ds["images"].attrs.update(units="uint8 RGB", long_name="NSD-Imagery targets (zeros where has_image is false)")
    return ds


def _voxels(source: Source, store: Store, subject: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The subject's nsdgeneral voxels; refused when they differ from the store's main betas."""
    fs, root = source.filesystem()
    mask = nsd.read_mask(fs, nsd.NSDLayout(root).roi(subject, "nsdgeneral"))
    voxels = np.flatnonzero(mask.ravel(order="C")).astype(np.int64)
    shape = tuple(int(s) for s in mask.shape)
    if voxels.size == 0:
        raise ImageryIngestError(f"the nsdgeneral mask of subject {subject} in {source.safe_url} selects no voxel")
    main = schema.subject_group(subject, "betas")
    if store.has_group(main):
        g = store.group(main)
        ijk = np.stack([np.asarray(g[f"voxel_{c}"][:], np.int64) for c in "ijk"])
        if ijk.shape[1] != len(voxels) or not np.array_equal(np.ravel_multi_index(tuple(ijk), shape), voxels):
            raise ImageryIngestError(
                f"subject {subject}'s nsdgeneral mask in {source.safe_url} selects {len(voxels)} voxels, but "
                f"{main} in {store.describe()} holds {ijk.shape[1]} other voxel positions: ingest NSD-Imagery "
                f"from the tree the subject's NSD sessions came from (its nsdgeneral.nii.gz), so the fitted "
                f"models apply to it")
    return voxels, shape


def read_betas_task(store: Store, source: Source, subject: int, region: Region, voxels: np.ndarray,
                    volume_shape: tuple, n_betas: int, prefer: str, nan_policy: str,
                    betas_scale: str | float) -> dict:
    """Read ``betas_nsdimagery`` at the voxels and write the subject's imagery betas (task)."""
    t0 = time.perf_counter()
    fs, root = source.filesystem()
    layout = nsdi.ImageryLayout(root)
    betas = nsdi.read_imagery_betas(fs, layout, subject, voxels, volume_shape, n_betas, prefer, scale=betas_scale)
    bad = ~np.isfinite(betas)
    if bad.any():
        if nan_policy != "zero":
            raise ImageryIngestError(
                f"{layout.betas(subject)}: {int(bad.sum())} NaN/inf betas in {int(bad.any(axis=0).sum())} voxels; "
                f"set [ingest] nan_policy = \"zero\" (CLI: --nan-policy zero) to replace them by 0, or fix the file")
        betas = np.where(bad, np.float32(0), betas)
    nbytes = store.write_region(imagery_group(subject), region, {"betas": betas})
    return {"betas": n_betas, "nan_betas": int(bad.sum()), "bytes": nbytes, "seconds": time.perf_counter() - t0}


def _write_targets(store: Store, source: Source, targets: nsdi.ImageryTargets, attrs: Mapping[str, Any]) -> bool:
    """Write ``imagery/targets`` unless the same targets are there; refuse other targets."""
    fs, root = source.filesystem()
    side = int(store.group(schema.STIMULI)["images"].shape[1]) if store.has_group(schema.STIMULI) else 425
    template = targets_template(targets, side)
    region = Region(0, "target", 0, len(targets.condition), "targets")
    salt = _digest(source.safe_url, targets.condition.tolist(), targets.file_name.tolist())
    if store.is_complete(TARGETS) and not store.template_matches(TARGETS, template, [region], salt):
        raise ImageryIngestError(
            f"{TARGETS} in {store.describe()} holds other NSD-Imagery targets (source "
            f"{store.group(TARGETS).attrs.get('source')!r}) than {source.safe_url}: a store never mixes two datasets;"
            f" ingest from the same tree, or into a new store")
    if not store.ensure_template(TARGETS, template, [region], attrs=attrs, salt=salt):
        return False
    images = nsdi.read_target_images(fs, nsdi.ImageryLayout(root), targets, side)
    store.write_region(TARGETS, region, {"images": images})
    return True


def ingest_imagery(store: Store, source: Source, subject: int, *, client=None, prefer: str = "hdf5",
                   nan_policy: str = "error", betas_scale: str | float = nsd.NSD_SCALE,
                   config: Mapping[str, Any] | None = None, progress: bool = True) -> dict:
    """Ingest one subject's NSD-Imagery session into ``store``; resumable.

    Parameters
    ----------
    store, source, subject
        As for :func:`fmri2img.pipeline.ingest.nsd.ingest`.
    prefer, nan_policy, betas_scale
        As for the main ingest (``betas_nsdimagery.hdf5`` by range, or the ``.nii.gz`` stream).

    Returns
    -------
    dict
        Betas per task, voxels, what was written or skipped, timings.
    """
    t0 = time.perf_counter()
    fs, root = source.filesystem()
    layout = nsdi.ImageryLayout(root)
    design = nsdi.read_design(fs, layout, subject)
    targets = nsdi.read_targets(fs, layout, design)
    voxels, shape = _voxels(source, store, subject)
    attrs = schema.provenance(source=source.safe_url, config=config, subject=int(subject), experiment="nsdimagery")
    targets_written = _write_targets(store, source, targets, attrs)
    files = {fmt: ingest_resume.file_id(fs.info(layout.betas(subject, fmt)) if fs.exists(layout.betas(subject, fmt))
                                        else None) for fmt in ("hdf5", "nii.gz")}
    salt = _digest(FORMAT, source.safe_url, files, prefer, str(betas_scale), nan_policy)
    template = betas_template(design, targets.index_of(design.condition), voxels, shape)
    region = Region(0, "trial", 0, design.n_betas, "betas_nsdimagery")
    todo = store.ensure_template(imagery_group(subject), template, [region], salt=salt,
                                 attrs={**attrs, "betas_scale": str(betas_scale), "prefer": prefer,
                                        "nan_policy": nan_policy, "files": json.dumps(files)})
    tasks = [Task(f"imagery-subj{subject:02d}", read_betas_task,
                  (store, source, subject, region, voxels, shape, design.n_betas, prefer, nan_policy, betas_scale))
             for _ in todo]
    results = run_tasks(tasks, stage=f"ingest-imagery-subj{subject:02d}", client=client, progress=progress)
    tasks_of = {t: int((design.task == t).sum()) for t in nsdi.TASKS}
    summary = {"subject": int(subject), "experiment": "nsdimagery", "n_betas": design.n_betas, "betas_per_task":
               tasks_of, "n_voxels": int(len(voxels)), "n_targets": int(len(targets.condition)),
               "targets_with_image": int(sum(bool(f) for f in targets.file_name.tolist())),
               "betas_written": bool(results), "targets_written": targets_written,
               "nan_betas_zeroed": int(sum(r["nan_betas"] for r in results)),
               "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("ingest NSD-Imagery subject %d done: %s", subject, summary)
    return summary
