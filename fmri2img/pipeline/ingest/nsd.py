"""The ingest stage: NSD files behind any URL → the project store (REFERENCE.md §1).

For one subject:

1. The driver reads the small files (experimental design, ROI volumes), splits
   the trials of the chosen sessions into train (``masterordering > n_shared``)
   and test images, and writes the templates of ``subjects/subjNN/{betas,
   train,test,rois}`` and ``stimuli``.
2. One task per session file streams that file from the source (HDF5 twin by
   range, else the gzip stream), masks it with nsdgeneral > 0 (C order), divides
   by 300 and writes its row of ``betas``; one task per run of up to four
   32-image stimulus blocks copies images and captions.  Nothing is copied to local disk; a task holds
   about one session in memory.
3. One task per voxel block averages the repeats of every train and test image
   (all repeats within the chosen sessions, as Brain-Diffuser does) from the
   stored betas.

Every region has a completion record, so an interrupted ingest resumes.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from fmri2img.pipeline.ingest import resume as ingest_resume
from fmri2img.pipeline.ingest.precheck import IngestError, check_inputs
from fmri2img.pipeline.ingest.glm_betas import glm_identity, read_glm_betas
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import nsd, schema
from fmri2img.storage.source import Source
from fmri2img.storage.store import Region, Store, regular_regions

logger = logging.getLogger(__name__)

#: the 13 ROI masks of the Brain-Diffuser ROI analysis: name → (file, labels); V1–V4 from prf-visualrois
ROI_MASKS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "floc-faces": ("floc-faces", None),
    "floc-words": ("floc-words", None),
    "floc-places": ("floc-places", None),
    "floc-bodies": ("floc-bodies", None),
    "V1": ("prf-visualrois", (1, 2)),
    "V2": ("prf-visualrois", (3, 4)),
    "V3": ("prf-visualrois", (5, 6)),
    "V4": ("prf-visualrois", (7,)),
    "ecc05": ("prf-eccrois", (1,)),
    "ecc10": ("prf-eccrois", (2,)),
    "ecc20": ("prf-eccrois", (3,)),
    "ecc40": ("prf-eccrois", (4,)),
    "ecc40p": ("prf-eccrois", (5,)),
}


#: stimulus regions (of schema.STIMULUS_CHUNK images) per task: one batch of range requests each
STIMULI_TASK_REGIONS = 4


@dataclass(frozen=True)
class SubjectPlan:
    """What the driver learned from the small files of one subject."""

    subject: int
    split: nsd.TrialSplit
    trials_per_session: int
    voxels: np.ndarray
    volume_shape: tuple[int, int, int]


def plan_subject(source: Source, subject: int, sessions: Sequence[int] | None) -> SubjectPlan:
    """Read the design and the nsdgeneral mask and split the trials of ``sessions``.

    ``sessions=None`` means NSD's public sessions 1–37, clipped to the design.
    """
    fs, root = source.filesystem()
    layout = nsd.NSDLayout(root)
    design = nsd.read_expdesign(fs, layout.expdesign())
    if sessions is None:
        sessions = range(1, min(nsd.PUBLIC_SESSIONS, design.n_sessions) + 1)
    split = nsd.split_trials(design, subject, sessions)
    mask = nsd.read_mask(fs, layout.roi(subject, "nsdgeneral"))
    voxels = np.flatnonzero(mask.ravel(order="C")).astype(np.int64)
    if voxels.size == 0:
        raise IngestError(f"{layout.roi(subject, 'nsdgeneral')}: the nsdgeneral mask selects no voxel (no label > 0); "
                          f"check that the file is the subject's func1pt8mm nsdgeneral.nii.gz")
    return SubjectPlan(subject, split, design.trials_per_session, voxels, tuple(int(s) for s in mask.shape))


def read_roi_masks(source: Source, plan: SubjectPlan) -> tuple[list[str], list[str], np.ndarray]:
    """The 13 ROI masks over the nsdgeneral voxels: names, source files, bool (roi, voxel).

    A missing ROI file is logged and its masks left out (the ROI analysis says so);
    a file whose volume differs from nsdgeneral's is an error.
    """
    fs, root = source.filesystem()
    layout = nsd.NSDLayout(root)
    volumes: dict[str, np.ndarray | None] = {}
    for file in sorted({f for f, _ in ROI_MASKS.values()}):
        path = layout.roi(plan.subject, file)
        try:
            data, _ = nsd.read_volume(fs, path)
        except nsd.NSDFileMissing:
            logger.warning("%s is missing: its ROI masks are left out of subjects/subj%02d/rois", path, plan.subject)
            volumes[file] = None
            continue
        if tuple(data.shape) != plan.volume_shape:
            raise IngestError(
                f"{path} has {schema_shape(data.shape)} voxels but the nsdgeneral mask is "
                f"{schema_shape(plan.volume_shape)}: ROI files and nsdgeneral must come from the same space (func1pt8mm)"
            )
        volumes[file] = np.asarray(data).ravel(order="C")[plan.voxels]
    names, sources, masks = [], [], []
    for name, (file, labels) in ROI_MASKS.items():
        values = volumes[file]
        if values is None:
            continue
        mask = values > 0 if labels is None else np.isin(np.rint(values).astype(np.int64), labels)
        names.append(name)
        sources.append(f"{file}.nii.gz" + ("" if labels is None else f" labels {list(labels)}"))
        masks.append(mask)
    array = np.array(masks, dtype=bool).reshape(len(masks), len(plan.voxels))
    return names, sources, array


def session_bytes(plan: SubjectPlan) -> int:
    """A session task's expected peak memory: its masked betas (float32, and their finite check) plus the raw
    block of trials a reader holds (:data:`fmri2img.storage.nsd._common._BLOCK_BYTES`, 64 MiB)."""
    return 2 * 4 * plan.trials_per_session * len(plan.voxels) + 64 * 2**20


def schema_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


# -- tasks (module level: they are pickled to workers) ---------------------------------------

def ingest_session(store: Store, source: Source, subject: int, session: int, region: Region,
                   voxels: np.ndarray, volume_shape: tuple, trials: int, prefer: str, nan_policy: str,
                   betas_scale: str | float = nsd.NSD_SCALE, chunk_map: Any = None,
                   glm_model: str | None = None, images: np.ndarray | None = None) -> dict:
    """Stream one session file (or read the session's glm group), mask it, write its betas row; return a summary."""
    t0 = time.perf_counter()
    fs, root = source.filesystem()
    layout = nsd.NSDLayout(root)
    if glm_model:
        betas = read_glm_betas(store, subject, session, voxels, volume_shape, glm_model, images)
    else:
        betas = nsd.read_session_betas(fs, layout, subject, session, voxels, volume_shape, trials, prefer=prefer,
                                       scale=betas_scale, chunk_map=chunk_map)
    bad = ~np.isfinite(betas)
    n_bad = int(bad.sum())
    if n_bad:
        bad_voxels = int(bad.any(axis=0).sum())
        if nan_policy != "zero":
            raise IngestError(
                f"{layout.betas(subject, session)}: {n_bad} NaN/inf betas in {bad_voxels} nsdgeneral voxels; "
                f"set [ingest] nan_policy = \"zero\" (CLI: --nan-policy zero) to replace them by 0 and record the "
                f"count, or fix the file"
            )
        betas = np.where(bad, np.float32(0), betas)
    nbytes = store.write_region(schema.subject_group(subject, "betas"), region, {"betas": betas})
    return {"session": session, "nan_betas": n_bad, "bytes": nbytes, "seconds": time.perf_counter() - t0}


def ingest_stimuli_blocks(store: Store, source: Source, regions: Sequence[Region], ids: np.ndarray, captions: bool,
                          layout: nsd.StimuliLayout | None = None) -> dict:
    """Copy consecutive blocks of stimulus images (and their captions) into ``stimuli``.

    ``ids`` are the images of all ``regions`` in store order; they are read in one batch of
    merged byte ranges (``layout`` from the driver saves re-reading the HDF5 header), then
    each region is written with its own completion record.
    """
    t0 = time.perf_counter()
    fs, root = source.filesystem()
    images = nsd.read_stimuli(fs, nsd.NSDLayout(root).stimuli(), ids, layout=layout)
    texts = None
    if captions:
        cfs, cpath = source.captions()
        texts = np.asarray(nsd.read_captions(cfs, cpath, ids), dtype=object)
    nbytes, base = 0, regions[0].start
    for region in regions:
        rows = slice(region.start - base, region.stop - base)
        data: dict[str, np.ndarray] = {"images": images[rows]}
        if texts is not None:
            data["captions"] = texts[rows]
        nbytes += store.write_region(schema.STIMULI, region, data)
    return {"images": len(ids), "bytes": nbytes, "seconds": time.perf_counter() - t0}


def _batches(regions: Sequence[Region], size: int) -> list[list[Region]]:
    """Runs of at most ``size`` regions that are consecutive in the store."""
    out: list[list[Region]] = []
    for r in regions:
        if out and len(out[-1]) < size and out[-1][-1].stop == r.start:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def average_block(store: Store, subject: int, region: Region, rows: Mapping[str, list[np.ndarray]]) -> dict:
    """Average repeats for one voxel block and write it to train and test.

    ``rows[part][i]`` are the rows of ``betas`` (trials) showing image ``i`` of ``part``.
    """
    t0 = time.perf_counter()
    betas = store.group(schema.subject_group(subject, "betas"))["betas"]
    block = np.asarray(betas[:, region.slice], dtype=np.float64)
    for part in ("train", "test"):
        lists = rows[part]
        mean = (repeat_average_matrix(lists, block.shape[0]) @ block).astype(np.float32)
        store.write_region(schema.subject_group(subject, part), region, {"fmri": mean})
    return {"voxels": region.stop - region.start, "seconds": time.perf_counter() - t0}


def repeat_average_matrix(rows: Sequence[np.ndarray], n_rows: int) -> sp.csr_matrix:
    """Sparse (n_images, n_rows) matrix whose row i averages the rows ``rows[i]``."""
    counts = np.array([len(r) for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(rows).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    data = np.repeat(1.0 / np.maximum(counts, 1), counts)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_rows))


# -- the stage ----------------------------------------------------------------------------------

def ingest(
    store: Store, source: Source, subject: int, sessions: Sequence[int] | None, *, client=None,
    prefer: str = "hdf5", nan_policy: str = "error", stimuli: bool = True, captions: bool = True,
    config: Mapping[str, Any] | None = None, progress: bool = True, betas_scale: str | float = nsd.NSD_SCALE,
    glm_model: str | None = None,
) -> dict:
    """Ingest one subject from ``source`` into ``store``; resumable.

    Parameters
    ----------
    store : Store
        The project store.
    source : Source
        The NSD tree (public bucket, mirror, or mini-NSD).
    subject : int
        1-based NSD subject.
    sessions : sequence of int or None
        1-based sessions; ``None``: NSD's public sessions 1–37 (Brain-Diffuser's), clipped to the design.
    client : distributed.Client, optional
        Runs the tasks on a cluster; ``None`` runs them here one by one.
    prefer : {"hdf5", "nii.gz"}
        Read betas from the HDF5 twin by range when present, or stream the gzip.
    nan_policy : {"error", "zero"}
        What to do with non-finite betas.
    stimuli, captions : bool
        Also copy the subject's stimuli (and captions) into ``stimuli``.
    betas_scale : "nsd" or float
        Units of the betas files: NSD's int16 × 300 (float files are refused), or a number the
        values are divided by (see :func:`fmri2img.storage.nsd.read_session_betas`).
    glm_model : str, optional
        Read each session's betas from the glm stage's ``subjects/subjNN/glm/sessionSS`` (this
        model) instead of NSD's betas files (:mod:`fmri2img.pipeline.ingest.glm_betas`).

    Returns
    -------
    dict
        Counts and timings (JSON-serialisable).
    """
    t0 = time.perf_counter()
    plan = plan_subject(source, subject, sessions)
    check_inputs(store, source, plan, prefer=prefer, betas_scale=betas_scale, stimuli=stimuli, captions=captions,
                 roi_files=sorted({f for f, _ in ROI_MASKS.values()}), betas=not glm_model)  # before any write
    split = plan.split
    attrs = schema.provenance(source=source.safe_url, config=config, subject=int(subject),
                              sessions=",".join(map(str, split.sessions)))
    logger.info("subject %d: %d train / %d test images, %d trials in %d sessions, %d voxels",
                subject, len(split.train_ids), len(split.test_ids), len(split.trial_image),
                len(split.sessions), len(plan.voxels))
    current = ingest_resume.identity(source, subject, split.sessions, prefer=prefer, nan_policy=nan_policy,
                                     betas_scale=betas_scale,
                                     files=glm_identity(store, subject, split.sessions, glm_model) if glm_model
                                     else None)
    bregions, btodo = _betas_template(store, source, subject, plan, attrs, current, stimuli, betas_scale)
    vregions, todo_avg = _subject_templates(store, source, subject, plan, attrs, overwrite=bool(btodo))
    chunk_map = _subject_chunk_map(source, subject, [split.sessions[r.index] for r in btodo], plan) \
        if prefer == "hdf5" and not glm_model else None
    tasks = [Task(r.label, ingest_session, (store, source, subject, split.sessions[r.index], r, plan.voxels,
                                            plan.volume_shape, plan.trials_per_session, prefer, nan_policy,
                                            betas_scale, chunk_map, glm_model, split.trial_image[r.slice]),
                  nbytes=session_bytes(plan)) for r in btodo]
    stim_todo, stim_ids, stim_layout = (_stimuli_plan(store, source, split, attrs, captions) if stimuli
                                        else ([], None, None))
    tasks += [Task(b[0].label, ingest_stimuli_blocks,
                   (store, source, b, stim_ids[b[0].start:b[-1].stop], captions, stim_layout))
              for b in _batches(stim_todo, STIMULI_TASK_REGIONS)]
    results = run_tasks(tasks, stage=f"ingest-subj{subject:02d}", client=client, progress=progress)
    sessions_done = [r for r in results if "session" in r]
    # averages over repeats, after every session is in
    rows = _rows_of(split)
    vtodo = sorted({r.index for part in todo_avg for r in todo_avg[part]})
    avg_tasks = [Task(vregions[i].label, average_block, (store, subject, vregions[i], rows),
                      nbytes=3 * 8 * len(split.trial_image) * (vregions[i].stop - vregions[i].start)) for i in vtodo]
    run_tasks(avg_tasks, stage=f"average-subj{subject:02d}", client=client, progress=progress)
    summary = {
        "subject": int(subject), "sessions": list(split.sessions), "n_train": int(len(split.train_ids)),
        "n_test": int(len(split.test_ids)), "n_trials": int(len(split.trial_image)),
        "n_voxels": int(len(plan.voxels)), "sessions_written": len(sessions_done),
        "sessions_skipped": len(bregions) - len(btodo),
        "nan_betas_zeroed": int(sum(r["nan_betas"] for r in sessions_done)),
        "stimulus_blocks_written": len(stim_todo), "seconds": round(time.perf_counter() - t0, 3),
    }
    if summary["nan_betas_zeroed"]:
        g = store.group(schema.subject_group(subject, "betas"), mode="a")
        g.attrs["nan_betas_zeroed"] = int(g.attrs.get("nan_betas_zeroed", 0)) + summary["nan_betas_zeroed"]
    logger.info("ingest subject %d done: %s", subject, summary)
    return summary


def _betas_template(store: Store, source: Source, subject: int, plan: SubjectPlan, attrs: dict,
                    current: Mapping[str, Any], stimuli: bool, betas_scale: str | float
                    ) -> tuple[list[Region], list[Region]]:
    """``subjects/subjNN/betas``: one region per session; a resume whose inputs changed is refused first."""
    split, tps = plan.split, plan.trials_per_session
    bgroup = schema.subject_group(subject, "betas")
    btemplate = schema.betas_template(split.trial_session, split.trial_image, split.trial_index, tps,
                                      plan.voxels, plan.volume_shape)
    bregions = [Region(k, "trial", k * tps, (k + 1) * tps, f"session-{s:02d}") for k, s in enumerate(split.sessions)]
    if store.has_group(bgroup):  # a resume: refused before any write when its inputs differ (issue 12)
        done = store.done_regions(bgroup)
        ingest_resume.check_resume(store, subject, current, [r.label for r in bregions if r.index in done],
                                   reuse=store.template_matches(bgroup, btemplate, bregions))
    if stimuli:
        ingest_resume.check_stimuli(store, source)
    btodo = store.ensure_template(bgroup, btemplate, bregions, attrs={**attrs, "trials_per_session": tps,
                                                                          "betas_scale": str(betas_scale),
                                                                          **ingest_resume.record(current)})
    return bregions, btodo


def _subject_templates(store: Store, source: Source, subject: int, plan: SubjectPlan, attrs: dict, *,
                       overwrite: bool) -> tuple[list[Region], dict[str, list[Region]]]:
    """The ``train``/``test`` averages' templates (regions by voxel block) and the ROI masks, written now.

    Independent groups: their metadata writes (many small requests on object stores) overlap.
    """
    split = plan.split
    vregions = regular_regions("voxel", len(plan.voxels), schema.VOXEL_CHUNK, "voxels")
    names, sources_, masks = read_roi_masks(source, plan)

    def averaged(part: str) -> list[Region]:
        ids = split.train_ids if part == "train" else split.test_ids
        template = schema.averaged_template(ids, plan.voxels, plan.volume_shape)
        counts = [len(t) for t in (split.train_trials if part == "train" else split.test_trials)]
        template["n_repeats"] = ("image", np.asarray(counts, dtype=np.int16))
        return store.ensure_template(schema.subject_group(subject, part), template, vregions, attrs=attrs,
                                     overwrite=overwrite)

    def rois() -> None:
        rgroup = schema.subject_group(subject, "rois")
        rtemplate = schema.rois_template(names, sources_, plan.voxels, plan.volume_shape)
        rregion = [Region(0, "roi", 0, len(names), "rois")]
        if store.ensure_template(rgroup, rtemplate, rregion, attrs=attrs) and len(names):
            store.write_region(rgroup, rregion[0], {"masks": masks})

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {"train": pool.submit(averaged, "train"), "test": pool.submit(averaged, "test"),
                   "rois": pool.submit(rois)}
        todo_avg = {part: futures[part].result() for part in ("train", "test")}
        futures["rois"].result()
    return vregions, todo_avg


def _subject_chunk_map(source: Source, subject: int, sessions: list[int], plan: SubjectPlan):
    """The first session's chunk map, for the others to reuse once verified (NSD's chunked .hdf5 only).

    With two or more sessions to read, walking one session's chunk index here lets every task
    skip its own walk (thousands of B-tree leaf reads) when its file's B-tree is the same.
    """
    if len(sessions) < 2:
        return None
    fs, root = source.filesystem()
    try:
        return nsd.session_chunk_map(fs, nsd.NSDLayout(root), subject, sessions[0], plan.voxels, plan.volume_shape)
    except nsd.NSDError as exc:  # the session's own task reports it with its file and fix
        logger.debug("no chunk map from session %d: %s", sessions[0], exc)
        return None


def _rows_of(split: nsd.TrialSplit) -> dict[str, list[np.ndarray]]:
    trial_index = split.trial_index
    return {
        "train": [np.searchsorted(trial_index, t) for t in split.train_trials],
        "test": [np.searchsorted(trial_index, t) for t in split.test_trials],
    }


def _stimuli_plan(store: Store, source: Source, split: nsd.TrialSplit, attrs: dict, captions: bool):
    """Template or extend ``stimuli`` with this subject's images; return (regions to do, ids in store order)."""
    wanted = np.unique(np.concatenate([split.train_ids, split.test_ids]))
    fs, root = source.filesystem()  # the files were checked before the first write (precheck.check_inputs)
    path = nsd.NSDLayout(root).stimuli()
    if not store.has_group(schema.STIMULI):
        layout = nsd.stimuli_layout(fs, path)
        template = schema.stimuli_template(wanted, layout.side, 5)
        regions = regular_regions("image", len(wanted), schema.STIMULUS_CHUNK, "images")
        store.write_template(schema.STIMULI, template, regions, attrs=attrs)
        return regions, wanted, layout
    present = store.group(schema.STIMULI)["image"][:store.regions(schema.STIMULI)[-1].stop]  # an extension
    new = np.setdiff1d(wanted, present)  # cut short before its region list was written is redone
    if len(new):
        regions = store.extend_template(schema.STIMULI, "image", new, schema.STIMULUS_CHUNK, "images")
    else:
        regions = store.regions(schema.STIMULI)
    ids = store.group(schema.STIMULI)["image"][:]
    done = store.done_regions(schema.STIMULI)
    todo = [r for r in regions if r.index not in done]
    return todo, ids, (nsd.stimuli_layout(fs, path) if todo else None)
