"""The evaluate stage: the field's eight metrics (REFERENCE.md §5) for every run and subject.

1. One task per partition of test images computes the image metrics (PixCorr, SSIM in
   Brain-Diffuser's column mode and true 2-D) and the evaluation-network features of
   the reconstructions; ground-truth features are computed once per subject
   (``evalfeatures/subjNN/groundtruth``).  The networks are built once per worker.
2. The driver computes the set-level metrics from the stored features (two-way
   identification needs every image: AlexNet(2), AlexNet(5), InceptionV3, CLIP;
   correlation distance: EffNet-B, SwAV), NaN-safely, and writes per-image values and
   the summary to ``metrics/subjNN/<run>/<part>`` (the features stay in ``evalfeatures/``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from fmri2img.storage.weights import open_weights
from fmri2img.pipeline.reconstruct import recon_group
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import schema
from fmri2img.storage.store import Region, Store, regular_regions

logger = logging.getLogger(__name__)

_NETS: dict[str, Any] = {}
_LOCK = threading.Lock()

#: metric name → variable name in the store
METRIC_VARS = {
    "PixCorr": "pixcorr", "SSIM (column)": "ssim_column", "SSIM-2D": "ssim_2d", "AlexNet(2)": "alexnet2",
    "AlexNet(5)": "alexnet5", "InceptionV3": "inceptionv3", "CLIP": "clip", "EffNet-B": "effnet_b", "SwAV": "swav",
}
IMAGE_METRICS = ("PixCorr", "SSIM (column)", "SSIM-2D")


def metrics_group(subject: int, run: str, part: str) -> str:
    return f"metrics/{schema.subject_key(subject)}/{run}/{part}"


def features_group(subject: int, run: str, part: str) -> str:
    # not under metrics/...: rewriting a metrics group must not erase its features
    return f"evalfeatures/{schema.subject_key(subject)}/{run}/{part}"


def gt_features_group(subject: int) -> str:
    return f"evalfeatures/{schema.subject_key(subject)}/groundtruth"


def get_net(name: str, weights: Mapping[str, Any], device: str = "auto", tiny: bool = False) -> Any:
    """Evaluation network ``name`` of :data:`fmri2img.metrics.features.EVAL_NETS` (or its tiny stand-in
    when ``tiny`` and no weights are given for it), once per process."""
    from fmri2img.metrics.features import eval_net_spec
    from fmri2img.models.weights import pick_device

    spec = eval_net_spec(name, weights, tiny)
    path = weights.get(spec.weights_key) or None
    key = json.dumps([spec.builder.__name__, path, device])
    with _LOCK:
        if key not in _NETS:
            net = spec.builder(weights=open_weights(path, weights.get("storage_options")) if path else None)
            _NETS[key] = net.to(pick_device(device))
        return _NETS[key]


def net_features(images: np.ndarray, nets: Sequence[str], weights: Mapping[str, Any], device: str,
                 tiny: bool = False) -> dict:
    """Each evaluation net's features of uint8 ``images`` (n, H, W, 3): net name → array of shape (n, d)."""
    from fmri2img.metrics.features import eval_features, eval_net_spec

    return {name: eval_features(name, get_net(name, weights, device, tiny), images, batch_size=16,
                                spec=eval_net_spec(name, weights, tiny)) for name in nets}


def stimuli_for(store: Store, ids: np.ndarray) -> np.ndarray:
    """The stored stimuli of NSD ids ``ids``, uint8 array of shape (n, H, W, 3), in the order of ``ids``."""
    stim = store.group(schema.STIMULI)
    index = {int(v): i for i, v in enumerate(np.asarray(stim["image"][:]))}
    missing = [int(i) for i in ids if int(i) not in index]
    if missing:
        raise ValueError(f"stimuli lacks {len(missing)} test images (first NSD id {missing[0]}): re-run ingest")
    pos = np.array([index[int(i)] for i in ids])
    order = np.argsort(pos)
    images = np.empty((len(ids), *stim["images"].shape[1:]), np.uint8)
    images[order] = stim["images"].get_orthogonal_selection((pos[order],))
    return images


def gt_block(store: Store, subject: int, ids: np.ndarray, region: Region, nets: Sequence[str],
             weights: Mapping[str, Any], device: str, tiny: bool = False) -> dict:
    """Evaluation features of the ground-truth test images of one partition (task)."""
    images = stimuli_for(store, ids[region.slice])
    feats = net_features(images, nets, weights, device, tiny)
    store.write_region(gt_features_group(subject), region, feats)
    return {"images": len(images)}


def eval_block(store: Store, subject: int, run: str, part: str, ids: np.ndarray, region: Region,
               nets: Sequence[str], weights: Mapping[str, Any], device: str, tiny: bool = False) -> dict:
    """Image metrics and evaluation features of one partition of reconstructions (task)."""
    from fmri2img.metrics.scores import per_image_scores

    t0 = time.perf_counter()
    gt = stimuli_for(store, ids[region.slice])
    rec = np.asarray(store.group(recon_group(subject, run, part))["images"][region.slice])
    scores = per_image_scores(gt_images=gt, rec_images=rec, metrics=list(IMAGE_METRICS))
    data = {METRIC_VARS[m]: np.asarray(v, dtype=np.float64) for m, v in scores.items()}
    data.update({f"features_{k}": v for k, v in net_features(rec, nets, weights, device, tiny).items()})
    store.write_region(features_group(subject, run, part), region, data)
    return {"images": len(gt), "seconds": time.perf_counter() - t0}


def _feature_template(ids: np.ndarray, dims: Mapping[str, int], chunk: int, prefix: str,
                      with_image_metrics: bool) -> xr.Dataset:
    n = len(ids)
    data = {f"{prefix}{k}": (("image", f"{k}_dim"), da.zeros((n, d), chunks=(chunk, d), dtype=np.float32))
            for k, d in dims.items()}
    if with_image_metrics:
        for m in IMAGE_METRICS:
            data[METRIC_VARS[m]] = (("image",), da.zeros((n,), chunks=(chunk,), dtype=np.float64))
    return xr.Dataset(data, coords={"image": ("image", np.asarray(ids, dtype=np.int64))})


def _dims(nets: Sequence[str], weights: Mapping[str, Any], device: str, tiny: bool = False) -> dict[str, int]:
    """Feature length of each net at 224² (from one grey image: random-weight test nets may differ from §5)."""
    grey = np.full((1, 224, 224, 3), 128, np.uint8)
    return {k: int(v.shape[1]) for k, v in net_features(grey, nets, weights, device, tiny).items()}


def evaluate(store: Store, subject: int, runs: Sequence[str], *, parts: Sequence[str] = ("stage1", "final"),
             nets: Sequence[str] | None = None, weights: Mapping[str, Any] | None = None, device: str = "auto",
             client=None, images_per_task: int = 16, progress: bool = True,
             config: Mapping[str, Any] | None = None, tiny: bool = False) -> dict:
    """Score the reconstructions of ``runs`` for ``subject``; returns the summaries.

    Parameters
    ----------
    runs : sequence of str
        Reconstruction runs (``recon/subjNN/<run>``).
    parts : sequence of str
        ``"stage1"`` and/or ``"final"``; absent parts are skipped.
    nets : sequence of str, optional
        Evaluation feature sets (keys of ``EVAL_NETS``); default all six.
    weights : mapping, optional
        ``[weights]`` entries (alexnet, inception_v3, efficientnet_b1, swav, clip); a net
        without weights runs with seeded random weights and the summary says so.
    tiny : bool
        Nets without weights become tiny random stand-ins (``TINY_EVAL_NETS``; the demo): cheap,
        and as random as the full-size ones (the summary says ``random_weights``).
    """
    from fmri2img.metrics.features import EVAL_NETS

    t0 = time.perf_counter()
    weights = dict(weights or {})
    nets = list(nets) if nets is not None else list(EVAL_NETS)
    unknown = sorted(set(nets) - set(EVAL_NETS))
    if unknown:
        raise ValueError(f"evaluate.nets: unknown network(s) {unknown}; available: {list(EVAL_NETS)}")
    random_nets = [n for n in nets if not weights.get(EVAL_NETS[n].weights_key)]
    test = store.open_dataset(schema.subject_group(subject, "test"))
    ids = test.image.values
    regions = regular_regions("image", len(ids), images_per_task, "images")
    salt = json.dumps({"nets": nets, "weights": {n: weights.get(EVAL_NETS[n].weights_key) for n in nets},
                       **({"tiny": True} if tiny else {})}, sort_keys=True)
    keys = _inputs_keys(store, subject, runs, parts, salt, ids, images_per_task)
    finished = _finished(store, subject, keys)
    if finished is not None:  # a rerun loads no network and computes nothing (the runner's promise)
        logger.info("evaluate subj%02d: %d run parts finished with the same inputs, skipped", subject, len(keys))
        return finished
    dims = _dims(nets, weights, device, tiny)
    attrs = schema.provenance(config=config)

    todo = store.ensure_template(gt_features_group(subject), _feature_template(ids, dims, images_per_task, "", False),
                                 regions, attrs=attrs, salt=salt)
    tasks = [Task(f"groundtruth-{r.label}", gt_block, (store, subject, ids, r, nets, weights, device, tiny))
             for r in todo]
    jobs = []
    for run in runs:
        for part in parts:
            rgroup = recon_group(subject, run, part)
            if not store.is_complete(rgroup):
                continue
            rsalt = salt + store.group(rgroup).attrs.get("fmri2img_template", "")
            todo = store.ensure_template(features_group(subject, run, part),
                                         _feature_template(ids, dims, images_per_task, "features_", True),
                                         regions, attrs=attrs, salt=rsalt)
            tasks += [Task(f"{run}-{part}-{r.label}", eval_block, (store, subject, run, part, ids, r, nets, weights,
                                                                   device, tiny)) for r in todo]
            jobs.append((run, part))
    run_tasks(tasks, stage=f"evaluate-{schema.subject_key(subject)}", client=client, progress=progress,
              block_option=f"[evaluate] images_per_task (now {images_per_task})")

    out = _write_metrics(store, subject, ids, jobs, nets, random_nets, attrs, keys)
    logger.info("evaluate subj%02d: %s in %.1f s", subject, out, time.perf_counter() - t0)
    return out


def _write_metrics(store: Store, subject: int, ids: np.ndarray, jobs: Sequence[tuple[str, str]], nets: Sequence[str],
                   random_nets: Sequence[str], attrs: Mapping[str, Any], keys: Mapping[tuple[str, str], str]
                   ) -> dict[str, dict[str, float]]:
    """Per-image scores and summaries of every (run, part) → ``metrics/subjNN/<run>/<part>``; the means."""
    from fmri2img.metrics.scores import METRICS, per_image_scores, summarize

    gt = store.group(gt_features_group(subject))
    gt_feats = {n: np.asarray(gt[n][:]) for n in nets}
    out = {}
    for run, part in jobs:
        fg = store.group(features_group(subject, run, part))
        per_image = {m: np.asarray(fg[METRIC_VARS[m]][:]) for m in IMAGE_METRICS}
        per_image.update(per_image_scores(gt_features=gt_feats,
                                          rec_features={n: np.asarray(fg[f"features_{n}"][:]) for n in nets},
                                          metrics=[m for m, spec in METRICS.items() if spec.feature in nets]))
        summary = summarize(per_image)
        for m, s in summary.items():
            s["random_weights"] = bool(METRICS[m].feature in random_nets) if METRICS[m].feature else False
        ds = xr.Dataset({METRIC_VARS[m]: ("image", np.asarray(v, dtype=np.float64)) for m, v in per_image.items()},
                        coords={"image": ("image", ids.astype(np.int64))})
        for m in per_image:
            ds[METRIC_VARS[m]].attrs.update(long_name=m, higher_is_better=bool(METRICS[m].higher_is_better))
        group = metrics_group(subject, run, part)
        region = [Region(0, "image", 0, len(ids), "all")]
        store.write_template(group, ds, region, attrs={**attrs, "summary": json.dumps(summary, default=json_default),
                                                       "run": run, "part": part, "random_nets": list(random_nets),
                                                       INPUTS_ATTR: keys[(run, part)]})
        store.mark_done(group, region[0])
        out[f"{run}/{part}"] = {m: s["mean"] for m, s in summary.items()}
    return out


#: attribute of each metrics group: the identity of everything its scores depend on
INPUTS_ATTR = "fmri2img_inputs"


def _inputs_keys(store: Store, subject: int, runs, parts, salt: str, ids: np.ndarray,
                 images_per_task: int) -> dict[tuple[str, str], str]:
    """(run, part) → a hash of the nets and weights, the test images and the reconstruction's template."""
    keys = {}
    for run in runs:
        for part in parts:
            rgroup = recon_group(subject, run, part)
            if not store.is_complete(rgroup):
                continue
            h = hashlib.sha256(f"{salt}|{images_per_task}|{store.group(rgroup).attrs.get('fmri2img_template', '')}"
                               .encode())
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            keys[(run, part)] = h.hexdigest()[:16]
    return keys


def _finished(store: Store, subject: int, keys: Mapping[tuple[str, str], str]) -> dict | None:
    """The summaries when every (run, part) is scored with the same inputs already; else ``None``."""
    if not keys:
        return None
    out = {}
    for (run, part), key in keys.items():
        group = metrics_group(subject, run, part)
        if not store.is_complete(group) or store.group(group).attrs.get(INPUTS_ATTR) != key:
            return None
        out[f"{run}/{part}"] = {m: s["mean"] for m, s in read_summary(store, subject, run, part).items()}
    return out


def read_summary(store: Store, subject: int, run: str, part: str) -> dict:
    """The summary written by :func:`evaluate` (metric → mean, sem, n_valid, ...)."""
    return json.loads(store.group(metrics_group(subject, run, part)).attrs["summary"])


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: NumPy scalars and arrays as Python values, anything else as str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
