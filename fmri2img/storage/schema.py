"""The store schema: group names, dimensions, dtypes, chunks, coordinates, attributes.

Layout of a project store (every group readable with ``xarray.open_zarr(url, group=...)``)::

    stimuli                      images (image, y, x, rgb) uint8, captions (image, caption) str
    subjects/subjNN/betas        betas (trial, voxel) float32, one chunk row per session
    subjects/subjNN/train        fmri (image, voxel) float32, repeats averaged; n_repeats (image)
    subjects/subjNN/test         same for the shared test images
    subjects/subjNN/rois         masks (roi, voxel) bool over the nsdgeneral voxels
    features/<name>              (image, ...) per extractor
    models/subjNN/<name>, predictions/subjNN/<name>, recon/subjNN/<run>, metrics/subjNN/<run>

Coordinates: ``image`` holds 0-based NSD-73k ids; ``trial`` the 0-based global
trial index; ``session`` the 1-based session; ``voxel_i/j/k`` the voxel's
position in the subject's func1pt8mm volume.  Attributes record units and
provenance (source URL with credentials removed, library versions, config hash).
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from fmri2img.storage import secrets

SCHEMA_VERSION = 1

STIMULI = "stimuli"
#: images per stimulus chunk: 32 × 425 × 425 × 3 bytes ≈ 17 MB
STIMULUS_CHUNK = 32
#: voxels per chunk of betas/train/test: with 750 trials ≈ 12 MB a chunk
VOXEL_CHUNK = 4096
#: images per chunk of train/test fMRI
IMAGE_CHUNK = 2048

_VERSIONED = ("fmri2img", "numpy", "zarr", "xarray", "dask", "nibabel", "h5py", "fsspec")


def subject_key(subject: int) -> str:
    """``3 → "subj03"`` (NSD's naming)."""
    if not isinstance(subject, (int, np.integer)) or not 1 <= int(subject) <= 99:
        raise ValueError(f"subject must be an integer 1–99 (NSD has subjects 1–8), got {subject!r}")
    return f"subj{int(subject):02d}"


def subject_group(subject: int, part: str) -> str:
    """Path of a subject group, e.g. ``subject_group(1, "train") == "subjects/subj01/train"``."""
    return f"subjects/{subject_key(subject)}/{part}"


def library_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def config_hash(config: Mapping[str, Any] | None) -> str:
    """A short hash of a (redacted: see ``Config.redacted``) configuration mapping."""
    if not config:
        return ""
    text = json.dumps(dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance(source: str | None = None, config: Mapping[str, Any] | None = None, **extra: Any) -> dict:
    """Attributes recording where data came from; never credentials."""
    attrs: dict[str, Any] = {
        "fmri2img_schema": SCHEMA_VERSION,
        "library_versions": json.dumps(library_versions(), sort_keys=True),
    }
    if source is not None:
        attrs["source"] = secrets.redact(source)
    if config is not None:
        attrs["config_hash"] = config_hash(config)
    for key, value in extra.items():
        attrs[key] = secrets.redact(value) if isinstance(value, (str, dict)) else value
    return attrs


def voxel_coords(voxels: np.ndarray, volume_shape: Sequence[int]) -> dict[str, tuple]:
    """Coordinates ``voxel_i/j/k`` of flat C-order voxel indices in a 3-D volume."""
    i, j, k = np.unravel_index(np.asarray(voxels, dtype=np.int64), tuple(volume_shape))
    return {
        "voxel_i": ("voxel", i.astype(np.int16)),
        "voxel_j": ("voxel", j.astype(np.int16)),
        "voxel_k": ("voxel", k.astype(np.int16)),
    }


def lazy_zeros(shape: Sequence[int], chunks: Sequence[int], dtype) -> da.Array:
    """A lazy all-zeros array (a template's placeholder), chunks clipped to the shape (at least 1)."""
    return da.zeros(tuple(shape), chunks=tuple(min(c, s) or 1 for c, s in zip(chunks, shape)), dtype=dtype)


def betas_template(
    trial_session: np.ndarray, trial_image: np.ndarray, trial_index: np.ndarray,
    trials_per_session: int, voxels: np.ndarray, volume_shape: Sequence[int],
) -> xr.Dataset:
    """Per-trial betas: (trial, voxel) float32, one chunk row per session."""
    n, v = len(trial_index), len(voxels)
    ds = xr.Dataset(
        {"betas": (("trial", "voxel"), lazy_zeros((n, v), (trials_per_session, VOXEL_CHUNK), np.float32))},
        coords={
            "trial": ("trial", np.asarray(trial_index, dtype=np.int64)),
            "session": ("trial", np.asarray(trial_session, dtype=np.int16)),
            "image": ("trial", np.asarray(trial_image, dtype=np.int64)),
            **voxel_coords(voxels, volume_shape),
        },
    )
    ds["betas"].attrs.update(units="percent signal change", long_name="single-trial GLM betas (raw int16 ÷ 300)")
    ds["image"].attrs["long_name"] = "0-based NSD-73k image id shown on the trial"
    return ds


def averaged_template(image_ids: np.ndarray, voxels: np.ndarray, volume_shape: Sequence[int]) -> xr.Dataset:
    """Repeat-averaged responses: fmri (image, voxel) float32 and n_repeats (image)."""
    n, v = len(image_ids), len(voxels)
    ds = xr.Dataset(
        {
            "fmri": (("image", "voxel"), lazy_zeros((n, v), (IMAGE_CHUNK, VOXEL_CHUNK), np.float32)),
        },
        coords={"image": ("image", np.asarray(image_ids, dtype=np.int64)), **voxel_coords(voxels, volume_shape)},
    )
    ds["fmri"].attrs.update(units="percent signal change", long_name="betas averaged over repeats")
    ds["image"].attrs["long_name"] = "0-based NSD-73k image id, first-presentation order"
    return ds


def rois_template(names: Sequence[str], sources: Sequence[str], voxels: np.ndarray,
                  volume_shape: Sequence[int]) -> xr.Dataset:
    """ROI masks over the nsdgeneral voxels: masks (roi, voxel) bool."""
    ds = xr.Dataset(
        {"masks": (("roi", "voxel"), lazy_zeros((len(names), len(voxels)), (len(names), len(voxels)), bool))},
        coords={
            "roi": ("roi", np.asarray(names, dtype=object)),
            "roi_source": ("roi", np.asarray(sources, dtype=object)),
            **voxel_coords(voxels, volume_shape),
        },
    )
    ds["masks"].attrs["long_name"] = "ROI membership of each nsdgeneral voxel"
    return ds


def stimuli_template(image_ids: np.ndarray, side: int, n_captions: int) -> xr.Dataset:
    """Stimuli (image, y, x, rgb) uint8 in chunks of STIMULUS_CHUNK images, and captions."""
    n = len(image_ids)
    ds = xr.Dataset(
        {
            "images": (("image", "y", "x", "rgb"), lazy_zeros((n, side, side, 3), (STIMULUS_CHUNK, side, side, 3), np.uint8)),
            # strings cannot be lazy zeros: a small array of '' written with the template, filled by regions
            "captions": (("image", "caption"), np.full((n, n_captions), "", dtype=object)),
        },
        coords={"image": ("image", np.asarray(image_ids, dtype=np.int64))},
    )
    ds["captions"].encoding["chunks"] = (min(STIMULUS_CHUNK, max(n, 1)), n_captions)
    ds["images"].attrs.update(units="uint8 RGB", long_name="NSD stimulus images")
    ds["captions"].attrs["long_name"] = "COCO captions ('' where missing)"
    return ds
