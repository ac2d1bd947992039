"""The runner: stage order, resume, progress and the run log.

Each stage is a function ``stage(ctx) -> dict`` registered in :data:`STAGES`;
the runner calls the configured ones in order.  Stages resume by themselves
(their region records), so running the same configuration twice redoes nothing.
A JSON-lines run log (stage, subject, counts, timings, versions) is appended to
the store under ``_runlog`` (configuration redacted: never credentials).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zarr

from fmri2img.config import Config, validate
from fmri2img.pipeline.evaluate import evaluate
from fmri2img.pipeline.features import extract_features
from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.pipeline.reconstruct import reconstruct_run, run_specs
from fmri2img.pipeline.regress import regress
from fmri2img.pipeline.roi import roi_analysis
from fmri2img.storage import identity, lock, schema, verify
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

RUNLOG = "_runlog"


@dataclass
class RunContext:
    """What every stage receives."""

    config: Config
    store: Store
    client: Any = None
    progress: bool = True
    results: dict = field(default_factory=dict)
    #: what a stage's precheck learned before the store was touched (stage name → anything)
    prepared: dict = field(default_factory=dict)

    @property
    def source(self) -> Source:
        s = self.config.source
        return Source(s.url, dict(s.storage_options), s.captions_url)


def precheck_glm(ctx: RunContext) -> None:
    """``[glm]``'s inputs, opened and checked before the store is touched (a refused run writes nothing)."""
    from fmri2img.pipeline.glm.run import prepare_nsd_subject

    g = ctx.config.glm
    if g.bids:  # a BIDS participant → store subject subjects[0] (fmri2img.pipeline.glm.bids_run)
        from fmri2img.pipeline.glm.bids_run import prepare_bids_subject, require_shared

        subject = g.subjects[0]
        prep = prepare_bids_subject(ctx.store, subject, **_bids_fields(g))
        a = ctx.config.align
        if "align" in ctx.config.stages and a.subject == subject:
            require_shared(ctx.store, prep["stimuli"], a.reference)
        ctx.prepared["glm"] = {subject: prep}
        return
    ctx.prepared["glm"] = {subject: prepare_nsd_subject(
        ctx.source, subject, sessions=g.sessions, preset=g.preset, options=g.options, hrf_library=g.hrf_library,
        space=g.space, mask=g.mask) for subject in g.subjects}


def _bids_fields(g) -> dict:
    """The keyword arguments of prepare_bids_subject from ``[glm]``."""
    return {"bids": g.bids, "derivatives": g.derivatives, "participant": g.participant, "session": g.session,
            "task": g.task, "space": g.space, "stim_column": g.stim_column, "confounds": g.confounds,
            "onsets": g.onsets, "preset": g.preset, "options": g.options, "hrf_library": g.hrf_library,
            "storage_options": g.storage_options}


def stage_glm(ctx: RunContext) -> dict:
    """``[glm]``: each subject's time series → glm groups → its betas (and what ingest writes after them)."""
    from fmri2img.pipeline.glm.run import glm_nsd_subject

    g = ctx.config.glm
    if g.bids:
        from fmri2img.pipeline.glm.bids_run import glm_bids_subject

        subject = g.subjects[0]
        return {f"subj{subject:02d}": glm_bids_subject(
            ctx.store, subject, prepared=ctx.prepared["glm"][subject], preset=g.preset, model=g.model,
            block_size=g.block_size, keep_timeseries=g.keep_timeseries, client=ctx.client, progress=ctx.progress,
            config=ctx.config.redacted())}
    return {f"subj{subject:02d}": glm_nsd_subject(
        ctx.store, ctx.source, subject, prepared=ctx.prepared["glm"][subject], preset=g.preset, model=g.model,
        block_size=g.block_size, export=g.export, keep_timeseries=g.keep_timeseries, client=ctx.client,
        progress=ctx.progress, config=ctx.config.redacted()) for subject in g.subjects}


def stage_ingest(ctx: RunContext) -> dict:
    cfg = ctx.config.ingest
    out = {}
    if cfg.experiment == "nsdimagery":
        from fmri2img.pipeline.ingest.imagery import ingest_imagery
        return {f"subj{subject:02d}": ingest_imagery(
            ctx.store, ctx.source, subject, client=ctx.client, prefer=cfg.prefer, nan_policy=cfg.nan_policy,
            betas_scale=cfg.betas_scale, config=ctx.config.redacted(), progress=ctx.progress)
            for subject in cfg.subjects}
    glm = ctx.config.glm
    for subject in cfg.subjects:
        if "glm" in ctx.config.stages and subject in glm.subjects:  # its betas came with the glm stage
            out[f"subj{subject:02d}"] = {"from": "glm", "model": glm.model}
            continue
        out[f"subj{subject:02d}"] = ingest(
            ctx.store, ctx.source, subject, cfg.session_list(), client=ctx.client, prefer=cfg.prefer,
            nan_policy=cfg.nan_policy, stimuli=cfg.stimuli, captions=cfg.stimuli, betas_scale=cfg.betas_scale,
            config=ctx.config.redacted(), progress=ctx.progress,
        )
    return out


def stage_features(ctx: RunContext) -> dict:
    cfg = ctx.config.features
    return {
        name: extract_features(ctx.store, name, ctx.config.extractor_options(name), seed=ctx.config.seed,
                               client=ctx.client, images_per_task=cfg.images_per_task, progress=ctx.progress,
                               config=ctx.config.redacted())
        for name in cfg.extractors
    }


def stage_regress(ctx: RunContext) -> dict:
    cfg = ctx.config
    out = {}
    for subject in cfg.regress_subjects():
        for name in cfg.regress_features():
            out[f"subj{subject:02d}/{name}"] = regress(
                ctx.store, subject, name, cfg.regress.targets.get(name), client=ctx.client,
                save_weights=cfg.regress.save_weights, progress=ctx.progress, config=cfg.redacted(),
                kind=cfg.extractor_kind(name))
    return out


def stage_reconstruct(ctx: RunContext) -> dict:
    cfg = ctx.config
    outputs = Outputs(cfg.outputs.url, dict(cfg.outputs.storage_options))
    out = {}
    for subject in cfg.stage_subjects("reconstruct"):
        for spec in run_specs(cfg):
            out[f"subj{subject:02d}/{spec.name}"] = reconstruct_run(
                ctx.store, subject, spec, client=ctx.client, images_per_task=cfg.reconstruct.images_per_task,
                outputs=outputs, progress=ctx.progress, config=cfg.redacted())
    return out


def stage_evaluate(ctx: RunContext) -> dict:
    cfg = ctx.config
    ev = cfg.evaluate
    runs = list(ev.runs or cfg.reconstruct.runs)
    return {
        f"subj{subject:02d}": evaluate(ctx.store, subject, runs, parts=ev.parts, nets=ev.nets or None,
                                       weights=dataclasses.asdict(cfg.weights), device=ev.device, client=ctx.client,
                                       images_per_task=ev.images_per_task, progress=ctx.progress,
                                       config=cfg.redacted(), tiny=ev.tiny)
        for subject in cfg.stage_subjects("evaluate")
    }


def stage_roi(ctx: RunContext) -> dict:
    cfg = ctx.config
    outputs = Outputs(cfg.outputs.url, dict(cfg.outputs.storage_options))
    wanted = set(cfg.roi.runs or cfg.reconstruct.runs)
    return {
        f"subj{subject:02d}/{spec.name}": roi_analysis(ctx.store, subject, spec, client=ctx.client, outputs=outputs,
                                                       progress=ctx.progress, config=cfg.redacted())
        for subject in cfg.stage_subjects("roi") for spec in run_specs(cfg) if spec.name in wanted
    }


def stage_align(ctx: RunContext) -> dict:
    """``[align]``: a new subject aligned to a fitted reference (after regress, so the reference is fitted)."""
    from fmri2img.pipeline.clinical.align import align

    a = ctx.config.align
    return align(ctx.store, a.subject, a.reference, a.sessions, targets=a.targets,
                 encoding_features=list(a.encoding_features) or None, config=ctx.config.redacted())


def stage_decode(ctx: RunContext) -> dict:
    """``[decode]``: new scans (or, with ``imagery``, the subject's NSD-Imagery betas) through a fitted (or
    aligned) subject's models, with the [reconstruct.runs]."""
    from fmri2img.pipeline.clinical.configured import decode_config, decoder

    run_decode, kwargs = decoder(decode_config(ctx.config))
    kwargs.pop("store")  # the run's own store (the same URL)
    outputs = Outputs(ctx.config.outputs.url, dict(ctx.config.outputs.storage_options))
    return run_decode(ctx.store, outputs=outputs, client=ctx.client, progress=ctx.progress, **kwargs)


#: stage name → function, in run order (the same names as fmri2img.config.STAGES)
STAGES: dict[str, Callable[[RunContext], dict]] = {
    "glm": stage_glm,
    "ingest": stage_ingest,
    "features": stage_features,
    "regress": stage_regress,
    "align": stage_align,
    "reconstruct": stage_reconstruct,
    "evaluate": stage_evaluate,
    "roi": stage_roi,
    "decode": stage_decode,
}


#: stage name → a check of its inputs that runs before the store is touched
PRECHECKS: dict[str, Callable[[RunContext], None]] = {"glm": precheck_glm}


def run(config: Config, *, stages: list[str] | None = None, client=None, progress: bool = True) -> dict:
    """Run ``stages`` (default: the configured ones) in registry order; return their summaries."""
    validate(config)  # again: every stage's declared checks are registered now (fmri2img.pipeline)
    wanted = stages or list(config.stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    store = Store(config.store.url, dict(config.store.storage_options))
    ctx = RunContext(config, store, client, progress)
    for name in wanted:  # inputs checked before anything is written
        if name in PRECHECKS:
            PRECHECKS[name](ctx)
    identity.claim(store)  # a foreign or Zarr v2 target is refused before anything is written
    with lock.held(store):  # one run per store: a second is refused, naming this one
        for name in STAGES:
            if name not in wanted:
                continue
            t0 = time.perf_counter()
            logger.info("stage %s: start", name)
            result = STAGES[name](ctx)
            seconds = time.perf_counter() - t0
            ctx.results[name] = result
            append_runlog(store, {"stage": name, "seconds": round(seconds, 3), "result": result,
                                  "config_hash": schema.config_hash(config.redacted())})
            logger.info("stage %s: done in %.1f s", name, seconds)
    return ctx.results


def append_runlog(store: Store, record: dict) -> None:
    """Append one JSON record to the store's run log (a 1-D string array)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "versions": schema.library_versions(), **record}
    line = json.dumps(record, default=_jsonable, sort_keys=True)
    root = store.root()
    try:
        log = root[RUNLOG]
        log.resize((log.shape[0] + 1,))
        log[-1] = line
    except KeyError:
        log = root.create_array(RUNLOG, shape=(1,), chunks=(1024,), dtype=str, dimension_names=("entry",),
                                compressors=verify.checksum_codecs())
        log[0] = line


def read_runlog(store: Store) -> list[dict]:
    try:
        log = store.root(mode="r")[RUNLOG]
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError):
        return []
    return [json.loads(x) for x in log[:] if x]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def status(store: Store) -> list[tuple[str, int, int]]:
    """``(group, regions done, regions total)`` for every group of the store."""
    return [(g, *store.progress(g)) for g in store.list_groups()]
