"""A BIDS participant's stimuli: what each design condition showed, and which NSD image it is.

The events' stimulus column (``--stim-column``) names each trial's stimulus in one of three ways:

- **files** (BIDS ``stim_file``: a path relative to the dataset's ``/stimuli``, specification "Task
  events"): each file is read, resized to the store's stimulus side as the store's other pictures
  (PIL bicubic, after a centred square crop when it is not square; NSD's stimuli are square), and
  matched to the store's ``stimuli`` **by its pixels**, never by its name: the three nearest stored
  images by 16 × 16 thumbnails are compared over the whole picture, and the closest is accepted when
  its mean absolute difference is at most :data:`MATCH_TOLERANCE` grey levels and at most half the
  next one's (an exact copy always is; a JPEG or resized copy of an NSD image differs by 1-11 grey
  levels, two different photographs by tens);
- **ids**: every value is an integer, taken as the 0-based NSD-73k id as it is (a negative one:
  unknown);
- **labels** (``trial_type`` and the like): the image is unknown.

The pixels of every file-named condition go to ``subjects/subjNN/stimuli`` (so that a decode of
the person's trials shows and scores what they saw, NSD image or not). Matching reads the store's
stimuli once, as thumbnails computed chunk by chunk (one Dask task per stored chunk).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fmri2img.storage import schema
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "MATCH_TOLERANCE", "MATCH_MARGIN", "ParticipantStimuli", "stimulus_kind", "read_stimuli",
           "match_stimuli", "participant_stimuli"]

#: file endings that make a stimulus column a column of files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: largest mean absolute difference (grey levels, 0-255) of a stimulus file and the stored image it matches
#: (measured on mini-NSD's photographs at 64 px: JPEG quality 95 / 75 / 50 copies differ by at most 5.4 / 8.7 /
#: 11.0, a bicubic resize there and back by 3.3; two different images by 28 or more)
MATCH_TOLERANCE = 12.0
#: the closest stored image must be at least this many times closer than the next (else: ambiguous, no match)
MATCH_MARGIN = 2.0
#: side of the thumbnails compared first
THUMB = 16


@dataclass(frozen=True)
class ParticipantStimuli:
    """What each condition showed.

    Attributes
    ----------
    names : list of str
        The stimulus column's value of each condition.
    kind : {"files", "ids", "labels"}
    images : int array of shape (n_conditions,)
        0-based NSD-73k id of each condition (-1: not an image in the store, or unknown).
    pixels : uint8 array of shape (n_conditions, side, side, 3), or None
        The files' pictures at the store's side (``kind == "files"``).
    """

    names: list
    kind: str
    images: np.ndarray
    pixels: np.ndarray | None = None

    @property
    def n_matched(self) -> int:
        return int((self.images >= 0).sum())


def stimulus_kind(names: Sequence[str]) -> str:
    """``"files"`` (any value ends in an image suffix), ``"ids"`` (every value an integer) or ``"labels"``."""
    values = [str(n).strip() for n in names]
    if any(v.lower().endswith(IMAGE_SUFFIXES) for v in values):
        return "files"
    if values and all(v.lstrip("+-").isdigit() for v in values):
        return "ids"
    return "labels"


def _square(picture: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = picture.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(np.ascontiguousarray(picture[top:top + s, left:left + s]))
    if s != side:
        img = img.resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_stimuli(dataset, names: Sequence[str], side: int | None) -> np.ndarray:
    """Every named stimulus file of ``dataset`` (a :class:`~fmri2img.storage.bids.BIDSDataset`) at ``side``.

    ``side`` None: the smallest side of the first file. Returns uint8 (n, side, side, 3).
    """
    out = []
    for name in names:
        picture = dataset.read_stimulus(name)
        side = side or int(min(picture.shape[:2]))
        out.append(_square(picture, side))
    return np.stack(out) if out else np.zeros((0, side or 1, side or 1, 3), np.uint8)


def _thumbs(images: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 → (n, THUMB·THUMB·3) float32 box-filtered thumbnails."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((THUMB, THUMB), Image.Resampling.BOX),
                                np.float32).reshape(-1) for p in images]) if len(images) else \
        np.zeros((0, THUMB * THUMB * 3), np.float32)


def stored_thumbnails(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """(ids, thumbnails) of the store's ``stimuli``: one Dask task per stored chunk of images."""
    import dask.array as da

    g = store.group(schema.STIMULI)
    images = da.from_zarr(g["images"])
    thumbs = images.map_blocks(lambda b: _thumbs(np.asarray(b)), dtype=np.float32, drop_axis=[2, 3],
                               chunks=(images.chunks[0], (THUMB * THUMB * 3,)))
    return np.asarray(g["image"][:], np.int64), np.asarray(thumbs.compute())


def match_stimuli(store: Store, pixels: np.ndarray, *, candidates: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The stored NSD image each picture is (by pixels), -1 where none is.

    Parameters
    ----------
    pixels : uint8 array of shape (n, side, side, 3)
        At the store's stimulus side.

    Returns
    -------
    ids : int array of shape (n,)
        0-based NSD-73k id, or -1.
    difference : float array of shape (n,)
        Mean absolute difference (grey levels) to the nearest stored image checked.
    """
    n = len(pixels)
    ids, diff = np.full(n, -1, np.int64), np.full(n, np.inf)
    if not n or not store.has_group(schema.STIMULI):
        return ids, diff
    stored_ids, stored = stored_thumbnails(store)
    if not len(stored_ids):
        return ids, diff
    mine = _thumbs(pixels)
    d2 = (mine ** 2).sum(1)[:, None] + (stored ** 2).sum(1)[None, :] - 2 * mine @ stored.T
    nearest = np.argsort(d2, axis=1)[:, :candidates]
    wanted = np.unique(nearest)
    full = dict(zip(wanted.tolist(), store.group(schema.STIMULI)["images"].get_orthogonal_selection((wanted,))))
    for k in range(n):
        mads = np.array([np.abs(full[int(j)].astype(np.int16) - pixels[k].astype(np.int16)).mean()
                         for j in nearest[k]])
        order = np.argsort(mads)
        best, second = float(mads[order[0]]), float(mads[order[1]]) if len(order) > 1 else np.inf
        diff[k] = best
        if best == 0 or (best <= MATCH_TOLERANCE and second >= MATCH_MARGIN * best):
            ids[k] = stored_ids[nearest[k][order[0]]]
        elif best <= MATCH_TOLERANCE:
            logger.warning("stimulus %d is about as close to NSD image %d (%.1f grey levels) as to another (%.1f): "
                           "ambiguous, taken as a new image", k, int(stored_ids[nearest[k][order[0]]]), best, second)
    return ids, diff


def store_side(store: Store) -> int | None:
    """The side of the store's stimuli (None without any)."""
    if not store.has_group(schema.STIMULI):
        return None
    return int(store.group(schema.STIMULI)["images"].shape[1])


def participant_stimuli(store: Store, dataset, names: Sequence[str]) -> ParticipantStimuli:
    """Read, resize and match the conditions' stimuli (see the module docstring)."""
    from fmri2img.storage.bids import BIDSFormatError

    names = [str(n) for n in names]
    kind = stimulus_kind(names)
    if kind == "ids":
        ids = np.array([int(v) for v in names], np.int64)
        if (ids >= 73000).any():
            raise BIDSFormatError(f"stimulus ids {sorted(set(ids[ids >= 73000].tolist()))[:5]} are not NSD-73k ids "
                                  f"(0-72999). Fix: give 0-based NSD ids, or name the stimulus files (stim_file)")
        return ParticipantStimuli(names, kind, np.where(ids < 0, -1, ids))
    if kind == "labels":
        return ParticipantStimuli(names, kind, np.full(len(names), -1, np.int64))
    pixels = read_stimuli(dataset, names, store_side(store))
    ids, diff = match_stimuli(store, pixels)
    logger.info("%d stimulus files, %d matched to the store's NSD images (largest difference of a match %.2f)",
                len(names), int((ids >= 0).sum()), float(np.max(diff[ids >= 0], initial=0.0)))
    return ParticipantStimuli(names, kind, ids, pixels)
