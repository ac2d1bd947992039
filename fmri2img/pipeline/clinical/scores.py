"""The eight metrics of decoded trials whose images are known (part of the decode stage).

Like the evaluate stage, on the decoded trials instead of a subject's test images: image
metrics (PixCorr, SSIM) per trial, evaluation-network features of the reconstructions and of
the images shown, then the set-level metrics (two-way identification among the decoded
trials; correlation distance).  Trials showing the same image are each scored against it.
Written to ``decoded/<name>/metrics/<run>/<part>`` with the summary in the attributes; a
rerun with the same reconstructions, nets and weights loads nothing and recomputes nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from fmri2img.pipeline.evaluate import IMAGE_METRICS, METRIC_VARS, INPUTS_ATTR, net_features, json_default, stimuli_for
from fmri2img.pipeline.clinical.common import group
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import schema
from fmri2img.storage.store import Region, Store

logger = logging.getLogger(__name__)


def _parts(store: Store, name: str, runs) -> list[tuple[str, str]]:
    return [(run.name, part) for run in runs for part in ("stage1", "final")
            if store.is_complete(group(name, "recon", run.name, part))]


def _key(store: Store, name: str, run: str, part: str, nets: Sequence[str], weights: Mapping[str, Any]) -> str:
    from fmri2img.metrics.features import EVAL_NETS
    recon = store.group(group(name, "recon", run, part)).attrs.get("fmri2img_template", "")
    text = json.dumps([recon, list(nets), {n: weights.get(EVAL_NETS[n].weights_key) for n in nets}])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def score_block(store: Store, name: str, parts: Sequence[tuple[str, str]], rows: np.ndarray, ids: np.ndarray,
                nets: Sequence[str], weights: Mapping[str, Any], device: str, truth_group: str = "") -> dict:
    """Per-trial values of every metric for each (run, part) (task: the networks load once).

    ``ids``: NSD ids of the pictures shown (in ``stimuli``), or, with ``truth_group``, rows of that group.
    """
    from fmri2img.metrics.scores import METRICS, per_image_scores
    from fmri2img.pipeline.clinical.participant import truth_images

    truth = truth_images(store, truth_group, ids) if truth_group else stimuli_for(store, ids)
    gt_feats = net_features(truth, nets, weights, device)
    out = {}
    for run, part in parts:
        rec = np.asarray(store.group(group(name, "recon", run, part))["images"].get_orthogonal_selection((rows,)))
        values = per_image_scores(gt_images=truth, rec_images=rec, metrics=list(IMAGE_METRICS))
        values.update(per_image_scores(gt_features=gt_feats, rec_features=net_features(rec, nets, weights, device),
                                       metrics=[m for m, s in METRICS.items() if s.feature in nets]))
        out[f"{run}/{part}"] = values
    return out


def score(store: Store, data, runs, *, nets: Sequence[str] | None, weights: Mapping[str, Any], device: str,
          client=None, progress: bool = True, attrs: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Score every finished (run, part) of ``data`` on its trials with known images in ``stimuli``."""
    from fmri2img.metrics.features import EVAL_NETS
    from fmri2img.metrics.scores import METRICS, summarize
    nets = list(nets) if nets is not None else list(EVAL_NETS)
    unknown = sorted(set(nets) - set(EVAL_NETS))
    if unknown:
        raise ValueError(f"decode nets: unknown network(s) {unknown}; available: {list(EVAL_NETS)}")
    rows = np.flatnonzero(data.known)
    truth_ids = data.shown if data.shown_group else data.images
    present = set(np.asarray(store.group(schema.STIMULI)["image"][:]).tolist()) if store.has_group(
        schema.STIMULI) else set()
    missing = [] if data.shown_group else sorted({int(i) for i in data.images[rows]} - present)
    if missing:
        logger.warning("decode %s: %d of the images shown are not in the store's stimuli (first NSD id %d): "
                       "metrics cover the other trials; ingest a subject who saw them to score all",
                       data.name, len(missing), missing[0])
        rows = rows[~np.isin(data.images[rows], missing)]
    parts = _parts(store, data.name, runs)
    if len(rows) < 2 or not parts:
        return {}
    keys = {p: _key(store, data.name, *p, nets, weights) for p in parts}
    todo = [p for p in parts if not (store.is_complete(group(data.name, "metrics", *p)) and
                                     store.group(group(data.name, "metrics", *p)).attrs.get(INPUTS_ATTR) == keys[p])]
    random_nets = [n for n in nets if not weights.get(EVAL_NETS[n].weights_key)]
    if todo:
        task = Task("metrics", score_block, (store, data.name, todo, rows, truth_ids[rows], nets, weights, device,
                                              data.shown_group))
        values = run_tasks([task], stage=f"decode-{data.name}-metrics", client=client, progress=progress)[0]
        for run, part in todo:
            per_trial = values[f"{run}/{part}"]
            summary = summarize(per_trial)
            for m, s in summary.items():
                s["random_weights"] = bool(METRICS[m].feature in random_nets) if METRICS[m].feature else False
            ds = xr.Dataset({METRIC_VARS[m]: ("trial", np.asarray(v, np.float64)) for m, v in per_trial.items()},
                            coords={"trial": ("trial", data.trials[rows].astype(np.int64)),
                                    "image": ("trial", data.images[rows].astype(np.int64))})
            g = group(data.name, "metrics", run, part)
            region = Region(0, "trial", 0, len(rows), "all")
            text = json.dumps(summary, default=json_default)
            store.write_template(g, ds, [region], attrs={**(attrs or {}), "summary": text,
                                                         "run": run, "part": part, "random_nets": random_nets,
                                                         INPUTS_ATTR: keys[(run, part)]})
            store.mark_done(g, region)
    return {f"{run}/{part}": {m: s["mean"] for m, s in read_summary(store, data.name, run, part).items()}
            for run, part in parts}


def read_summary(store: Store, name: str, run: str, part: str) -> dict:
    """The summary of ``decoded/<name>/metrics/<run>/<part>`` (metric → mean, sem, n_valid, ...)."""
    return json.loads(store.group(group(name, "metrics", run, part)).attrs["summary"])
