"""A new person from a BIDS dataset (``fmri2img glm --bids``) on the clinician's path: align and decode.

Such a subject's ``subjects/subjNN/betas`` has the attribute ``kind = "bids"``: its trials carry
``image`` (the NSD id its stimulus file matched by pixels, -1 for pictures that are not the store's)
and ``stimulus`` (a row of ``subjects/subjNN/stimuli``, which holds what the person saw at the
store's side). It has no train/test split of its own: the alignment takes the trials of images
that are the reference's training images (:mod:`~fmri2img.pipeline.clinical.align`), and
``decode --via`` without ``--betas`` decodes the others (:func:`own_trials`), scored against the
pictures the person saw.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from fmri2img.pipeline.clinical.common import UNKNOWN_IMAGE, DecodeError, DecodeInput
from fmri2img.storage import schema
from fmri2img.storage.store import Store

__all__ = ["is_bids", "describe", "own_trials", "truth_images"]


def is_bids(store: Store, subject: int) -> bool:
    """Whether ``subject``'s betas came from a BIDS dataset (``fmri2img glm --bids``)."""
    group = schema.subject_group(subject, "betas")
    return store.has_group(group) and store.group(group).attrs.get("kind") == "bids"


def describe(store: Store, subject: int) -> str:
    """``"subject 9 (BIDS sub-01)"``."""
    participant = store.group(schema.subject_group(subject, "betas")).attrs.get("participant", "?")
    return f"subject {subject} (BIDS sub-{participant})"


def own_trials(store: Store, subject: int, used: Mapping[str, np.ndarray], name: str | None = None) -> DecodeInput:
    """The BIDS subject's trials from the store that no fit used, as a decode input.

    Parameters
    ----------
    used : mapping of str to int arrays
        Images each fit behind the decoding used (the alignment, the reference's models).
    name : str, optional
        Of ``decoded/<name>`` (default ``subjNN-own``).
    """
    if not is_bids(store, subject):
        raise DecodeError(f"subject {subject} has no betas from a BIDS dataset in {store.describe()}: give --betas "
                          f"(decode reads a subject's own trials from the store only for a participant fitted by "
                          f"fmri2img glm --bids)")
    betas = store.open_dataset(schema.subject_group(subject, "betas"))
    images = betas.image.values.astype(np.int64)
    fitted = np.unique(np.concatenate([np.asarray(v, np.int64) for v in used.values()])) if used else np.array([])
    rows = np.flatnonzero(~((images >= 0) & np.isin(images, fitted)))
    if not len(rows):
        raise DecodeError(f"{describe(store, subject)}: every trial shows an image the alignment or the reference's "
                          f"models were fitted on ({len(images)} trials), so none is left to decode. Fix: align on "
                          f"fewer images, or scan images the reference did not train on")
    fmri = np.asarray(betas.betas.isel(trial=rows).values, np.float32)
    stimulus = betas.stimulus.values[rows].astype(np.int64)
    group = schema.subject_group(subject, "stimuli")
    shown_group = group if store.has_group(group) and "images" in store.group(group) else ""
    note = (f"the participant's events ({len(images) - len(rows)} trial(s) left out: their images were used for "
            f"fitting)")
    return DecodeInput(name or f"{schema.subject_key(subject)}-own", f"store:{schema.subject_group(subject, 'betas')}",
                       fmri, rows + 1, np.where(images[rows] >= 0, images[rows], UNKNOWN_IMAGE), note,
                       shown=stimulus if shown_group else None, shown_group=shown_group)


def truth_images(store: Store, group: str, rows: np.ndarray) -> np.ndarray:
    """Rows of a participant's ``stimuli`` group, uint8 array of shape (n, H, W, 3), in the order of ``rows``."""
    rows = np.asarray(rows, np.int64)
    order = np.unique(rows)
    block = np.asarray(store.group(group)["images"].get_orthogonal_selection((order,)))
    return block[np.searchsorted(order, rows)]
