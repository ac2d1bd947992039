"""Decode NSD-Imagery with the models fitted on the main experiment; the eight metrics per task.

``fmri2img decode STORE --subject N --imagery`` (or :func:`decode_imagery`): the subject's
ingested imagery betas (``subjects/subjNN/imagery``, :mod:`fmri2img.pipeline.ingest.imagery`)
go through the decode stage's steps (:mod:`fmri2img.pipeline.clinical.decode`: the stored models with
the non-transductive calibration, stage 1 and 2, seeded by trial) into
``decoded/<name>/{predictions,recon}``, then every trial whose target has a picture is scored
against it, and the metrics are summarised per task (vision, imagery, attention):

* PixCorr, SSIM (column), SSIM-2D and the correlation distances (EffNet-B, SwAV): per trial,
  against its own target, as in the evaluate stage;
* two-way identification (AlexNet(2), AlexNet(5), InceptionV3, CLIP): per trial, against the
  other targets of its task (:func:`fmri2img.metrics.targets.identification_among_targets`;
  chance 0.5), because trials repeat their target.

Written to ``decoded/<name>/metrics/<run>/<part>`` (per-trial values with ``task``, ``stim_set`` and
``target`` coordinates; the per-task summaries in its attributes); a rerun with the same
reconstructions, targets, nets and weights recomputes nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from fmri2img.storage import secrets
from fmri2img.pipeline.clinical import common as dec
from fmri2img.pipeline.clinical import decode as decode_stage
from fmri2img.pipeline.clinical import page as decode_page
from fmri2img.pipeline.evaluate import IMAGE_METRICS, INPUTS_ATTR, METRIC_VARS, net_features, json_default
from fmri2img.pipeline.ingest.imagery import TARGETS, imagery_group
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import schema
from fmri2img.storage.nsd.imagery import TASKS
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Region, Store

logger = logging.getLogger(__name__)

#: what ``[decode] betas`` / ``--betas`` may say instead of a URL to decode the ingested imagery
IMAGERY_INPUT = "imagery"


def read_imagery_input(store: Store, subject: int, name: str | None, tasks: Sequence[str] | None
                       ) -> tuple[dec.DecodeInput, xr.Dataset]:
    """The subject's imagery betas of ``tasks`` as a decode input (seeded by beta number), and their labels."""
    g = imagery_group(subject)
    if not store.is_complete(g):
        raise dec.DecodeError(f"subject {subject} has no NSD-Imagery betas in {store.describe()}: ingest them first "
                              f"(fmri2img ingest --experiment nsdimagery --source NSD_ROOT --store ... --subject "
                              f"{subject})")
    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise dec.DecodeError(f"imagery tasks {unknown} are not NSD-Imagery tasks; expected some of {list(TASKS)}")
    labels = store.open_dataset(g).drop_vars("betas")
    rows = np.flatnonzero(np.isin(text_values(labels.task.values), list(tasks or TASKS)))
    fmri = np.asarray(store.group(g)["betas"].get_orthogonal_selection((rows, slice(None))), np.float32)
    labels = labels.isel(trial=rows).load()
    data = dec.DecodeInput(name or f"nsdimagery-subj{subject:02d}", f"{secrets.redact(store.url)}#{g}", fmri,
                           labels.trial.values.astype(np.int64), np.full(len(rows), dec.UNKNOWN_IMAGE, np.int64),
                           f"NSD-Imagery targets ({TARGETS}), not NSD images: scored per task")
    return data, labels


def text_values(values: np.ndarray) -> np.ndarray:
    """Labels read back from Zarr (variable-width strings) as a fixed-width str array."""
    return np.asarray([str(v) for v in np.asarray(values).tolist()])


def _key(store: Store, name: str, run: str, part: str, nets: Sequence[str], weights: Mapping[str, Any]) -> str:
    from fmri2img.metrics.features import EVAL_NETS
    parts = [store.group(g).attrs.get("fmri2img_template", "") for g in (dec.group(name, "recon", run, part), TARGETS)]
    text = json.dumps([parts, list(nets), {n: weights.get(EVAL_NETS[n].weights_key) for n in nets}])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def score_targets_block(store: Store, name: str, parts: Sequence[tuple[str, str]], rows: np.ndarray,
                        target: np.ndarray, task: np.ndarray, nets: Sequence[str], weights: Mapping[str, Any],
                        device: str) -> dict:
    """Per-trial metrics of each (run, part) against the targets (task: the networks load once)."""
    from fmri2img.metrics.scores import METRICS, per_image_scores
    from fmri2img.metrics.targets import identification_among_targets
    images = np.asarray(store.group(TARGETS)["images"][:])
    used = np.unique(target)
    t_feats = {n: v for n, v in net_features(images[used], nets, weights, device).items()}
    pos = np.searchsorted(used, target)
    out = {}
    for run, part in parts:
        rec = np.asarray(store.group(dec.group(name, "recon", run, part))["images"].get_orthogonal_selection((rows,)))
        values = per_image_scores(gt_images=images[target], rec_images=rec, metrics=list(IMAGE_METRICS))
        r_feats = net_features(rec, nets, weights, device)
        distance = [m for m, s in METRICS.items() if s.feature in nets and s.kind == "distance"]
        values.update(per_image_scores(gt_features={n: f[pos] for n, f in t_feats.items()}, rec_features=r_feats,
                                       metrics=distance))
        for m, s in METRICS.items():
            if s.feature in nets and s.kind == "identification":
                v = np.full(len(rows), np.nan)
                for t in np.unique(task):
                    sel = task == t
                    v[sel] = identification_among_targets(t_feats[s.feature], r_feats[s.feature][sel], pos[sel])
                values[m] = v
        out[f"{run}/{part}"] = values
    return out


def _summaries(values: Mapping[str, np.ndarray], task: np.ndarray, random_nets: Sequence[str]) -> dict:
    from fmri2img.metrics.scores import METRICS, summarize
    out = {}
    for t in [t for t in TASKS if t in set(task.tolist())]:
        summary = summarize({m: np.asarray(v)[task == t] for m, v in values.items()})
        for m, s in summary.items():
            s["random_weights"] = bool(METRICS[m].feature in random_nets) if METRICS[m].feature else False
            if METRICS[m].kind == "identification":
                s.pop("p_value", None)  # Brain-Diffuser's binomial counts trial pairs, not targets
                s["chance"] = 0.5
        out[t] = summary
    return out


def score(store: Store, data: dec.DecodeInput, labels: xr.Dataset, runs, *, nets: Sequence[str] | None,
          weights: Mapping[str, Any], device: str, client=None, progress: bool = True,
          attrs: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Score every finished (run, part) on the trials whose target has a picture; means per task."""
    from fmri2img.metrics.features import EVAL_NETS
    nets = list(nets) if nets is not None else list(EVAL_NETS)
    unknown = sorted(set(nets) - set(EVAL_NETS))
    if unknown:
        raise ValueError(f"decode nets: unknown network(s) {unknown}; available: {list(EVAL_NETS)}")
    has_image = np.asarray(store.group(TARGETS)["has_image"][:], bool)
    target = labels.target.values.astype(np.int64)
    rows = np.flatnonzero((target >= 0) & has_image[np.maximum(target, 0)])
    parts = [(run.name, p) for run in runs for p in ("stage1", "final")
             if store.is_complete(dec.group(data.name, "recon", run.name, p))]
    if len(rows) < 2 or not parts:
        return {}
    task, stim_set = text_values(labels.task.values)[rows], text_values(labels.stim_set.values)[rows]
    keys = {p: _key(store, data.name, *p, nets, weights) for p in parts}
    todo = [p for p in parts if not (store.is_complete(dec.group(data.name, "metrics", *p)) and store.group(
        dec.group(data.name, "metrics", *p)).attrs.get(INPUTS_ATTR) == keys[p])]
    random_nets = [n for n in nets if not weights.get(EVAL_NETS[n].weights_key)]
    if todo:
        t = Task("metrics", score_targets_block, (store, data.name, todo, rows, target[rows], task, nets, weights,
                                                  device))
        values = run_tasks([t], stage=f"decode-{data.name}-metrics", client=client, progress=progress)[0]
        for run, part in todo:
            per_trial = values[f"{run}/{part}"]
            ds = xr.Dataset({METRIC_VARS[m]: ("trial", np.asarray(v, np.float64)) for m, v in per_trial.items()},
                            coords={"trial": ("trial", data.trials[rows].astype(np.int64)),
                                    "task": ("trial", np.asarray(task, dtype=object)),
                                    "stim_set": ("trial", np.asarray(stim_set, dtype=object)),
                                    "target": ("trial", target[rows])})
            g = dec.group(data.name, "metrics", run, part)
            region = Region(0, "trial", 0, len(rows), "all")
            summary = _summaries(per_trial, task, random_nets)
            store.write_template(g, ds, [region], attrs={**(attrs or {}), "run": run, "part": part,
                                                         "summary_by_task": json.dumps(summary, default=json_default),
                                                         "random_nets": random_nets, INPUTS_ATTR: keys[(run, part)]})
            store.mark_done(g, region)
    return {f"{run}/{part}/{t}": {m: s["mean"] for m, s in by_task.items()}
            for run, part in parts for t, by_task in read_summary(store, data.name, run, part).items()}


def read_summary(store: Store, name: str, run: str, part: str) -> dict:
    """Task → metric → summary (mean, sem, n_valid, chance for identification, ...) of one (run, part)."""
    return json.loads(store.group(dec.group(name, "metrics", run, part)).attrs["summary_by_task"])


def decode_imagery(store: Store, subject: int, runs: Sequence, *, name: str | None = None,
                   tasks: Sequence[str] | None = None, features: Sequence[str] = (), calibration: str = "loo",
                   nets: Sequence[str] | None = None, weights: Mapping[str, Any] | None = None, device: str = "auto",
                   outputs: Outputs | None = None, images_per_task: int = 8, client=None, progress: bool = True,
                   config: Mapping[str, Any] | None = None) -> dict:
    """Decode a subject's ingested NSD-Imagery betas (``tasks``, default all) and score them per task.

    Parameters are those of :func:`fmri2img.pipeline.clinical.decode.decode` that apply; the rows are
    ``subjects/subjNN/imagery`` instead of a file, and the truth is ``imagery/targets``.

    Returns
    -------
    dict
        As :func:`~fmri2img.pipeline.clinical.decode.decode`'s summary; ``metrics`` is keyed by
        ``run/part/task`` and ``betas_per_task`` counts the decoded rows.
    """
    t0 = time.perf_counter()
    if not runs and not features:
        raise dec.DecodeError("no reconstruction run to decode with: give --runs (e.g. brain-diffuser,pixels)")
    dec.subject_space(store, subject)  # a clear error for a subject that was never ingested
    features = sorted({f for run in runs for f in run.features_needed()} | set(features))
    models = dec.load_models(store, subject, features, calibration)
    data, labels = read_imagery_input(store, subject, name, tasks)
    attrs = {**schema.provenance(config=config), "subject": int(subject), "input": data.url,
             "calibration": calibration, "calibration_note": dec.CALIBRATIONS[calibration],
             "images_from": data.images_from, "experiment": "nsdimagery"}
    salts = decode_stage.predict(store, subject, data, models, calibration, client=client, progress=progress, attrs=attrs)
    for run in runs:
        decode_stage.reconstruct(store, data, run, salts, client=client, images_per_task=images_per_task, outputs=outputs,
                        progress=progress, attrs={**attrs, "random_weights": dec.random_weights(run)})
    metrics = score(store, data, labels, runs, nets=nets, weights=weights or {}, device=device, client=client,
                    progress=progress, attrs=attrs)
    page = decode_page.write_page(store, outputs, data, runs, metrics, attrs, dec.random_weights) if outputs else None
    task = text_values(labels.task.values)
    summary = {"subject": int(subject), "name": data.name, "input": data.url, "trials": int(len(data.trials)),
               "betas_per_task": {t: int((task == t).sum()) for t in TASKS if (task == t).any()},
               "images_known": int((labels.target.values >= 0).sum()), "images_from": data.images_from,
               "calibration": calibration, "group": dec.group(data.name), "runs": [r.name for r in runs],
               "random_weights": any(dec.random_weights(r) for r in runs), "metrics": metrics, "page": page,
               "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("decode NSD-Imagery %s: %s", data.name, summary)
    return summary

