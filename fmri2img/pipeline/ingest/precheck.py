"""Every input of an ingest checked from its header before the first write (issue 23).

An ingest that will be refused must leave the store byte for byte as it was, so before it
writes a template it reads, for the subject:

- each session's betas file still to be read: exists, volume and trial count, value type
  (and the betas scale), whole (:func:`fmri2img.storage.nsd.headers.check_betas_file`);
- the ROI volumes: volume and whole (missing ones are allowed: their masks are left out);
- the stimuli and captions files when images remain to be copied: count, shape and dtype, the
  stimulus side of a store that already has stimuli, whole.

The design and the nsdgeneral mask were read whole by :func:`~fmri2img.pipeline.ingest.nsd.plan_subject`.
These are a few small reads per file (headers and gzip trailers), made concurrently: on an
object store 37 sessions cost about as much as a few of them.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from fmri2img.storage import nsd, schema
from fmri2img.storage.nsd import headers
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

__all__ = ["IngestError", "check_inputs", "CAPTIONS_PER_IMAGE"]

#: captions per image in COCO_73k_annots_curated.npy (the stimuli group's caption dimension)
CAPTIONS_PER_IMAGE = 5
#: header reads in flight at once
_CONCURRENT = 8


class IngestError(ValueError):
    """Input that cannot be ingested; the message names the file and the fix."""


def check_inputs(store: Store, source: Source, plan: Any, *, prefer: str, betas_scale: str | float,
                 stimuli: bool, captions: bool, roi_files: Sequence[str] = (), betas: bool = True) -> None:
    """Refuse, before anything is written, an ingest of ``plan.subject`` whose inputs cannot be read.

    ``plan`` is the stage's :class:`~fmri2img.pipeline.ingest.nsd.SubjectPlan` (subject, split,
    trials per session, volume shape).

    ``roi_files``: the ROI volumes the stage reads (names of :data:`fmri2img.storage.nsd.ROI_FILES`).
    ``betas=False``: the betas come from elsewhere (the glm stage's groups), not from NSD's files.

    Raises
    ------
    NSDFileMissing, NSDFormatError, IngestError
        The first input (in session order, then ROIs, stimuli, captions) that fails its check.
    """
    fs, root = source.filesystem()
    layout = nsd.NSDLayout(root)
    sessions = _sessions_to_read(store, plan) if betas else []
    with ThreadPoolExecutor(max_workers=_CONCURRENT) as pool:
        checks = [pool.submit(headers.check_betas_file, fs, layout, plan.subject, s, plan.volume_shape,
                              plan.trials_per_session, prefer=prefer, scale=betas_scale) for s in sessions]
        checks += [pool.submit(_check_roi, fs, layout.roi(plan.subject, name), plan.volume_shape)
                   for name in roi_files]
        for check in checks:
            check.result()
    if stimuli:
        _check_stimuli(store, source, plan.split, captions)
    logger.debug("inputs of subject %d checked: %d betas files, stimuli %s", plan.subject, len(sessions), stimuli)


def _sessions_to_read(store: Store, plan: Any) -> list[int]:
    """Sessions whose betas region is not recorded as done (all of them for a new subject)."""
    group = schema.subject_group(plan.subject, "betas")
    done = store.done_regions(group) if store.has_group(group) else set()
    return [s for k, s in enumerate(plan.split.sessions) if k not in done]


def _check_roi(fs: Any, path: str, volume_shape: Sequence[int]) -> None:
    """An ROI volume on the mask's grid and whole; a missing one is left to the stage (it is optional)."""
    if not fs.exists(path):
        return
    shape = headers.check_nifti_file(fs, path, what="ROI volume")
    if tuple(shape[:3]) != tuple(volume_shape) or any(s != 1 for s in shape[3:]):
        raise IngestError(f"{path} has {_fmt(shape)} voxels but the nsdgeneral mask is {_fmt(volume_shape)}: ROI "
                          f"files and nsdgeneral must come from the same space (func1pt8mm)")


def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _check_stimuli(store: Store, source: Source, split: nsd.TrialSplit, captions: bool) -> None:
    """The stimuli (and captions) files, when this ingest will copy images from them."""
    wanted = np.unique(np.concatenate([split.train_ids, split.test_ids]))
    side = None
    if store.has_group(schema.STIMULI):
        group = store.group(schema.STIMULI)
        present = group["image"][:]
        todo = [r for r in store.regions(schema.STIMULI) if r.index not in store.done_regions(schema.STIMULI)]
        if not len(np.setdiff1d(wanted, present)) and not todo:
            return  # every image of this subject is in the store already
        side = int(group["images"].shape[1])
        wanted = np.union1d(wanted, present)
    n_needed = int(wanted.max()) + 1 if len(wanted) else 0
    fs, root = source.filesystem()
    if captions:
        cfs, cpath = source.captions()
        if not cfs.exists(cpath):
            raise IngestError(
                f"captions file not found at {cpath}: set [source] captions_url to COCO_73k_annots_curated.npy "
                f"(published with the NSD annotations, e.g. the pscotti/naturalscenesdataset mirror), "
                f"or ingest without captions (--no-captions)"
            )
    path = nsd.NSDLayout(root).stimuli()
    shape = headers.check_stimuli_file(fs, path, n_needed)
    if side is not None and shape[1] != side:
        raise IngestError(f"{path} holds {shape[1]}×{shape[2]} images but {schema.STIMULI} in {store.describe()} "
                          f"holds {side}×{side} ones: a store never mixes two datasets; ingest into a new store")
    if captions:
        cshape = headers.check_captions_file(cfs, cpath, n_needed)
        if cshape[1] != CAPTIONS_PER_IMAGE:
            raise IngestError(f"{cpath} holds {cshape[1]} captions per image; expected {CAPTIONS_PER_IMAGE} "
                              f"(COCO_73k_annots_curated.npy is (73000, 5)): use that file, or ingest without "
                              f"captions (--no-captions)")
