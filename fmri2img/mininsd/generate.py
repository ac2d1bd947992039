"""mini-NSD: a small dataset in the exact NSD layout and file formats, generated locally.

Stimuli are real photographs shipped with scikit-image, cropped, mirrored, rotated and
recoloured into ``n_images`` distinct pictures with captions that describe them. Responses
come from the simulated visual cortex of :mod:`fmri2img.mininsd.cortex` plus trial noise.
The files are the ones :mod:`fmri2img.storage.nsd` reads from the real NSD bucket, in NSD's
layouts as the NSD data manual and public readers (nsd_access, Brain-Diffuser's
``prepare_nsddata.py``) describe them:

* ``nsddata/experiments/nsd/nsd_expdesign.mat`` (masterordering 1×T, subjectim 8×n_per_subject,
  sharedix 1×n_shared, stimpattern n_sessions×runs×slots, basiccnt 3×n_sessions). MATLAB's class
  is double, but the fields load as integers with ``scipy.io.loadmat``'s defaults (Brain-Diffuser
  indexes arrays with them directly); the manual does not give the stored integer width, so
  mini-NSD stores the smallest unsigned type that holds each field (uint16 or uint32, uint8 for
  stimpattern);
* ``nsddata/experiments/nsd/nsd_stim_info_merged.csv`` (unnamed index, cocoId, cocoSplit, cropBox,
  loss, nsdId, flagged, BOLD5000, shared1000, subject1..8, subject1_rep0..subject8_rep2: 0-based
  nsdId, 1-based trial numbers with 0 = not shown), one row per image of ``imgBrick``; mini-NSD
  images are not COCO images, so cocoId is -1 and cocoSplit ``mini-nsd``;
* ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5`` (``imgBrick`` uint8 n_images×side×side×3; the
  manual does not give its chunking: mini-NSD writes it contiguous);
* ``nsddata/ppdata/subjNN/func1pt8mm/roi/*.nii.gz`` (int16 label volumes: -1 outside the brain,
  0 unlabelled, labels > 0);
* ``nsddata_betas/ppdata/subjNN/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz``
  (X×Y×Z×trials, int16 = percent signal change × 300, 1.8 mm voxels, 1.333 s, no scl_slope) and
  the ``.hdf5`` twin: dataset ``betas`` of MATLAB size X×Y×Z×trials, i.e. h5py (trials, Z, Y, X),
  int16, uncompressed, chunks of one voxel's trials ((trials, 1, 1, 1); MATLAB [1 1 1 750]) as in
  NSD (``hdf5_layout="contiguous"`` writes one contiguous block instead, for comparisons). With
  ``nan_voxels`` > 0 the betas are float32 (still × 300) with NaN: not NSD's format, a stand-in
  for other pipelines' files, which ingest accepts only with ``betas_scale = 300``;
* ``COCO_73k_annots_curated.npy`` ((n_images, 5) unicode, '' where missing) at the root;
* ``mini_nsd.json`` (spec, per-subject facts, file sizes) and ``mini_nsd_truth.hdf5`` (the
  ground-truth pRFs and tuning of every nsdgeneral voxel);
* with ``spec.timeseries``: NSD's time series (``nsddata_timeseries/.../timeseries``, ``design``),
  the brain mask and ``mini_nsd_timeseries_truth.hdf5`` (:mod:`fmri2img.mininsd.timeseries`).

Generation is deterministic: the same spec gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from fmri2img.mininsd import cortex
from fmri2img.mininsd import timeseries as mininsd_timeseries
from fmri2img.mininsd.responses import session_betas, subject_anatomy  # noqa: F401
from fmri2img.mininsd.spec import N_DESIGN_SUBJECTS, MiniNSDSpec, rng_for  # noqa: F401
from fmri2img.storage.nsd import NSDLayout, ROI_FILES
from fmri2img.mininsd.files import (STIM_INFO_COLUMNS, mat_bytes, nifti_gz,  # noqa: F401
                                            smallest_uint, stim_info_csv, make_stimpattern, write_betas_hdf5,
                                            write_nifti_gz)

logger = logging.getLogger(__name__)

#: skimage.data photographs that load offline: name -> (descriptions, floc category or "").
SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "astronaut": (("an astronaut in a white spacesuit smiling in front of a flag",
                   "a woman astronaut posing for a portrait", "a smiling person in a space suit"), "faces"),
    "coffee": (("a cup of coffee on a saucer", "a coffee cup on a table", "a mug of black coffee"), ""),
    "chelsea": (("a tabby cat looking at the camera", "a cat lying on a blanket", "a striped cat"), ""),
    "rocket": (("a rocket on a launch pad", "a space rocket standing under a blue sky", "a launch tower"),
               "places"),
    "camera": (("a man with a camera on a tripod", "a photographer standing in a field", "a cameraman"),
               "bodies"),
    "coins": (("old coins on a dark background", "a collection of metal coins", "rows of coins"), ""),
    "moon": (("the cratered surface of the moon", "a close view of lunar craters", "the moon"), "places"),
    "hubble_deep_field": (("distant galaxies in a dark sky", "a deep field image of space full of galaxies",
                           "stars and galaxies"), "places"),
    "retina": (("the back of a human eye with blood vessels", "a photograph of a retina", "a red eye fundus"), ""),
    "clock": (("a wall clock", "a clock photographed with motion blur", "a round clock face"), ""),
    "brick": (("a brick wall", "a wall of grey bricks", "bricks and mortar"), "places"),
    "grass": (("a patch of grass", "green grass blades", "a lawn seen from above"), "places"),
    "gravel": (("a close view of gravel", "small stones on the ground", "a gravel path"), "places"),
    "text": (("printed text seen at an angle", "letters on a page", "a slanted sign with words"), "words"),
    "page": (("a scanned page of a book", "lines of printed text", "a page of writing"), "words"),
    "stereo_motorcycle": (("a motorcycle parked in a garage", "a red motorbike", "a motorcycle indoors"), ""),
    "immunohistochemistry": (("a stained tissue sample under a microscope", "cells stained brown and blue",
                              "a microscope slide"), ""),
}
#: Recolourings: name -> RGB gain.
TINTS: dict[str, tuple[float, float, float]] = {
    "": (1.0, 1.0, 1.0), "tinted red": (1.25, 0.8, 0.8), "tinted green": (0.8, 1.2, 0.8),
    "tinted blue": (0.8, 0.85, 1.3), "tinted yellow": (1.2, 1.15, 0.7), "tinted purple": (1.15, 0.8, 1.2),
}
ROTATIONS: dict[int, str] = {0: "", 1: "turned sideways", 2: "upside down", 3: "turned on its side"}
_FEATURE_SIZE = 32


# --------------------------------------------------------------------------- stimuli and captions


def _load_sources() -> dict[str, np.ndarray]:
    import skimage.data

    out = {}
    for name in SOURCES:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    return out


def _make_image(src: np.ndarray, params: dict[str, Any], side: int) -> np.ndarray:
    """Crop, resize, rotate, mirror and tint one source photograph."""
    h, w = src.shape[:2]
    crop = int(params["scale"] * min(h, w))
    y0 = int(params["cy"] * (h - crop))
    x0 = int(params["cx"] * (w - crop))
    pil = Image.fromarray(src[y0:y0 + crop, x0:x0 + crop]).resize((side, side), Image.Resampling.BILINEAR)
    img = np.rot90(np.asarray(pil, dtype=np.float32), params["rot"])
    if params["flip"]:
        img = img[:, ::-1]
    img = img * np.asarray(TINTS[params["tint"]], np.float32) * params["gain"]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _image_params(spec: MiniNSDSpec) -> list[dict[str, Any]]:
    rng = rng_for(spec, 1)
    names = list(SOURCES)
    order = np.concatenate([rng.permutation(len(names)) for _ in range(-(-spec.n_images // len(names)))])
    tints = list(TINTS)
    params = []
    for i in range(spec.n_images):
        params.append(dict(
            source=names[order[i]], scale=float(rng.uniform(0.45, 1.0)), cx=float(rng.uniform()),
            cy=float(rng.uniform()), rot=int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])),
            flip=bool(rng.uniform() < 0.4), tint=tints[int(rng.choice(len(tints), p=[0.4] + [0.12] * 5))],
            gain=float(rng.choice([1.0, 1.0, 0.7, 1.25])),
        ))
    return params


def _captions(spec: MiniNSDSpec, params: list[dict[str, Any]]) -> np.ndarray:
    """(n_images, 5) unicode captions; about one image in six has only 3-4."""
    rng = rng_for(spec, 2)
    out = np.full((len(params), 5), "", dtype="<U250")
    for i, p in enumerate(params):
        descs, _ = SOURCES[p["source"]]
        mods = [m for m in (("mirrored" if p["flip"] else ""), ROTATIONS[p["rot"]], p["tint"],
                            ("seen close up" if p["scale"] < 0.6 else ""),
                            {0.7: "in dim light", 1.25: "brightly lit"}.get(p["gain"], "")) if m]
        n_caps = 5 if rng.uniform() > 0.17 else int(rng.integers(3, 5))
        for k in range(n_caps):
            words = [mods[j] for j in rng.permutation(len(mods))]
            out[i, k] = ", ".join([descs[k % len(descs)], *words])
    return out


def _write_stimuli(path: Path, spec: MiniNSDSpec, params: list[dict[str, Any]]) -> np.ndarray:
    """Write imgBrick one image at a time; return the small float copies used by the cortex model."""
    sources = _load_sources()
    small = np.empty((spec.n_images, _FEATURE_SIZE, _FEATURE_SIZE, 3), np.float32)
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("imgBrick", shape=(spec.n_images, spec.side, spec.side, 3), dtype=np.uint8,
                               track_times=False)
        for i, p in enumerate(params):
            img = _make_image(sources[p["source"]], p, spec.side)
            ds[i] = img
            pil = Image.fromarray(img).resize((_FEATURE_SIZE, _FEATURE_SIZE), Image.Resampling.BOX)
            small[i] = np.asarray(pil, np.float32) / 255.0
    return small


# --------------------------------------------------------------------------- design


def _design(spec: MiniNSDSpec) -> dict[str, np.ndarray]:
    """The fields of nsd_expdesign.mat, shaped as in NSD."""
    rng = rng_for(spec, 3)
    shared = np.sort(rng.choice(spec.n_images, spec.n_shared, replace=False)) + 1
    rest = np.setdiff1d(np.arange(1, spec.n_images + 1), shared)
    n_own = spec.n_per_subject - spec.n_shared
    subjectim = np.stack([np.concatenate([shared, rng.choice(rest, n_own, replace=False)])
                          for _ in range(N_DESIGN_SUBJECTS)])
    reps = np.concatenate([np.full(spec.n_shared, 3), np.ones(n_own, np.int64)])
    extra = spec.n_trials - reps.sum()
    slots = np.repeat(np.arange(spec.n_shared, spec.n_per_subject), 2)
    np.add.at(reps, rng.choice(slots, extra, replace=False), 1)
    master = rng.permutation(np.repeat(np.arange(1, spec.n_per_subject + 1), reps))
    stimpattern = (mininsd_timeseries.stimpattern(spec) if spec.timeseries
                   else make_stimpattern(spec.n_sessions, spec.trials_per_session))
    nth = np.zeros(len(master), np.int64)
    seen: dict[int, int] = {}
    for t, m in enumerate(master):
        seen[m] = seen.get(m, 0) + 1
        nth[t] = seen[m]
    session = np.arange(len(master)) // spec.trials_per_session
    basiccnt = np.zeros((3, spec.n_sessions), np.float64)
    np.add.at(basiccnt, (nth - 1, session), 1)
    return dict(masterordering=smallest_uint(master[None]), subjectim=smallest_uint(subjectim),
                sharedix=smallest_uint(shared[None]), stimpattern=stimpattern, basiccnt=smallest_uint(basiccnt))


# --------------------------------------------------------------------------- volumes


def _write_subject(root: Path, layout: NSDLayout, spec: MiniNSDSpec, subject: int, design: dict[str, np.ndarray],
                   drive_in: tuple[np.ndarray, np.ndarray], truth: h5py.File,
                   progress: Callable[[str], None], ts_truth: h5py.File | None = None) -> dict[str, Any]:
    anat = subject_anatomy(spec, subject)
    series = None if ts_truth is None else mininsd_timeseries.SubjectWriter(root, spec, subject, anat, ts_truth)
    drive = cortex.voxel_drive(anat, *drive_in)
    for name in ROI_FILES:
        _write(root, layout.roi(subject, name), nifti_gz(anat.rois[name], anat.affine))
    rng = rng_for(spec, 5, subject)
    n_vox = len(anat.voxels)
    baseline = rng.normal(0.5, 0.5, n_vox)
    amp = rng.uniform(1.0, 3.0, n_vox)
    nan_vox = np.sort(rng.choice(anat.voxels, min(spec.nan_voxels, n_vox), replace=False))
    n_sessions = spec.sessions_of(subject)
    n_nan_sess = max(1, n_sessions // 3) if spec.nan_voxels else 0
    nan_sessions = sorted(int(s) + 1 for s in rng.choice(n_sessions, n_nan_sess, replace=False))
    images = design["subjectim"][subject - 1].astype(np.int64)[design["masterordering"][0].astype(np.int64) - 1] - 1
    for session in range(1, n_sessions + 1):
        t0 = time.perf_counter()
        trials = images[(session - 1) * spec.trials_per_session:session * spec.trials_per_session]
        betas = session_betas(spec, anat, subject, session, trials, drive, (baseline, amp), (nan_sessions, nan_vox))
        write_nifti_gz(root / layout.betas(subject, session, "nii.gz"), memoryview(betas).cast("B"),
                       (*anat.shape, len(trials)), betas.dtype, anat.affine)
        if spec.write_hdf5:
            write_betas_hdf5(root / layout.betas(subject, session, "hdf5"), betas, spec.hdf5_layout)
        progress(f"subj{subject:02d} session {session}/{n_sessions}: {betas.nbytes / 1e6:.0f} MB of betas "
                 f"in {time.perf_counter() - t0:.1f} s")
        if series is not None and session <= series.n_sessions:
            t0 = time.perf_counter()
            series.write_session(session, trials, betas)
            progress(f"subj{subject:02d} session {session}: time series in {time.perf_counter() - t0:.1f} s")
        del betas
    extra = {}
    if spec.imagery:
        from fmri2img.mininsd import imagery as mininsd_imagery
        extra = mininsd_imagery.write_subject(root, spec, subject, anat, drive, drive_in, (baseline, amp), design)
    grp = truth.create_group(f"subj{subject:02d}")
    for name in ("voxels", "area", "rf_x", "rf_y", "rf_size", "ecc", "weights", "category"):
        grp.create_dataset(name, data=getattr(anat, name), track_times=False)
    grp.create_dataset("amplitude", data=amp, track_times=False)
    grp.create_dataset("drive", data=drive.astype(np.float32), track_times=False)
    if series is not None:
        extra["timeseries"] = series.summary()
    return dict(volume_shape=list(anat.shape), affine=anat.affine.tolist(), n_voxels=n_vox, n_sessions=n_sessions,
                nan_sessions=nan_sessions, nan_voxels=nan_vox.tolist(), **extra)


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --------------------------------------------------------------------------- entry point


def generate_mini_nsd(root: str | os.PathLike, spec: MiniNSDSpec = MiniNSDSpec(),
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a mini-NSD dataset under ``root`` in the exact NSD layout.

    Parameters
    ----------
    root : str or path-like
        Local directory (created if needed; existing mini-NSD files are overwritten).
    spec : MiniNSDSpec
    progress : callable, optional
        Called with a line of text after each step (stimuli, each session file); default: the
        module's logger at INFO.

    Returns
    -------
    manifest : dict
        The content of ``root/mini_nsd.json``: spec, per-subject voxel counts, volume shapes
        and affines, train/test counts, NaN placement, ground-truth description, file sizes.
    """
    progress = progress or logger.info
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_previous(root)
    layout = NSDLayout("")
    params = _image_params(spec)
    (root / layout.stimuli()).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    small = _write_stimuli(root / layout.stimuli(), spec, params)
    np.save(root / layout.captions(), _captions(spec, params), allow_pickle=False)
    progress(f"stimuli: {spec.n_images} images of {spec.side}×{spec.side} in {time.perf_counter() - t0:.1f} s")
    design = _design(spec)
    _write(root, layout.expdesign(), mat_bytes(design))
    _write(root, layout.stim_info(), stim_info_csv(spec, design))
    feats = cortex.image_features(small, _FEATURE_SIZE)
    cats = np.array([[SOURCES[p["source"]][1] == c for c in cortex.FLOC_CATEGORIES] for p in params], float)
    subjects = {}
    with h5py.File(root / "mini_nsd_truth.hdf5", "w") as truth, contextlib.ExitStack() as stack:
        ts_truth = (stack.enter_context(h5py.File(root / mininsd_timeseries.TRUTH_FILE, "w")) if spec.timeseries
                    else None)
        for subject in spec.subjects:
            subjects[str(subject)] = _write_subject(root, layout, spec, subject, design, (feats, cats), truth,
                                                    progress, ts_truth)
            subjects[str(subject)].update(_split_counts(design, subject, spec))
            logger.info("mini-NSD subject %d: %d nsdgeneral voxels", subject, subjects[str(subject)]["n_voxels"])
    manifest = dict(
        format="mini-nsd", version=1, spec=dataclasses.asdict(spec), subjects=subjects,
        images=[{k: v for k, v in p.items()} for p in params],
        ground_truth=("Stimuli are skimage.data photographs transformed as listed in 'images'. Betas of "
                      "nsdgeneral voxels = baseline + session offset + amplitude * drive[image] + N(0, noise) "
                      "percent signal change, stored x300; drive is the z-scored pRF-pooled luminance, "
                      "colour-opponent and contrast-energy response plus floc category selectivity. "
                      "mini_nsd_truth.hdf5 holds, per subject, the voxel indices, areas (0..4 = V1, V2, V3, hV4, "
                      "higher), pRF centres/sizes/eccentricities (deg), feature weights, category weights, "
                      "amplitudes and the noiseless drive (n_images x n_voxels)."),
    )
    if spec.timeseries:
        manifest["timeseries"] = mininsd_timeseries.manifest_entry(spec)
    if spec.imagery:
        from fmri2img.mininsd import imagery as mininsd_imagery
        manifest["imagery"] = mininsd_imagery.write_targets(root, spec, design)
    manifest["files"] = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
                         and p.name != "mini_nsd.json"}
    (root / "mini_nsd.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _remove_previous(root: Path) -> None:
    """Delete an earlier mini-NSD in ``root`` (only if its manifest marks it as one) so no stale files remain."""
    if not (root / "mini_nsd.json").is_file():
        return
    logger.info("replacing the mini-NSD in %s", root)
    for name in ("nsddata", "nsddata_betas", "nsddata_stimuli", "nsddata_timeseries"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("COCO_73k_annots_curated.npy", "mini_nsd_truth.hdf5", mininsd_timeseries.TRUTH_FILE, "mini_nsd.json"):
        (root / name).unlink(missing_ok=True)


def _split_counts(design: dict[str, np.ndarray], subject: int, spec: MiniNSDSpec) -> dict[str, int]:
    master = design["masterordering"][0].astype(np.int64)
    master = master[:spec.sessions_of(subject) * spec.trials_per_session]  # the sessions written
    ids = design["subjectim"][subject - 1].astype(np.int64)[master - 1]
    test = master <= spec.n_shared
    return dict(n_train_images=int(len(np.unique(ids[~test]))), n_test_images=int(len(np.unique(ids[test]))),
                n_train_trials=int((~test).sum()), n_test_trials=int(test.sum()))
