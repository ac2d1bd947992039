"""The glm stage: one session's time series → single-trial betas, GLMsingle's types A–D as a Dask graph.

``glm_session(store, inputs, subject, session, options=...)``, for any ``inputs`` that give the
session's runs (NSD's time-series files, a BIDS dataset with fMRIPrep derivatives; see
:mod:`fmri2img.pipeline.glm.inputs`):

1. the design is checked and planned (:func:`fmri2img.glm.prepare`) before anything is written;
2. **read**: one task per run file reads it volume by volume, masks it and writes its rows of
   the staged ``data (time, voxel)`` array, chunked one run × one voxel block (the rechunk from
   volumes to voxel blocks: each later task reads one block's voxels for every volume);
3. **fit**: one task per voxel block: type A (ON-OFF: R², mean volume) and type B (each voxel's
   HRF from the library, single-trial betas);
4. the global steps, on the client, from small per-voxel vectors: the brain and R² thresholds,
   the noise pool; **noise**: one task per block computes its share of every run's time × time
   Gram matrix of the noise pool, summed by a tree reduction on the workers, then an
   eigendecomposition gives the noise components; **xval**: one task per block gives the
   cross-validated R² of its judging voxels for each number of components, and the number is
   chosen from the gathered table;
5. **denoise**: one task per block fits types C (GLMdenoise) and D (fractional ridge) and
   writes every output of ``subjects/subjNN/glm/sessionSS`` for its voxels.

Every group is written template-first with completion records, salted by the inputs, the
options and the library, so a killed run resumes where it stopped and gives the same result;
the staged time series and the first pass are deleted when the session is complete. Bad input
found while reading (a truncated run, a NaN voxel) deletes the groups this call created, so a
refused command leaves the store as it was. Results do not depend on the
number of workers (the tree's pairing is fixed by block order) and, up to floating-point
rounding of the Gram sums, not on the block size. Memory per task is set by ``block_size``
(voxels × every volume of the session × 8 bytes, a few times over), never by the session.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Mapping

import numpy as np

from fmri2img import glm
from fmri2img.pipeline.glm import groups
from fmri2img.pipeline.glm import tasks as gtasks
from fmri2img.pipeline.tasks import Task, run_tasks, tree_sum
from fmri2img.storage import schema
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BLOCK", "glm_session", "plan_session"]

#: voxels per block: about 88 MB of float64 time series for an NSD session (12 × 226 volumes)
DEFAULT_BLOCK = 4096
#: attribute of a finished session group: the identity of its inputs and options
INPUTS_ATTR = "fmri2img_glm_inputs"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_session(inputs: Any, options: glm.GlmOptions, hrf_library: np.ndarray | None = None) -> glm.GlmPlan:
    """The session's GLM plan from its inputs (checks the design, timing, repeats and library)."""
    designs = [run.design for run in inputs.runs]
    extra = [getattr(run, "confounds", None) for run in inputs.runs]
    return glm.prepare(designs, inputs.tr, inputs.stimdur, options,
                       extra_regressors=extra if any(e is not None for e in extra) else None,
                       hrf_library=hrf_library)


def _keys(inputs: Any, options: glm.GlmOptions, plan: glm.GlmPlan) -> tuple[str, str]:
    """(inputs key, fit key): what the staged data and what every fit depend on."""
    voxels = hashlib.sha256(np.ascontiguousarray(inputs.voxels, np.int64).tobytes()).hexdigest()[:16]
    inputs_key = _digest(inputs.summary(), voxels)
    fit_key = _digest(inputs_key, dataclasses.asdict(options),
                      hashlib.sha256(np.ascontiguousarray(plan.library).tobytes()).hexdigest()[:16])
    return inputs_key, fit_key


def _stage_timeseries(store, inputs, subject, session, plan, key, block_size, client, progress) -> str:
    group = groups.work_group(subject, session, "timeseries")
    regions = groups.run_regions(plan.n_volumes)
    template = groups.timeseries_template(plan.n_volumes, inputs.voxels, block_size)
    todo = store.ensure_template(group, template, regions, salt=key, attrs={"inputs": json.dumps(
        inputs.summary(), default=str)})
    run_tasks([Task(r.label, gtasks.stage_run, (store, group, inputs, r.index, r)) for r in todo],
              stage=f"glm-{key[:6]}-read", client=client, progress=progress)
    return group


def _first_pass(store, ts_group, subject, session, plan, key, block_size, voxels, client, progress) -> str:
    group = groups.work_group(subject, session, "fit")
    regions = groups.block_regions(len(voxels), block_size)
    template = groups.fit_template(plan.n_trials, plan.n_hrf, voxels, block_size)
    todo = store.ensure_template(group, template, regions, salt=key)
    run_tasks([Task(r.label, gtasks.fit_first, (store, ts_group, group, plan, r)) for r in todo],
              stage=f"glm-{key[:6]}-fit", client=client, progress=progress)
    return group


def _denoise_choice(store, ts_group, fit_group, plan, regions, key, client, progress) -> dict:
    """Thresholds, noise pool, noise components and their number (GLMdenoise), from the first pass."""
    opts = plan.options
    fit = store.group(fit_group)
    onoff_r2, meanvol = np.asarray(fit["onoff_r2"][:]), np.asarray(fit["meanvol"][:])
    th = glm.thresholds(onoff_r2, meanvol, opts)
    out: dict[str, Any] = {"thresholds": th, "pool": None, "pcs": None, "pcnum": 0, "trend": None}
    if not opts.wantglmdenoise:
        return out
    pool = glm.noise_pool(onoff_r2, meanvol, th, None)
    grams = tree_sum([Task(r.label, gtasks.gram_part, (store, ts_group, plan, r, pool[r.slice])) for r in regions],
                     gtasks.add_grams, stage=f"glm-{key[:6]}-noise", client=client, progress=progress)
    pcs = glm.noise_components(grams, opts.n_pcs)
    out.update(pool=pool, pcs=pcs, pcnum=plan.fixed_pcnum)
    if plan.fixed_pcnum is None:
        judges = glm.pc_voxels(onoff_r2, th, None)
        tables = run_tasks([Task(r.label, gtasks.xval_part, (store, ts_group, fit_group, plan, r, pcs,
                                                             judges[r.slice])) for r in regions],
                           stage=f"glm-{key[:6]}-xval", client=client, progress=progress)
        out["pcnum"], out["trend"] = glm.choose_pcnum(np.concatenate(tables), opts)
    return out


def glm_session(store: Store, inputs: Any, subject: int, session: int, *, options: glm.GlmOptions,
                hrf_library: np.ndarray | None = None, block_size: int = DEFAULT_BLOCK, client=None,
                progress: bool = True, attrs: Mapping[str, Any] | None = None,
                keep_timeseries: bool = False) -> dict:
    """Fit one session's single-trial GLM into ``subjects/subjNN/glm/sessionSS``; resumable.

    Parameters
    ----------
    inputs : session inputs
        ``runs`` (each with ``design``, an (n_volumes_r, n_conditions) 0/1 array, and optional
        ``confounds``), ``tr``, ``stimdur``, ``voxels`` ((n_voxels, 3) NIfTI i, j, k), ``volume_shape``,
        ``affine`` (4 × 4),
        ``condition_images()`` (0-based 73k id of each design column, -1 when unknown),
        ``read_run(r)`` ((n_volumes_r, n_voxels) float32) and ``summary()`` (provenance);
        picklable (tasks read runs on workers).
    options : GlmOptions
        A preset's options (:func:`fmri2img.glm.get_preset`), possibly overridden.
    hrf_library : array of shape (n_time, n_hrf), optional
        At the TR; default GLMsingle's library.
    block_size : int
        Voxels per block task.
    keep_timeseries : bool
        Keep the staged time series and the first pass's group after the session is complete (default:
        deleted; the session group holds every result).

    Returns
    -------
    dict
        Trials, voxels, pcnum, the models, timings (JSON-serialisable).
    """
    t0 = time.perf_counter()
    plan = plan_session(inputs, options, hrf_library)
    images = np.asarray(inputs.condition_images(), dtype=np.int64)[plan.trials.conditions]
    inputs_key, fit_key = _keys(inputs, options, plan)
    out_group = groups.glm_group(subject, session)
    if store.is_complete(out_group) and store.group(out_group).attrs.get(INPUTS_ATTR) == fit_key:
        logger.info("%s: complete with the same inputs and options, skipped", out_group)
        return _summary(store, out_group, subject, session, plan, t0, skipped=True)
    fresh = _fresh_groups(store, subject, session)
    consolidated = store.has_group("") and store.is_consolidated()
    try:
        _fit(store, inputs, subject, session, plan, images, (inputs_key, fit_key), block_size, client, progress,
             attrs, keep_timeseries)
    except ValueError:  # bad input found while reading (a truncated run, a NaN voxel): leave no trace of this call
        for group in fresh:
            store.delete_group(group)
        if consolidated:  # as it was: the readers' metadata describes the store again
            store.consolidate()
        raise
    return _summary(store, out_group, subject, session, plan, t0, skipped=False)


def _fresh_groups(store: Store, subject: int, session: int) -> list[str]:
    """The topmost of the groups this session may create that do not exist yet (what a rollback deletes)."""
    base = groups.glm_group(subject, session).rsplit("/", 1)[0]  # subjects/subjNN/glm
    work = groups.work_group(subject, session, "x").rsplit("/", 1)[0]  # .../glm/_work/sessionSS
    chain = [base.rsplit("/", 1)[0], base, f"{base}/_work", work, groups.glm_group(subject, session)]
    fresh: list[str] = []
    for group in chain:
        if not store.has_group(group) and not any(group.startswith(f + "/") for f in fresh):
            fresh.append(group)
    return fresh


def _fit(store: Store, inputs: Any, subject: int, session: int, plan: glm.GlmPlan, images: np.ndarray,
         keys: tuple[str, str], block_size: int, client, progress: bool, attrs: Mapping[str, Any] | None,
         keep_timeseries: bool) -> None:
    """Steps 2-5 of the module docstring (the session's plan is already checked)."""
    inputs_key, fit_key = keys
    ts_group = _stage_timeseries(store, inputs, subject, session, plan, inputs_key, block_size, client, progress)
    fit_group = _first_pass(store, ts_group, subject, session, plan, fit_key, block_size, inputs.voxels, client,
                            progress)
    regions = groups.block_regions(len(inputs.voxels), block_size)
    choice = _denoise_choice(store, ts_group, fit_group, plan, regions, fit_key, client, progress)
    template = groups.session_template(plan.models, images, plan.trials.runs, inputs.voxels, block_size,
                                       int(choice["pcnum"]))
    out_group = groups.glm_group(subject, session)
    todo = store.ensure_template(out_group, template, regions, salt=_digest(fit_key, int(choice["pcnum"])),
                                 attrs=_session_attrs(inputs, plan, choice, fit_key, attrs))
    pool = choice["pool"]
    run_tasks([Task(r.label, gtasks.fit_last, (store, ts_group, fit_group, out_group, plan, r, choice["pcs"],
                                               int(choice["pcnum"]), None if pool is None else pool[r.slice]))
               for r in todo], stage=f"glm-{fit_key[:6]}-denoise", client=client, progress=progress)
    if not keep_timeseries:  # the session group holds every result: the staged series and the first pass go
        store.delete_group(ts_group)
        store.delete_group(fit_group)


def _session_attrs(inputs: Any, plan: glm.GlmPlan, choice: Mapping[str, Any], fit_key: str,
                   attrs: Mapping[str, Any] | None) -> dict:
    """The session group's attributes: provenance, options, timing, the global choices (never credentials)."""
    trend = choice["trend"]
    return {**schema.provenance(**dict(attrs or {})), INPUTS_ATTR: fit_key,
            "inputs": json.dumps(inputs.summary(), default=str),
            "options": json.dumps(dataclasses.asdict(plan.options), sort_keys=True, default=list),
            "tr": float(plan.tr), "stimdur": float(plan.stimdur),
            "volume_shape": json.dumps([int(s) for s in inputs.volume_shape]),
            "affine": json.dumps(np.asarray(inputs.affine, dtype=float).tolist()),
            "thresholds": json.dumps(dataclasses.asdict(choice["thresholds"]), default=float),
            "xvaltrend": json.dumps(None if trend is None else [float(x) for x in trend]),
            "hrf_library_sha256": hashlib.sha256(np.ascontiguousarray(plan.library).tobytes()).hexdigest()}


def _summary(store: Store, group: str, subject: int, session: int, plan: glm.GlmPlan, t0: float, *,
             skipped: bool) -> dict:
    g = store.group(group)
    return {"subject": int(subject), "session": int(session), "group": group, "models": list(plan.models),
            "trials": int(plan.n_trials), "runs": int(plan.n_runs), "voxels": int(g["hrf_index"].shape[0]),
            "pcnum": int(np.asarray(g["pcnum"][()])), "skipped": skipped,
            "seconds": round(time.perf_counter() - t0, 3)}
