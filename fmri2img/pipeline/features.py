"""The features stage: image partitions of ``stimuli`` → extractor → ``features/<name>``.

One Dask task per block of images.  The model is built once per worker process
and reused by every task there (``_EXTRACTORS`` cache).  Extractors on a GPU
ask for the ``GPU`` resource so they land on GPU workers.  Each image's
randomness comes from (run seed, image id), so features do not depend on the
partitioning, the worker count or retries.  Resumable per block.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any, Mapping

import dask.array as da
import numpy as np
import xarray as xr

from fmri2img.storage.weights import opened_options
from fmri2img.models import extractors as registry
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import schema
from fmri2img.storage.store import Region, Store, regular_regions

logger = logging.getLogger(__name__)

#: per-process cache of built extractors, keyed by (name, options)
_EXTRACTORS: dict[str, Any] = {}
_LOCK = threading.Lock()

#: target bytes per chunk of a feature array
CHUNK_BYTES = 32 * 2**20


def feature_group(name: str) -> str:
    return f"features/{name}"


def _cache_key(name: str, options: Mapping[str, Any]) -> str:
    return name + ":" + json.dumps(dict(options), sort_keys=True, default=str)


def get_extractor(name: str, options: Mapping[str, Any]) -> Any:
    """The extractor ``name`` built with ``options``, once per process."""
    key = _cache_key(name, options)
    with _LOCK:
        if key not in _EXTRACTORS:
            t0 = time.perf_counter()
            _EXTRACTORS[key] = registry.build(name, **opened_options(options))
            logger.info("built extractor %s in %.1f s", name, time.perf_counter() - t0)
        return _EXTRACTORS[key]


def feature_chunks(n_images: int, images_per_chunk: int, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of (image, *feature dims): whole image blocks; the leading feature axes are halved
    until a chunk holds at most ``CHUNK_BYTES`` (so the regression reads target blocks cheaply)."""
    rows = max(1, min(images_per_chunk, n_images))
    chunks = [int(s) for s in feature_shape]
    while 4 * rows * int(np.prod(chunks)) > CHUNK_BYTES:
        axis = next((i for i, c in enumerate(chunks) if c > 1), None)
        if axis is None:
            break
        chunks[axis] = -(-chunks[axis] // 2)
    return (rows, *chunks)


def features_template(image_ids: np.ndarray, extractor: Any, images_per_chunk: int) -> xr.Dataset:
    shape = (len(image_ids), *extractor.feature_shape)
    chunks = feature_chunks(len(image_ids), images_per_chunk, tuple(extractor.feature_shape))
    dims = ("image", *extractor.feature_dims)
    ds = xr.Dataset(
        {"features": (dims, da.zeros(shape, chunks=chunks, dtype=np.float32))},
        coords={"image": ("image", np.asarray(image_ids, dtype=np.int64))},
    )
    ds["features"].attrs["long_name"] = f"{extractor.name} features of the stimuli"
    return ds


def extract_block(store: Store, name: str, options: Mapping[str, Any], region: Region, seed: int) -> dict:
    """Extract features of one block of images and write them (task)."""
    t0 = time.perf_counter()
    extractor = get_extractor(name, options)
    stim = store.group(schema.STIMULI)
    ids = np.asarray(stim["image"][region.slice])
    if extractor.input == "captions":
        batch = np.asarray(stim["captions"][region.slice]).astype(object).astype(str)
    else:
        batch = np.asarray(stim["images"][region.slice])
    values = np.asarray(extractor.extract(batch, ids, seed), dtype=np.float32)
    bad = ~np.isfinite(values).reshape(len(ids), -1).all(axis=1)
    if bad.any():
        raise ValueError(f"features/{name}: the extractor produced NaN/inf for images {ids[bad][:5].tolist()} "
                         f"(region {region.label}); try dtype='float32'")
    store.write_region(feature_group(name), region, {"features": values})
    return {"images": len(ids), "seconds": time.perf_counter() - t0}


def _salt(extractor: Any, seed: int) -> str:
    text = json.dumps({"attrs": extractor.attrs(), "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def extract_features(
    store: Store, name: str, options: Mapping[str, Any], *, seed: int = 0, client=None,
    images_per_task: int = 128, progress: bool = True, config: Mapping[str, Any] | None = None,
) -> dict:
    """Compute ``features/<name>`` for every image of ``stimuli``; resumable.

    Parameters
    ----------
    store : Store
    name : str
        Feature name: the group ``features/<name>``, and the extractor kind (a key of
        :data:`fmri2img.models.extractors.EXTRACTORS`) unless ``options`` has ``kind``.
    options : mapping
        Extractor options (``kind``, ``tiny``, ``weights``, ``device``, ``dtype``, ``batch_size``, ...).
    seed : int
        Run seed; each image's randomness comes from (seed, image id).
    images_per_task : int
        Images per task and per chunk along ``image``.
    """
    t0 = time.perf_counter()
    extractor = get_extractor(name, options)  # built here too: checks options and weights before any task
    if not store.has_group(schema.STIMULI):
        raise ValueError(f"the store {store.describe()} has no stimuli: run the ingest stage first")
    ids = np.asarray(store.group(schema.STIMULI)["image"][:])
    group = feature_group(name)
    salt = _salt(extractor, seed)
    attrs = {**schema.provenance(config=config), **{"extractor": name, "kind": registry.kind_of(name, options),
             "seed": int(seed),
             "random_weights": bool(extractor.random_weights),
             "extractor_attrs": json.dumps(extractor.attrs(), sort_keys=True, default=str)}}
    if store.has_group(group) and store.group(group).attrs.get("fmri2img_salt") == salt:
        present = np.asarray(store.group(group)["image"][:])
        new = ids[len(present):] if np.array_equal(ids[:len(present)], present) else None
        if new is not None and len(new):
            regions = store.extend_template(group, "image", new, images_per_task, "images")
        elif new is not None:
            regions = store.regions(group)
        else:
            regions = None
        if regions is not None:
            done = store.done_regions(group)
            todo = [r for r in regions if r.index not in done]
        else:
            todo = None
    else:
        todo = None
    if todo is None:
        template = features_template(ids, extractor, images_per_task)
        regions = regular_regions("image", len(ids), images_per_task, "images")
        store.write_template(group, template, regions, attrs={**attrs, "fmri2img_salt": salt})
        todo = regions
    resources = {"GPU": 1} if str(options.get("device", "auto")).startswith("cuda") else None
    tasks = [Task(r.label, extract_block, (store, name, dict(options), r, seed)) for r in todo]
    run_tasks(tasks, stage=f"features-{name}", client=client, progress=progress, resources=resources,
              block_option=f"[features] images_per_task (now {images_per_task})")
    summary = {"extractor": name, "images": int(len(ids)), "blocks_written": len(todo),
               "feature_shape": list(extractor.feature_shape), "random_weights": bool(extractor.random_weights),
               "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("features %s: %s", name, summary)
    return summary
