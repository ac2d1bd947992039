"""The align stage: a new person from a few sessions, decoded through a fitted reference subject.

``align(store, subject, reference, sessions)``:

1. averages the new subject's trials of ``sessions`` per image, keeping only images that no
   evaluation uses (neither subject's test images) — the alignment images;
2. builds targets in the reference's voxel space (:data:`TARGETS`): the reference's own
   responses to the images both saw (``"shared"``), or the pseudo-responses of the
   reference's encoding model (features → its voxels, kernel ridge on its training images)
   to every alignment image (``"encoding"``), or the real ones where they exist and
   pseudo-responses elsewhere (``"hybrid"``);
3. fits the alignment ridge (:func:`fmri2img.ridge.align.fit_alignment`) and stores it in
   kernel form like every model, with its targets: ``models/subjNN/align-to-subjMM``;
4. reports a held-out check: the aligned test scans against the reference's own responses
   to the same test images (per-voxel correlation, two-way identification).

The decode stage then decodes the new subject's scans with ``via="align-to-subjMM"``
(:func:`aligned_models`). No image used by a fit is ever among those evaluated on
(:func:`fmri2img.ridge.align.check_disjoint`, here and in decode).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from fmri2img.pipeline.clinical import participant
from fmri2img.pipeline.clinical.common import UNKNOWN_IMAGE, load_models
from fmri2img.pipeline.features import feature_group
from fmri2img.pipeline.regress import model_group
from fmri2img.ridge import BlockRidge
from fmri2img.ridge.align import (ALIGN_ALPHAS, AlignedModel, average_by_image, check_disjoint, fit_alignment,
                                  pseudo_responses)
from fmri2img.storage import schema
from fmri2img.storage.store import Region, Store

logger = logging.getLogger(__name__)

#: targets of the alignment in the reference's voxel space → what they are
TARGETS = {
    "encoding": "pseudo-responses of the reference's encoding model (features → its voxels) to every alignment image",
    "shared": "the reference's own responses to the alignment images it also saw",
    "hybrid": "the reference's own responses where it saw the image, pseudo-responses elsewhere",
}
#: chosen by measurement (benchmarks/README.md, "align"): pseudo-responses use every image of the session
DEFAULT_TARGETS = "encoding"
#: reference training images the encoding model is fitted on at most (its kernel costs n² × feature columns)
ENCODING_IMAGES = 2000
_VIA = re.compile(r"^align-to-subj(\d{2})$")


class AlignError(ValueError):
    """An alignment cannot be fitted or used as asked; the message says why and how to fix it."""


def align_name(reference: int) -> str:
    """``align-to-subjMM``: the model's name under ``models/subjNN/``."""
    return f"align-to-{schema.subject_key(reference)}"


def reference_of(via: str) -> int:
    """``"align-to-subj01"`` → 1."""
    m = _VIA.match(str(via))
    if not m:
        raise AlignError(f"--via {via!r}: expected align-to-subjMM (the alignment model fitted by fmri2img align)")
    return int(m.group(1))


def parse_sessions(text: str | Sequence[int]) -> list[int]:
    """``"1"``, ``"1-3"``, ``"1,4"`` or a list → sorted 1-based session numbers."""
    if not isinstance(text, str):
        return sorted({int(s) for s in text})
    out: set[int] = set()
    try:
        for part in text.replace(" ", "").split(","):
            lo, sep, hi = part.partition("-")
            out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise AlignError(f"--sessions {text!r}: expected e.g. 1 or 1-3 or 1,4") from None
    if not out or min(out) < 1:
        raise AlignError(f"--sessions {text!r}: sessions are numbered from 1")
    return sorted(out)


def _subject(store: Store, subject: int, part: str) -> xr.Dataset:
    group = schema.subject_group(subject, part)
    if not store.is_complete(group):
        raise AlignError(f"subject {subject} has no complete {part} in {store.describe()}: ingest it first "
                         f"(fmri2img ingest --subject {subject} --sessions ...)")
    return store.open_dataset(group)


def evaluation_images(store: Store, subject: int, reference: int) -> np.ndarray:
    """Images any evaluation of either subject uses: their test images (a BIDS participant has none of its own)."""
    ids = [_subject(store, s, "test").image.values for s in (subject, reference) if s == reference or
           not participant.is_bids(store, s)]
    return np.unique(np.concatenate(ids)).astype(np.int64)


def alignment_inputs(store: Store, subject: int, sessions: Sequence[int], excluded: np.ndarray,
                     only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, X): the new subject's responses in ``sessions`` averaged per image, ``excluded`` images left out.

    ``only``: the images that may serve (a BIDS participant: the reference's training images).
    """
    betas = _subject(store, subject, "betas")
    have = sorted({int(s) for s in np.unique(betas.session.values)})
    missing = sorted(set(sessions) - set(have))
    if missing:
        raise AlignError(f"subject {subject} has no session(s) {missing} in {store.describe()} (ingested: {have}): "
                         f"ingest them, or choose --sessions among those")
    images = betas.image.values
    keep = np.isin(betas.session.values, sessions) & ~np.isin(images, excluded) & (images >= 0)
    if only is not None:
        keep &= np.isin(images, only)
    rows = np.flatnonzero(keep)
    if not len(rows) and only is not None:
        chosen = np.isin(betas.session.values, sessions)
        n_stimuli, matched = len(np.unique(betas.stimulus.values[chosen])), np.unique(images[chosen & (images >= 0)])
        raise AlignError(f"{participant.describe(store, subject)} saw none of the reference's {len(only)} training "
                         f"images in sessions {list(sessions)}: of its {n_stimuli} distinct stimuli, "
                         f"{len(matched)} matched an NSD image of the store by their pixels, none a "
                         f"training image. The alignment needs images both saw. Fix: check the events' stimulus "
                         f"column (files are matched by pixels, ids taken as 0-based NSD ids), or align to a "
                         f"reference who saw them")
    if not len(rows):
        raise AlignError(f"subject {subject}'s sessions {list(sessions)} hold no training image (only test images)")
    values = np.asarray(betas.betas.isel(trial=rows).values, np.float32)
    return average_by_image(values, images[rows])


def _features(store: Store, name: str, ids: np.ndarray) -> da.Array:
    group = feature_group(name)
    if not store.has_group(group):
        raise AlignError(f"features/{name} is not in the store {store.describe()}: run the features stage with "
                         f"extractor {name!r}, or choose other --encoding-features")
    g = store.group(group)
    index = {int(v): i for i, v in enumerate(np.asarray(g["image"][:]))}
    missing = [int(i) for i in ids if int(i) not in index]
    if missing:
        raise AlignError(f"features/{name} lacks {len(missing)} of the alignment images (first NSD id {missing[0]}): "
                         f"re-run the features stage after ingesting the new subject")
    return da.from_zarr(g["features"])[np.array([index[int(i)] for i in ids])]


def reference_features(store: Store, reference: int) -> list[str]:
    """Feature sets with a fitted model of ``reference`` (the default encoding features)."""
    prefix = f"models/{schema.subject_key(reference)}/"
    names = sorted({g[len(prefix):].split("/")[0] for g in store.list_groups(prefix)})
    return [n for n in names if not n.startswith("align-to-") and store.is_complete(model_group(reference, n))]


def _shared(ids, seen, own, encode):
    rows = np.flatnonzero(seen)
    return rows, own(ids[rows])


def _encoding(ids, seen, own, encode):
    return np.arange(len(ids)), encode()


def _hybrid(ids, seen, own, encode):
    targets = encode()
    targets[seen] = own(ids[seen])
    return np.arange(len(ids)), targets


#: each kind of :data:`TARGETS`: (alignment image ids, which of them the reference saw, own(ids) → the
#: reference's responses, encode() → pseudo-responses to all ids) → (rows of ids kept, targets)
_BUILDERS = {"encoding": _encoding, "shared": _shared, "hybrid": _hybrid}


def build_targets(store: Store, reference: int, ids: np.ndarray, how: str, features: Sequence[str],
                  alphas: Sequence[float], encoding_images: int | None = ENCODING_IMAGES
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows of ``ids`` kept, targets in the reference's voxel space, facts) per :data:`TARGETS`.

    The encoding model is fitted on at most ``encoding_images`` of the reference's training
    images (a fixed seeded sample; None: all): its cost is that of their feature kernel.
    """
    train = _subject(store, reference, "train")
    ref_ids, ref_fmri = train.image.values.astype(np.int64), train.fmri.values
    pos = {int(v): i for i, v in enumerate(ref_ids)}
    seen = np.array([int(i) in pos for i in ids], bool)
    facts: dict[str, Any] = {"n_seen_by_reference": int(seen.sum()), "encoding_features": []}

    def own(which: np.ndarray) -> np.ndarray:
        return ref_fmri[[pos[int(i)] for i in which]].astype(np.float32)

    def encode() -> np.ndarray:
        if not features:
            raise AlignError(f"no feature set to build the reference's encoding model: subject {reference} has no "
                             f"fitted model; fit it (regress stage) or give --encoding-features")
        fit = np.arange(len(ref_ids))
        if encoding_images is not None and encoding_images < len(fit):
            fit = np.sort(np.random.default_rng(0).choice(len(fit), encoding_images, replace=False))
        pseudo, model = pseudo_responses([_features(store, f, ref_ids[fit]) for f in features], ref_fmri[fit],
                                         [_features(store, f, ids) for f in features], alphas)
        facts.update(encoding_features=list(features), encoding_images=int(len(fit)),
                     encoding_alphas=[float(a) for a in model.alphas_])
        return pseudo

    rows, targets = _BUILDERS[how](ids, seen, own, encode)
    return rows, targets, facts


def _salt(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else json.dumps(p, default=str)
                 .encode())
    return h.hexdigest()[:16]


def save_alignment(store: Store, group: str, est: BlockRidge, ids: np.ndarray, targets: np.ndarray,
                   attrs: Mapping[str, Any]) -> None:
    """The alignment in kernel form (as the regress stage stores models) plus its targets."""
    state = est.get_model_state()
    data = {k: ([f"{k}_{i}" for i in range(np.ndim(v))], np.asarray(v)) for k, v in state["arrays"].items()}
    data["targets"] = (("train_image", "ref_voxel"), targets.astype(np.float32))
    ds = xr.Dataset(data, coords={"train_image": ("train_image", ids.astype(np.int64))})
    ds["targets"].attrs["long_name"] = "alignment targets in the reference's voxel space (percent signal change)"
    region = Region(0, "train_image", 0, len(ids), "model")
    store.write_template(group, ds, [region], attrs={**attrs, "state_attrs": json.dumps(state["attrs"], default=str)})
    store.mark_done(group, region)


def load_alignment(store: Store, subject: int, reference: int) -> tuple[BlockRidge, dict]:
    """The stored alignment of ``subject`` to ``reference`` and its attributes."""
    group = model_group(subject, align_name(reference))
    if not store.is_complete(group):
        raise AlignError(f"subject {subject} has no alignment to subject {reference} in {store.describe()}: fit it "
                         f"with fmri2img align STORE --subject {subject} --reference {reference} --sessions 1")
    g = store.group(group)
    arrays = {k: np.asarray(g[k][:]) for k in g.array_keys() if k not in ("train_image", "targets")}
    state = {"arrays": arrays, "attrs": json.loads(g.attrs["state_attrs"])}
    est = BlockRidge.from_model_state(state, np.asarray(g["targets"][:]))
    return est, {**dict(g.attrs), "train_image": np.asarray(g["train_image"][:])}


def fitted_images(store: Store, subject: int, reference: int, features: Sequence[str]) -> dict[str, np.ndarray]:
    """Images each fit behind ``subject``'s aligned decoding used (alignment, encoding, reference models)."""
    _, attrs = load_alignment(store, subject, reference)
    out = {"alignment": attrs["train_image"]}
    for f in sorted(set(features) | set(json.loads(attrs.get("encoding_features", "[]")))):
        group = model_group(reference, f)
        if store.has_group(group):
            out[f"subject {reference}'s {f}"] = np.asarray(store.group(group)["train_image"][:])
    return out


def aligned_models(store: Store, subject: int, via: str, features: Sequence[str], calibration: str) -> dict:
    """The reference's models for ``features`` applied through ``subject``'s alignment (for decode)."""

    reference = reference_of(via)
    alignment, attrs = load_alignment(store, subject, reference)
    models = load_models(store, reference, features, calibration)
    return {f: AlignedModel(alignment, m, salt=_salt(attrs["fmri2img_salt"], store.group(
        model_group(reference, f)).attrs.get("fmri2img_salt", ""))) for f, m in models.items()}


def _test_scans(store: Store, subject: int, reference_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scans): ``subject``'s test images averaged over repeats (a BIDS participant: its trials of them)."""
    if not participant.is_bids(store, subject):
        new = _subject(store, subject, "test")
        return new.image.values.astype(np.int64), new.fmri.values
    betas = _subject(store, subject, "betas")
    rows = np.flatnonzero(np.isin(betas.image.values, reference_test))
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros((0, betas.sizes["voxel"]), np.float32)
    return average_by_image(np.asarray(betas.betas.isel(trial=rows).values, np.float32), betas.image.values[rows])


def held_out_check(store: Store, alignment: BlockRidge, subject: int, reference: int) -> dict:
    """Aligned test scans of ``subject`` against ``reference``'s responses to the same test images."""
    from fmri2img.metrics.scores import two_way_identification

    ref = _subject(store, reference, "test")
    ids, scans = _test_scans(store, subject, ref.image.values)
    common, a, b = np.intersect1d(ids, ref.image.values, return_indices=True)
    if len(common) < 2:
        return {"n_test_images": int(len(common))}
    P = np.asarray(alignment.predict(scans[a]), np.float64)
    T = np.asarray(ref.fmri.values[b], np.float64)
    Pc, Tc = P - P.mean(0), T - T.mean(0)
    r = (Pc * Tc).sum(0) / np.sqrt((Pc ** 2).sum(0) * (Tc ** 2).sum(0) + 1e-12)
    return {"n_test_images": int(len(common)), "voxel_r": round(float(np.mean(r)), 4),
            "two_way_identification": round(float(np.mean(two_way_identification(T, P))), 4)}


def _inputs(store: Store, subject: int, reference: int, sessions: str | Sequence[int] | None,
            max_images: int | None) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(sessions, excluded images, alignment image ids, the new subject's averaged scans of them)."""
    bids = participant.is_bids(store, subject)
    if sessions in (None, ""):  # an NSD subject: its first session; a BIDS participant: every session fitted
        sessions = sorted({int(v) for v in _subject(store, subject, "betas").session.values}) if bids else [1]
    sessions = parse_sessions(sessions)
    excluded = evaluation_images(store, subject, reference)
    only = _subject(store, reference, "train").image.values.astype(np.int64) if bids else None
    ids, X = alignment_inputs(store, subject, sessions, excluded, only)
    if max_images is not None and max_images < len(ids):  # a seeded sample (the benchmark's k shared images)
        if max_images < 1:
            raise AlignError(f"max_images {max_images}: align on at least one image")
        keep = np.sort(np.random.default_rng(0).choice(len(ids), max_images, replace=False))
        ids, X = ids[keep], X[keep]
    return sessions, excluded, ids, X


def align(store: Store, subject: int, reference: int, sessions: str | Sequence[int] | None = None, *,
          targets: str = DEFAULT_TARGETS, encoding_features: Sequence[str] | None = None,
          encoding_images: int | None = ENCODING_IMAGES, alphas: Sequence[float] = ALIGN_ALPHAS,
          alpha_groups: str = "target", max_images: int | None = None,
          config: Mapping[str, Any] | None = None) -> dict:
    """Fit and store ``models/subjNN/align-to-subjMM``: ``subject``'s voxels → ``reference``'s.

    Parameters
    ----------
    subject, reference : int
        The new subject (ingested, any number of sessions) and a fitted reference subject.
    sessions : str or sequence of int, optional
        The new subject's sessions to align on (``"1"``, ``"1-3"``); default: session 1 of an NSD
        subject, every fitted session of a BIDS participant (``fmri2img glm --bids``), whose
        alignment images are the trials showing the reference's training images (matched by pixels).
    targets : {"encoding", "shared", "hybrid"}
        See :data:`TARGETS` (default :data:`DEFAULT_TARGETS`, the better one measured).
    encoding_features : sequence of str, optional
        Feature sets of the encoding model; default: every set the reference has a model for.
    encoding_images : int or None
        Reference training images the encoding model is fitted on at most (seeded sample).
    alphas, alpha_groups
        Alignment ridge grid (GCV) and whether each reference voxel gets its own alpha.
    max_images : int, optional
        Align on at most this many of the images (a seeded sample; default all).

    Returns
    -------
    dict
        Images used, voxel counts, the held-out check, the group, timings.
    """
    t0 = time.perf_counter()
    if targets not in TARGETS:
        raise AlignError(f"--targets {targets!r}: expected one of {list(TARGETS)}")
    if int(subject) == int(reference):
        raise AlignError(f"--subject and --reference are both {subject}: align a new subject to another, fitted one")
    sessions, excluded, ids, X = _inputs(store, subject, reference, sessions, max_images)
    features = list(encoding_features) if encoding_features else reference_features(store, reference)
    rows, Y, facts = build_targets(store, reference, ids, targets, features, alphas, encoding_images)
    ids, X = ids[rows], X[rows]
    ref_train = _subject(store, reference, "train").image.values
    check_disjoint({"alignment": ids, f"subject {reference}'s models and encoding": ref_train}, excluded,
                   "evaluated on (the subjects' test images)")
    est = fit_alignment(X, Y, alphas, alpha_groups)
    group = model_group(subject, align_name(reference))
    salt = _salt(ids, X, Y, [targets, list(alphas), alpha_groups, sessions, facts, max_images])
    attrs = {**schema.provenance(config=config), "subject": int(subject), "reference": int(reference),
             "sessions": json.dumps(sessions), "targets": targets, "targets_note": TARGETS[targets],
             "encoding_features": json.dumps(facts["encoding_features"]), "fmri2img_salt": salt,
             "excluded_images": json.dumps(excluded.tolist()),
             "fmri_units": "percent signal change in, percent signal change in the reference's voxels out"}
    refit = not (store.is_complete(group) and store.group(group).attrs.get("fmri2img_salt") == salt)
    if refit:
        save_alignment(store, group, est, ids, Y, attrs)
    summary = {"subject": int(subject), "reference": int(reference), "sessions": sessions, "targets": targets,
               "group": group, "n_images": int(len(ids)), "n_voxels": int(X.shape[1]), "n_ref_voxels": int(Y.shape[1]),
               **facts, "alphas": [float(a) for a in est.alphas_], "refit": refit,
               "held_out": held_out_check(store, est, subject, reference),
               "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("align subj%02d → subj%02d: %s", subject, reference, summary)
    return summary


def hide_fitted(data, fitted: Mapping[str, np.ndarray]):
    """``data`` (a decode input) with trials showing an image any fit used marked unknown (decoded, not scored)."""
    import dataclasses


    used = np.unique(np.concatenate([np.asarray(v, np.int64) for v in fitted.values()]))
    hidden = (data.images >= 0) & np.isin(data.images, used)
    if hidden.any():
        logger.warning("decode %s: %d trial(s) show images the alignment or the reference's models were fitted on; "
                       "they are decoded but not scored", data.name, int(hidden.sum()))
    images = np.where(hidden, UNKNOWN_IMAGE, data.images)
    check_disjoint(fitted, images[images >= 0], "scored")
    note = f"; {int(hidden.sum())} trial(s) not scored (their images were used for fitting)" if hidden.any() else ""
    return dataclasses.replace(data, images=images, images_from=data.images_from + note)
