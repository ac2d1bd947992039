"""The regress stage: train fMRI → features, one shared factorisation, targets streamed by block.

For a subject and a feature set: read ``subjects/subjNN/{train,test}`` and
``features/<name>`` (aligned by image id), fit :class:`fmri2img.ridge.BlockRidge`
(the Gram matrix and its factor once; targets streamed from Zarr block by block
as Dask tasks), then write

- ``models/subjNN/<name>``: the fitted state (standardised X, factor, alphas,
  scaler) — the model in kernel form, without the voxel × target weights;
- ``predictions/subjNN/<name>``: test predictions (image, *feature dims), one
  region per target block (resumable);
- optionally ``models/subjNN/<name>/weights``: explicit weights (voxel, *dims)
  in target blocks.

The store's fMRI is already in percent signal change (÷300 at ingest), so the
estimator's own ÷300 is off here; z-scoring with train statistics follows.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from typing import Any, Mapping

import dask
import dask.array as da
import numpy as np
import xarray as xr

from fmri2img.config import Config, ConfigError, register_check
from fmri2img.pipeline.features import feature_group
from fmri2img.pipeline.tasks import compute_writes
from fmri2img.ridge import BlockRidge, ImageIdMismatchError, RidgeInputError
from fmri2img.ridge.presets import ALPHA_CLIP_TEXT, ALPHA_CLIP_VISION, ALPHA_VDVAE
from fmri2img.storage import schema
from fmri2img.storage.store import Region, Store

logger = logging.getLogger(__name__)

#: Brain-Diffuser's settings per feature set (REFERENCE.md §3); others choose alpha by GCV
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "vdvae": {"alpha": ALPHA_VDVAE, "calibration": "test_batch"},
    "clip-text": {"alpha": ALPHA_CLIP_TEXT, "calibration": "test_batch"},
    "clip-vision": {"alpha": ALPHA_CLIP_VISION, "calibration": "test_batch"},
    "pixels": {"alpha": [1e1, 1e2, 1e3, 3e3, 1e4, 3e4, 1e5, 1e6], "alpha_groups": "all",
               "calibration": "test_batch"},
}


class RegressError(ValueError):
    """Inputs of the regression do not fit together; the message says how to fix it."""


def model_group(subject: int, name: str) -> str:
    return f"models/{schema.subject_key(subject)}/{name}"


def prediction_group(subject: int, name: str) -> str:
    return f"predictions/{schema.subject_key(subject)}/{name}"


def ridge_options(name: str, options: Mapping[str, Any] | None, kind: str | None = None) -> dict[str, Any]:
    """Brain-Diffuser defaults for extractor kind ``kind`` (default: ``name``) updated with ``options``.

    Unknown keys are refused, naming ``regress.targets.<name>``.  A second feature set of a kind
    (``vdvae-10`` of kind ``vdvae``) gets that kind's defaults (alpha 50,000: also the seed
    paper's reduced-VDVAE alpha).
    """
    default = {"alpha": DEFAULT_OPTIONS["pixels"]["alpha"], "alpha_groups": "all"}
    merged = {**DEFAULT_OPTIONS.get(kind or name, default),
              **dict(options or {})}
    valid = set(inspect.signature(BlockRidge.__init__).parameters) - {"self", "fmri_scale"}
    unknown = sorted(set(merged) - valid)
    if unknown:
        raise RegressError(f"regress.targets.{name}: unknown option(s) {unknown}; valid: {sorted(valid)}")
    if isinstance(merged.get("alpha"), list):
        merged["alpha"] = [float(a) for a in merged["alpha"]]
    try:  # every value the estimator would refuse at fit time is refused here, when the config loads
        BlockRidge(**{**merged, "device": None})._check_params()  # the device is checked where it runs
    except (RidgeInputError, TypeError, ValueError) as exc:
        raise RegressError(f"regress.targets.{name}: {exc}") from None
    return merged


def _aligned_targets(store: Store, name: str, train_ids: np.ndarray, subject: int):
    """(row order for X, lazy Y in feature order, feature dims) with train images matched by id."""
    group = feature_group(name)
    if not store.has_group(group):
        raise RegressError(f"features/{name} is not in the store {store.describe()}: run the features stage "
                           f"with extractor {name!r} first")
    g = store.group(group)
    feature_ids = np.asarray(g["image"][:])
    index = {int(v): i for i, v in enumerate(feature_ids)}
    missing = [int(i) for i in train_ids if int(i) not in index]
    if missing:
        raise ImageIdMismatchError(
            f"features/{name} lacks {len(missing)} of subject {subject}'s {len(train_ids)} train images "
            f"(first missing NSD id {missing[0]}): re-run the features stage after ingesting subject {subject}"
        )
    pos = np.array([index[int(i)] for i in train_ids])
    order = np.argsort(pos, kind="stable")
    arr = g["features"]
    Y = da.from_zarr(arr)
    sorted_pos = pos[order]
    if not np.array_equal(sorted_pos, np.arange(len(feature_ids))):
        Y = Y[sorted_pos]
    dims = tuple(arr.metadata.dimension_names)[1:]
    return order, Y, dims, g.attrs.get("fmri2img_salt", "")


def _salt(options: Mapping[str, Any], feature_salt: str, train_ids: np.ndarray, n_voxels: int) -> str:
    text = json.dumps({"options": options, "features": feature_salt, "n_voxels": n_voxels}, sort_keys=True,
                      default=str)
    h = hashlib.sha256(text.encode())
    h.update(np.asarray(train_ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _save_model(store: Store, group: str, est: BlockRidge, train_ids: np.ndarray, attrs: dict) -> None:
    state = est.get_model_state()
    data_vars = {}
    for key, value in state["arrays"].items():
        value = np.asarray(value)
        data_vars[key] = ([f"{key}_{i}" for i in range(value.ndim)], value)
    ds = xr.Dataset(data_vars, coords={"train_image": ("train_image", np.asarray(train_ids, np.int64))})
    region = [Region(0, "train_image", 0, len(train_ids), "model")]
    store.write_template(group, ds, region, attrs={**attrs, "state_attrs": json.dumps(state["attrs"], default=str)})
    store.mark_done(group, region[0])


def load_model(store: Store, subject: int, name: str) -> BlockRidge:
    """Reload a fitted model from ``models/subjNN/<name>`` (targets re-opened from the store)."""
    group = model_group(subject, name)
    if not store.is_complete(group):
        raise RegressError(f"{group} is not in the store (or unfinished): run the regress stage first")
    g = store.group(group)
    arrays = {k: np.asarray(g[k][:]) for k in g.array_keys() if k != "train_image"}
    attrs = json.loads(g.attrs["state_attrs"])
    train_ids = np.asarray(g["train_image"][:])
    order, Y, _, _ = _aligned_targets(store, name, train_ids, subject)
    if not np.array_equal(order, np.arange(len(order))):
        raise RegressError(f"{group}: stored train images are not in feature order; refit with regress")
    return BlockRidge.from_model_state({"arrays": arrays, "attrs": attrs}, Y)


def _write_block(store: Store, group: str, region: Region, values: np.ndarray) -> int:
    return store.write_region(group, region, {"features": values})


def write_blocks(store: Store, group: str, lazy: da.Array, todo: list[Region], stage: str,
                 client, progress: bool, block_option: str | None = None) -> None:
    """Compute ``lazy[:, region]`` for every region and write it (one task per region).

    ``block_option`` names the option that makes the blocks smaller (said when a worker dies of one).
    """
    writes = [
        dask.delayed(_write_block, pure=False)(store, group, r, lazy[(slice(None), r.slice)],
                                               dask_key_name=f"{stage}-{r.label}")
        for r in todo
    ]
    if not writes:
        return
    compute_writes(writes, stage=stage, client=client, progress=progress, block_option=block_option)


def regions_along(chunks: tuple[int, ...], dim: str, prefix: str) -> list[Region]:
    """One :class:`Region` per chunk of ``chunks`` along ``dim``, labelled ``{prefix}-NNNN``."""
    out, start = [], 0
    for i, c in enumerate(chunks):
        out.append(Region(i, dim, start, start + c, f"{prefix}-{i:04d}"))
        start += c
    return out


def regress(
    store: Store, subject: int, name: str, options: Mapping[str, Any] | None = None, *, client=None,
    save_weights: bool = False, progress: bool = True, config: Mapping[str, Any] | None = None,
    kind: str | None = None,
) -> dict:
    """Fit ``features/<name>`` from subject ``subject``'s train fMRI and predict its test images.

    Parameters
    ----------
    store : Store
    subject : int
    name : str
        Feature set (``vdvae``, ``clip-text``, ``clip-vision``, ``pixels``, ...).
    options : mapping, optional
        :class:`BlockRidge` options (alpha or an alpha grid, alpha_groups, calibration,
        solver, target_batch, ...); Brain-Diffuser's defaults otherwise.
    save_weights : bool
        Also write the explicit voxel × target weights (large: 12 GB for CLIP-vision).
    kind : str, optional
        Extractor kind whose defaults apply; default: the kind recorded with ``features/<name>``
        (else ``name``).

    Returns
    -------
    dict
        Shapes, alphas and timings.
    """
    t0 = time.perf_counter()
    if kind is None and store.has_group(feature_group(name)):
        kind = store.group(feature_group(name)).attrs.get("kind")
    opts = ridge_options(name, options, kind)
    train = store.open_dataset(schema.subject_group(subject, "train"))
    test = store.open_dataset(schema.subject_group(subject, "test"))
    train_ids = train.image.values
    order, Y, dims, feature_salt = _aligned_targets(store, name, train_ids, subject)
    X = train.fmri.values[order]
    salt = _salt(opts, feature_salt, train_ids[order], X.shape[1])
    mgroup, pgroup = model_group(subject, name), prediction_group(subject, name)
    attrs = {**schema.provenance(config=config), "subject": int(subject), "features": feature_group(name),
             "fmri2img_salt": salt, "ridge_options": json.dumps(opts, default=str),
             "fmri_units": "percent signal change (÷300 at ingest), z-scored with train statistics"}

    if store.is_complete(mgroup) and store.group(mgroup).attrs.get("fmri2img_salt") == salt:
        est = load_model(store, subject, name)
        refit = False
    else:
        est = BlockRidge(**opts, fmri_scale=None).fit(X, Y)
        _save_model(store, mgroup, est, train_ids[order], attrs)
        refit = True

    pred = est.predict(test.fmri.values)
    pred = pred if isinstance(pred, da.Array) else da.from_array(pred)
    axis_dim = dims[0] if dims else "feature"
    regions = regions_along(pred.chunks[1], axis_dim, "block")
    template = xr.Dataset(
        {"features": (("image", *dims), pred.astype(np.float32))},
        coords={"image": ("image", test.image.values.astype(np.int64))},
    )
    template["features"].attrs["long_name"] = f"predicted {name} features of the test images"
    template = template.chunk({"image": -1})
    todo = store.ensure_template(pgroup, template, regions, attrs=attrs, overwrite=refit)
    option = f"[regress.targets.{name}] target_batch (target columns per block)"
    write_blocks(store, pgroup, pred.astype(np.float32), todo, f"regress-{schema.subject_key(subject)}-{name}",
                 client, progress, option)

    if save_weights:
        W = est.get_weights()
        W = W if isinstance(W, da.Array) else da.from_array(W)
        wgroup = f"{mgroup}/weights"
        wtemplate = xr.Dataset({"features": (("voxel", *dims), W.astype(np.float32))}).chunk({"voxel": -1})
        wregions = regions_along(W.chunks[1], axis_dim, "block")
        wtodo = store.ensure_template(wgroup, wtemplate, wregions, attrs=attrs, overwrite=refit)
        write_blocks(store, wgroup, W.astype(np.float32), wtodo, f"weights-{name}", client, progress, option)

    alpha = est.alpha_
    summary = {
        "subject": int(subject), "features": name, "n_train": int(X.shape[0]), "n_test": int(test.sizes["image"]),
        "n_voxels": int(X.shape[1]), "target_shape": list(est.target_shape_), "form": est.form_,
        "alphas": [float(a) for a in np.atleast_1d(est.alphas_)], "refit": refit,
        "blocks_written": len(todo), "seconds": round(time.perf_counter() - t0, 3),
    }
    if np.ndim(alpha) == 0:
        summary["alpha"] = float(alpha)
    logger.info("regress subj%02d %s: %s", subject, name, summary)
    return summary


def check_config(config: Config) -> None:
    """``[regress.targets]``: each feature set's ridge options are valid for its kind."""
    for name in config.regress_features():
        try:
            ridge_options(name, config.regress.targets.get(name), config.extractor_kind(name))
        except RegressError as exc:
            raise ConfigError(str(exc)) from None


register_check("regress", check_config)
