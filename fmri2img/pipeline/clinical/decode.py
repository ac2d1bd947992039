"""The decode stage: a fitted subject's models applied to new scans (the clinician's path).

``decode(store, subject, betas_url, runs=...)``:

1. reads the new betas (:mod:`fmri2img.storage.decoded`: a session file in the subject's
   func1pt8mm space, masked with its nsdgeneral mask, or an array of its masked voxels),
   keeps the chosen trials, refuses NaN voxels, and writes them to ``decoded/<name>/fmri``;
2. predicts every feature set the runs need from the stored models in kernel form
   (``models/subjNN/<feature>``) with a calibration that does not depend on the other
   scans decoded with it (``"loo"``: the estimator's leave-one-out statistics of the
   training images; the regress stage's default ``"test_batch"`` is transductive and
   refused here) → ``decoded/<name>/predictions/<feature>``;
3. reconstructs each run (stage 1, then Versatile Diffusion when the run has a preset),
   each trial seeded by (run seed, its image id when known, else its 1-based trial number)
   → ``decoded/<name>/recon/<run>/{stage1,final}`` and PNGs;
4. when the images shown are known (a trials CSV with ``image``, or an NSD-named session
   file of the subject's design) and in ``stimuli``, scores the eight metrics →
   ``decoded/<name>/metrics/<run>/<part>``;
5. writes a page (``decoded/<name>/index.html`` under the outputs URL).

Every group is written template-first with completion records, salted by the input's
values and the models', so a rerun redoes only what is missing or changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from fmri2img.pipeline.clinical import page as decode_page
from fmri2img.pipeline.clinical.common import (CALIBRATIONS, UNKNOWN_IMAGE, DecodeError, DecodeInput, group,
                                               load_models, random_weights, subject_space)
from fmri2img.pipeline.reconstruct import STAGE1, RunSpec, gpu_resources, run_stage2
from fmri2img.pipeline.regress import model_group, regions_along, write_blocks
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import decoded as inputs
from fmri2img.storage import nsd, schema, secrets, urls
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Region, Store, regular_regions

logger = logging.getLogger(__name__)

#: names other modules and users take from here (defined in common, which every clinical module shares)
__all__ = ["CALIBRATIONS", "UNKNOWN_IMAGE", "DecodeError", "DecodeInput", "decode", "predict", "read_input",
           "reconstruct", "reconstruct_rows"]

def read_input(store: Store, space: inputs.SubjectSpace, url: str, *, name: str | None = None,
               trials: str | None = None, trials_file: str | None = None, betas_scale: str | float = "nsd",
               storage_options: Mapping[str, Any] | None = None,
               mask_options: Mapping[str, Any] | None = None) -> DecodeInput:
    """Read, select and check the rows to decode (one clear error per bad input)."""
    if trials and trials_file:
        raise DecodeError("give --trials or --trials-file, not both")
    kind = inputs.input_kind(url)
    inputs.check_subject(url, space.subject)
    if kind in ("npy", "zarr"):
        fmri = inputs.read_array(url, storage_options, space, scale=1.0 if betas_scale == "nsd" else betas_scale)
    else:
        if not space.mask_url:
            raise DecodeError(f"no nsdgeneral mask known for subject {space.subject}: give --mask (the subject's "
                              f"func1pt8mm nsdgeneral.nii.gz)")
        fmri = inputs.read_session(url, storage_options, space, scale=betas_scale, mask_options=mask_options)
    images, images_from = np.full(len(fmri), UNKNOWN_IMAGE, np.int64), "unknown"
    if trials_file:
        rows, ids = inputs.read_trials_csv(trials_file, storage_options, len(fmri))
        if ids is not None:
            images[rows], images_from = ids, f"trials file {secrets.redact(trials_file)}"
    else:
        rows = inputs.parse_trials(trials, len(fmri)) if trials else np.arange(len(fmri))
        session = inputs.session_of(url) if kind in ("nii.gz", "hdf5") else None
        design = _design_images(store, space, session, mask_options) if session else None
        if design is not None:
            images, images_from = design, f"NSD design, session {session}"
    fmri = fmri[rows]
    inputs.check_finite(fmri, url, rows)
    return DecodeInput(name or inputs.input_name(url), secrets.redact(url), fmri, rows + 1, images[rows], images_from)


def _design_images(store: Store, space: inputs.SubjectSpace, session: int,
                   options: Mapping[str, Any] | None) -> np.ndarray | None:
    """0-based image ids of an NSD session's trials from the ingest source's design, if it is there."""
    source = store.group(schema.subject_group(space.subject, "betas")).attrs.get("source", "")
    if not source:
        return None
    fs, root = urls.filesystem(source, dict(options or {}) or None)
    path = nsd.NSDLayout(root).expdesign()
    if not fs.exists(path):
        logger.info("no design at %s: the images of session %d are unknown", secrets.redact(source), session)
        return None
    design = nsd.read_expdesign(fs, path)
    if session > design.n_sessions:
        return None
    split = nsd.split_trials(design, space.subject, [session])
    return split.trial_image if len(split.trial_image) == space.trials_per_session else None


# -- predictions --------------------------------------------------------------------------------

def predict(store: Store, subject: int, data: DecodeInput, models: Mapping[str, Any], calibration: str, *,
            client=None, progress: bool = True, attrs: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write ``decoded/<name>/predictions/<feature>`` (regions = target blocks); return each group's salt."""
    salts = {}
    for feature, est in models.items():
        model_salt = getattr(est, "salt", None) or store.group(model_group(subject, feature)).attrs.get(
            "fmri2img_salt", "")  # an AlignedModel names its own (alignment + reference model)
        salt = hashlib.sha256(json.dumps([data.key, calibration, model_salt]).encode()).hexdigest()[:16]
        pred = est.predict(data.fmri)
        pred = (pred if isinstance(pred, da.Array) else da.from_array(pred)).astype(np.float32)
        dims = tuple(store.group(f"features/{feature}")["features"].metadata.dimension_names)[1:]
        pred = pred.rechunk({0: -1})  # coordinates stay NumPy: written with the template, not as lazy arrays
        template = xr.Dataset({"features": (("trial", *dims), pred)}, coords=_row_coords(data))
        template["features"].attrs["long_name"] = f"predicted {feature} features of the decoded trials"
        regions = regions_along(pred.chunks[1], dims[0] if dims else "feature", "block")
        pgroup = group(data.name, "predictions", feature)
        todo = store.ensure_template(pgroup, template, regions, salt=salt,
                                     attrs={**(attrs or {}), "model": model_group(subject, feature)})
        write_blocks(store, pgroup, pred, todo, f"decode-{data.name}-{feature}", client, progress)
        salts[feature] = salt
    return salts


def _row_coords(data: DecodeInput) -> dict:
    return {"trial": ("trial", data.trials.astype(np.int64)), "image": ("trial", data.images.astype(np.int64)),
            "seed_id": ("trial", data.seed_ids)}


# -- reconstruction -----------------------------------------------------------------------------

def reconstruct_rows(predictions: Mapping[str, np.ndarray], seed_ids: np.ndarray, run: RunSpec
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Stage 1 and (with a preset) stage 2 of predicted features, seeded by (run seed, seed id).

    Returns
    -------
    stage1 : uint8 array of shape (n, 512, 512, 3)
    final : uint8 array of shape (n, size, size, 3), or None without a preset
    redone_fp32 : bool array of shape (n,), or None
    """
    ids = np.asarray(seed_ids, np.int64)
    stage1 = STAGE1[run.stage1_kind](np.asarray(predictions[run.stage1]), ids, run)
    if not run.preset:
        return stage1, None, None
    contexts = {n: np.asarray(predictions[n], np.float32) for n in (run.vision, run.text) if n in predictions}
    final, info = run_stage2(stage1, ids, contexts, run)
    return stage1, final, np.asarray(info.get("redone_fp32", np.zeros(len(ids), bool)), bool)


def recon_block(store: Store, name: str, run: RunSpec, region: Region, outputs: Outputs | None) -> dict:
    """Reconstruct one partition of the decoded trials (task)."""
    t0 = time.perf_counter()
    preds = {f: np.asarray(store.group(group(name, "predictions", f))["features"][region.slice])
             for f in run.features_needed()}
    g = store.group(group(name, "predictions", run.stage1))
    seeds, trials = np.asarray(g["seed_id"][region.slice]), np.asarray(g["trial"][region.slice])
    stage1, final, flags = reconstruct_rows(preds, seeds, run)
    store.write_region(group(name, "recon", run.name, "stage1"), region, {"images": stage1})
    if final is not None:
        store.write_region(group(name, "recon", run.name, "final"), region, {"images": final, "redone_fp32": flags})
    if outputs is not None:
        labels = [decode_page.trial_label(int(t)) for t in trials]
        for part, images in (("stage1", stage1), ("final", final)):
            if images is not None:
                outputs.write_pngs(f"decoded/{name}/recon/{run.name}/{part}", labels, images)
    return {"trials": len(seeds), "seconds": time.perf_counter() - t0}


def _recon_template(data: DecodeInput, size: int, chunk: int, final: bool) -> xr.Dataset:
    n = len(data.trials)
    # dtype by keyword: da.zeros ignores a positional dtype (the images were stored as float64)
    ds = xr.Dataset({"images": (("trial", "y", "x", "rgb"), da.zeros((n, size, size, 3), dtype=np.uint8,
                                                                      chunks=(chunk, size, size, 3)))},
                    coords=_row_coords(data))
    if final:
        ds["redone_fp32"] = ("trial", da.zeros((n,), dtype=bool, chunks=(chunk,)))
    ds["images"].attrs["units"] = "uint8 RGB"
    return ds


def reconstruct(store: Store, data: DecodeInput, run: RunSpec, salts: Mapping[str, str], *, client=None,
                images_per_task: int = 8, outputs: Outputs | None = None, progress: bool = True,
                attrs: Mapping[str, Any] | None = None) -> dict:
    """``decoded/<name>/recon/<run>/{stage1,final}``, one task per partition of trials; resumable."""
    from fmri2img.models.vd_sampler import preset

    regions = regular_regions("trial", len(data.trials), images_per_task, "trials")
    salt = json.dumps({"run": run.__dict__, "predictions": {f: salts[f] for f in run.features_needed()}},
                      sort_keys=True, default=str)
    parts = {"stage1": _recon_template(data, 512, images_per_task, False)}
    if run.preset:
        parts["final"] = _recon_template(data, preset(run.preset, **run.settings).size, images_per_task, True)
    todo: dict[int, Region] = {}
    for part, template in parts.items():
        for r in store.ensure_template(group(data.name, "recon", run.name, part), template, regions, salt=salt,
                                       attrs={**(attrs or {}), "run": run.name, "part": part}):
            todo[r.index] = r
    tasks = [Task(r.label, recon_block, (store, data.name, run, r, outputs)) for r in sorted(todo.values(),
                                                                                              key=lambda r: r.index)]
    device = str(run.vd.get("device", "auto"))
    run_tasks(tasks, stage=f"decode-{data.name}-{run.name}", client=client, progress=progress,
              resources=gpu_resources(client, device) if run.preset else None,
              block_option=f"[decode] images_per_task (now {images_per_task})")
    return {"regions_written": len(tasks), "parts": list(parts)}




# -- the stage ----------------------------------------------------------------------------------

def decode(store: Store, subject: int, betas: str | None, runs: Sequence[RunSpec], *, features: Sequence[str] = (),
           name: str | None = None,
           trials: str | None = None, trials_file: str | None = None, betas_scale: str | float = "nsd",
           storage_options: Mapping[str, Any] | None = None, mask: str | None = None,
           mask_options: Mapping[str, Any] | None = None, calibration: str = "loo",
           nets: Sequence[str] | None = None, weights: Mapping[str, Any] | None = None, device: str = "auto",
           outputs: Outputs | None = None, images_per_task: int = 8, client=None, progress: bool = True,
           config: Mapping[str, Any] | None = None, via: str | None = None) -> dict:
    """Decode new betas of a fitted ``subject`` into reconstructions (and metrics when the images are known).

    Parameters
    ----------
    betas : str or None
        URL of a session file (``.nii.gz``, ``.nii``, ``.hdf5``, ``.h5``) in the subject's func1pt8mm space,
        or of the subject's masked voxels (``.npy``, ``.zarr``), trials × voxels. None with ``via``, for a
        BIDS participant (``fmri2img glm --bids``): its own trials from the store whose images no fit
        used (:func:`fmri2img.pipeline.clinical.participant.own_trials`), scored against what it saw.
    runs : sequence of RunSpec
        Reconstruction runs (see :func:`stored_run` for the ones the reconstruct stage used).
    features : sequence of str
        Feature sets to predict besides those the runs need.
    trials, trials_file : str, optional
        1-based trials to decode (``"1-750"``), or a CSV with ``trial`` and optionally ``image``.
    betas_scale : "nsd" or float
        Session files: NSD's int16 × 300, or the divisor of float files. Arrays: their divisor
        (``"nsd"`` means 1: arrays are taken to be in percent signal change).
    calibration : {"loo", "none"}
        See :data:`CALIBRATIONS`; recorded in every group's attributes and on the page.
    nets, weights, device
        Evaluation networks (default all six), their ``[weights]`` and device, as in evaluate.
    via : str, optional
        ``"align-to-subjMM"``: ``subject`` is a new subject aligned to subject MM (fmri2img align);
        its scans are decoded by MM's models through the alignment, and trials showing an image
        that any of those fits used are decoded but not scored (:mod:`fmri2img.pipeline.clinical.align`).

    Returns
    -------
    dict
        Name, trials, calibration, groups, metrics means per run/part, the page URL, timings.
    """
    t0 = time.perf_counter()
    if not runs and not features:
        raise DecodeError("no reconstruction run to decode with: give --runs (e.g. brain-diffuser,pixels)")
    space = subject_space(store, subject, mask)
    features = sorted({f for run in runs for f in run.features_needed()} | set(features))
    if via:
        from fmri2img.pipeline.clinical import align

        models = align.aligned_models(store, subject, via, features, calibration)
    else:
        models = load_models(store, subject, features, calibration)
    if via and not betas:  # a BIDS participant's own trials from the store, those no fit used
        from fmri2img.pipeline.clinical.participant import own_trials

        if trials or trials_file:
            raise DecodeError("--trials / --trials-file select rows of --betas; without --betas decode takes the "
                              "subject's trials from the store (those no fit used)")
        data = own_trials(store, subject, align.fitted_images(store, subject, align.reference_of(via), features), name)
    elif not betas:
        raise DecodeError("no betas to decode: give --betas URL (or, for a BIDS participant aligned with fmri2img "
                          "align, --via align-to-subjMM to decode its own trials from the store)")
    else:
        data = read_input(store, space, betas, name=name, trials=trials, trials_file=trials_file,
                          betas_scale=betas_scale, storage_options=storage_options, mask_options=mask_options)
    if via and betas:
        data = align.hide_fitted(data, align.fitted_images(store, subject, align.reference_of(via), features))
    attrs = {**schema.provenance(config=config), "subject": int(subject), "input": data.url,
             "calibration": calibration, "calibration_note": CALIBRATIONS[calibration],
             "images_from": data.images_from, **({"via": via} if via else {})}
    fgroup = group(data.name, "fmri")
    template = xr.Dataset({"fmri": (("trial", "voxel"), da.from_array(data.fmri, chunks=data.fmri.shape))},
                          coords=_row_coords(data))
    template["fmri"].attrs["units"] = "percent signal change"
    region = Region(0, "trial", 0, len(data.trials), "input")
    if store.ensure_template(fgroup, template, [region], salt=data.key, attrs=attrs):
        store.write_region(fgroup, region, {"fmri": data.fmri})
    salts = predict(store, subject, data, models, calibration, client=client, progress=progress, attrs=attrs)
    metrics: dict[str, dict] = {}
    for run in runs:
        reconstruct(store, data, run, salts, client=client, images_per_task=images_per_task, outputs=outputs,
                    progress=progress, attrs={**attrs, "random_weights": random_weights(run)})
    if data.known.sum() >= 2:
        from fmri2img.pipeline.clinical.scores import score

        metrics = score(store, data, runs, nets=nets, weights=weights or {}, device=device, client=client,
                        progress=progress, attrs=attrs)
    page = None
    if outputs is not None:
        page = decode_page.write_page(store, outputs, data, runs, metrics, attrs, random_weights)
    summary = {"subject": int(subject), "name": data.name, "input": data.url, "trials": int(len(data.trials)),
               "images_known": int(data.known.sum()), "images_from": data.images_from,
               "calibration": calibration, "group": group(data.name), "runs": [r.name for r in runs], "via": via,
               "random_weights": any(random_weights(r) for r in runs), "metrics": metrics, "page": page,
               "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("decode %s: %s", data.name, summary)
    return summary
