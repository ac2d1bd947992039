"""mini-NSD: a small dataset in the exact NSD layout and file formats, generated locally.

Stimuli are real photographs shipped with scikit-image, cropped, mirrored, rotated and
recoloured into ``n_images`` distinct pictures with captions that describe them. Responses
come from the simulated visual cortex of :mod:`fmri2img.storage.cortex` plus trial noise.
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
  ground-truth pRFs and tuning of every nsdgeneral voxel).

Generation is deterministic: the same spec gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from fmri2img.storage import cortex
from fmri2img.storage.nsd import BETA_SCALE, NSDLayout, ROI_FILES
from fmri2img.storage.mininsd_files import (STIM_INFO_COLUMNS, mat_bytes, nifti_gz,  # noqa: F401
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
_SHAPE_OFFSETS = ((0, 0, 0), (-2, -2, -1), (1, -1, 0), (-1, 1, -2), (2, 0, -1), (-2, 1, 0), (0, -2, 1), (1, 2, -1))
_N_DESIGN_SUBJECTS = 8


@dataclass(frozen=True)
class MiniNSDSpec:
    """Size and randomness of a mini-NSD dataset; defaults are the demo size.

    Attributes
    ----------
    seed : int
    subjects : tuple of int
        Subjects (1..8) whose fMRI files are written; ``subjectim`` always has 8 rows.
    n_images : int
        Distinct stimuli in ``imgBrick`` (mini-NSD's "73k" space).
    n_shared : int
        Shared test images seen by every subject (``sharedix``), each shown 3 times.
    n_per_subject : int
        Images per subject including the shared ones (``subjectim`` columns).
    n_sessions, trials_per_session : int
        All sessions are written; every image is shown 1-3 times in the
        ``n_sessions * trials_per_session`` trials.
    side : int
        Image side in pixels (NSD: 425).
    volume_shape : tuple of 3 int
        Subject 1's (X, Y, Z) grid; other subjects get slightly different grids, affines and
        nsdgeneral voxel counts.
    noise : float
        Trial noise standard deviation in percent signal change (signal amplitude is 1-3 %).
    nan_voxels : int
        NaN voxels planted in some sessions; when > 0 the betas are written as float32
        (still × 300), else int16.
    write_hdf5 : bool
        Also write the ``betas_sessionNN.hdf5`` twins.
    hdf5_layout : {"chunked", "contiguous"}
        NSD's chunks of one voxel's trials, or one contiguous block.
    nsdgeneral_keep : float
        Fraction of the simulated posterior cap kept as nsdgeneral: 0.66 covers about 7 % of the
        volume, 0.22 about 2.3 % (NSD subject 1: 15,724 of 699,192 voxels).
    sessions_per_subject : mapping of subject to int
        Subjects scanned for fewer sessions (their first k of the design; NSD's subjects 3, 4, 6 and 8
        have 32, 30, 32 and 30 of 40), e.g. ``{3: 1}``: a new person with one session.
    imagery : bool
        Also write NSD-Imagery's files (:mod:`fmri2img.storage.mininsd_imagery`).
    imagery_repeats : int
        Trials per condition in each imagery-session run (NSD-Imagery: 8, so 720 betas).
    """

    seed: int = 0
    subjects: tuple[int, ...] = (1, 2)
    n_images: int = 480
    n_shared: int = 60
    n_per_subject: int = 300
    n_sessions: int = 10
    trials_per_session: int = 75
    side: int = 425
    volume_shape: tuple[int, int, int] = (34, 42, 34)
    noise: float = 2.0
    nan_voxels: int = 0
    write_hdf5: bool = True
    hdf5_layout: str = "chunked"
    nsdgeneral_keep: float = 0.66
    sessions_per_subject: Any = ()
    imagery: bool = False
    imagery_repeats: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", tuple(int(s) for s in self.subjects))
        few = dict(self.sessions_per_subject or {})  # a mapping, stored as sorted pairs (hashable, JSON-able)
        object.__setattr__(self, "sessions_per_subject", tuple(sorted((int(s), int(k)) for s, k in few.items())))
        object.__setattr__(self, "volume_shape", tuple(int(s) for s in self.volume_shape))
        n_trials = self.n_sessions * self.trials_per_session
        min_trials = 3 * self.n_shared + (self.n_per_subject - self.n_shared)
        checks = (
            (self.seed >= 0, f"seed={self.seed} must be >= 0"),
            (len(self.subjects) > 0 and len(set(self.subjects)) == len(self.subjects)
             and all(1 <= s <= _N_DESIGN_SUBJECTS for s in self.subjects),
             f"subjects={self.subjects} must be distinct subject numbers 1..8"),
            (2 <= self.n_shared < self.n_per_subject,
             f"n_shared={self.n_shared} must be >= 2 and below n_per_subject={self.n_per_subject}"),
            (self.n_per_subject <= self.n_images,
             f"n_per_subject={self.n_per_subject} must be <= n_images={self.n_images}"),
            (self.n_sessions >= 1 and self.trials_per_session >= 5,
             f"n_sessions={self.n_sessions} must be >= 1 and trials_per_session={self.trials_per_session} >= 5"),
            (min_trials <= n_trials <= 3 * self.n_per_subject,
             f"n_sessions*trials_per_session={n_trials} must lie in {min_trials}..{3 * self.n_per_subject} "
             f"(shared images 3 times, the others 1-3 times): change n_sessions or trials_per_session"),
            (16 <= self.side <= 1024, f"side={self.side} must be in 16..1024 pixels"),
            (len(self.volume_shape) == 3 and all(16 <= s <= 128 for s in self.volume_shape),
             f"volume_shape={self.volume_shape} must be 3 sizes in 16..128"),
            (np.isfinite(self.noise) and self.noise >= 0, f"noise={self.noise} must be a finite number >= 0"),
            (0 <= self.nan_voxels <= 500, f"nan_voxels={self.nan_voxels} must be in 0..500"),
            (self.hdf5_layout in ("chunked", "contiguous"),
             f"hdf5_layout={self.hdf5_layout!r} must be 'chunked' (NSD's) or 'contiguous'"),
            (0.05 <= self.nsdgeneral_keep <= 1.0, f"nsdgeneral_keep={self.nsdgeneral_keep} must be in 0.05..1"),
            (all(s in self.subjects and 1 <= k <= self.n_sessions for s, k in self.sessions_per_subject),
             f"sessions_per_subject={dict(self.sessions_per_subject)} must map subjects of {self.subjects} to "
             f"1..n_sessions={self.n_sessions} sessions"),
            (1 <= self.imagery_repeats <= 8, f"imagery_repeats={self.imagery_repeats} must be in 1..8"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MiniNSDSpec: {message}")

    @classmethod
    def sized(cls, **fields: Any) -> "MiniNSDSpec":
        """A spec whose unset image counts fit the trials asked for.

        With more trials than the demo's image counts allow (e.g. NSD's 750 per session), the
        images per subject, shared images and stimuli grow as in NSD: most images shown 2–3
        times, a fifth of them shared, 1.6× as many stimuli as images per subject.
        """
        base = cls()
        n_trials = fields.get("n_sessions", base.n_sessions) * fields.get("trials_per_session", base.trials_per_session)
        per = fields.get("n_per_subject")
        if per is None and not {"n_shared", "n_images"} & fields.keys() and n_trials > 3 * base.n_per_subject:
            per = -(-n_trials * 2 // 5)  # 2.5 showings per image on average
            fields.update(n_per_subject=per, n_shared=max(2, per // 5), n_images=max(base.n_images, -(-per * 8 // 5)))
        return cls(**fields)

    @property
    def n_trials(self) -> int:
        """Trials per subject over all sessions."""
        return self.n_sessions * self.trials_per_session

    def sessions_of(self, subject: int) -> int:
        """Sessions written for ``subject`` (its first ones in the design)."""
        return dict(self.sessions_per_subject).get(int(subject), self.n_sessions)


def rng_for(spec: MiniNSDSpec, *key: int) -> np.random.Generator:
    """An independent generator per (seed, purpose, subject, session): order-free determinism."""
    return np.random.default_rng([spec.seed, *key])


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
                          for _ in range(_N_DESIGN_SUBJECTS)])
    reps = np.concatenate([np.full(spec.n_shared, 3), np.ones(n_own, np.int64)])
    extra = spec.n_trials - reps.sum()
    slots = np.repeat(np.arange(spec.n_shared, spec.n_per_subject), 2)
    np.add.at(reps, rng.choice(slots, extra, replace=False), 1)
    master = rng.permutation(np.repeat(np.arange(1, spec.n_per_subject + 1), reps))
    stimpattern = make_stimpattern(spec.n_sessions, spec.trials_per_session)
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


def _subject_anatomy(spec: MiniNSDSpec, subject: int) -> cortex.Anatomy:
    k = (subject - 1) % len(_SHAPE_OFFSETS)
    shape = tuple(int(s + o) for s, o in zip(spec.volume_shape, _SHAPE_OFFSETS[k]))
    origin = (float(k) * 1.3, -4.0 + k, 2.0 - 0.5 * k)
    keep = spec.nsdgeneral_keep * (0.66 - 0.03 * k) / 0.66
    return cortex.build_anatomy(shape, rng_for(spec, 4, subject), keep=keep, origin_mm=origin)


_NOISE_BLOCK = 64 * 2**20  # bytes of float32 background noise drawn at a time


def _zyx(flat_xyz: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Flat C-order (X, Y, Z) voxel indices → flat indices into a C-order (Z, Y, X) volume."""
    x, y, z = np.unravel_index(flat_xyz, shape)
    return (z * shape[1] + y) * shape[0] + x


def session_betas(spec: MiniNSDSpec, anat: cortex.Anatomy, subject: int, session: int, trials: np.ndarray,
                  drive: np.ndarray, tuning: tuple[np.ndarray, np.ndarray], nan: tuple[list[int], np.ndarray]
                  ) -> np.ndarray:
    """One session's betas as stored, shape (trials, Z, Y, X): NSD's h5py order, and NIfTI's bytes.

    Brain voxels outside nsdgeneral get noise only; nsdgeneral voxels get
    baseline + session offset + amplitude × drive[image] + noise, in percent signal change × 300.
    """
    baseline, amp = tuning
    shape = anat.shape
    n_t = len(trials)
    srng = rng_for(spec, 6, subject, session)
    dtype = np.float32 if spec.nan_voxels else np.int16
    out = np.zeros((n_t, int(np.prod(shape))), dtype)
    brain = _zyx(np.flatnonzero(anat.brain), shape)
    step = max(1, _NOISE_BLOCK // (4 * max(len(brain), 1)))
    for t0 in range(0, n_t, step):
        t1 = min(n_t, t0 + step)
        noise = srng.standard_normal((t1 - t0, len(brain)), dtype=np.float32)
        noise *= np.float32(0.6 * spec.noise * BETA_SCALE)
        out[t0:t1, brain] = _stored(noise, dtype)
    offset = srng.normal(0.0, 0.3, len(anat.voxels))
    signal = baseline + offset + amp * drive[trials]
    signal += srng.normal(0.0, spec.noise, signal.shape)
    values = _stored(signal * BETA_SCALE, dtype)
    if spec.nan_voxels and session in nan[0]:
        values[:, np.isin(anat.voxels, nan[1])] = np.nan
    out[:, _zyx(anat.voxels, shape)] = values
    return out.reshape(n_t, *shape[::-1])


def _stored(values: np.ndarray, dtype: Any) -> np.ndarray:
    rounded = np.round(values)
    if dtype == np.int16:
        return np.clip(rounded, -32768, 32767).astype(np.int16)
    return rounded.astype(np.float32)


def _write_subject(root: Path, layout: NSDLayout, spec: MiniNSDSpec, subject: int, design: dict[str, np.ndarray],
                   drive_in: tuple[np.ndarray, np.ndarray], truth: h5py.File,
                   progress: Callable[[str], None]) -> dict[str, Any]:
    anat = _subject_anatomy(spec, subject)
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
        del betas
    extra = {}
    if spec.imagery:
        from fmri2img.storage import mininsd_imagery
        extra = mininsd_imagery.write_subject(root, spec, subject, anat, drive, drive_in, (baseline, amp), design)
    grp = truth.create_group(f"subj{subject:02d}")
    for name in ("voxels", "area", "rf_x", "rf_y", "rf_size", "ecc", "weights", "category"):
        grp.create_dataset(name, data=getattr(anat, name), track_times=False)
    grp.create_dataset("amplitude", data=amp, track_times=False)
    grp.create_dataset("drive", data=drive.astype(np.float32), track_times=False)
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
    with h5py.File(root / "mini_nsd_truth.hdf5", "w") as truth:
        for subject in spec.subjects:
            subjects[str(subject)] = _write_subject(root, layout, spec, subject, design, (feats, cats), truth,
                                                    progress)
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
    if spec.imagery:
        from fmri2img.storage import mininsd_imagery
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
    for name in ("nsddata", "nsddata_betas", "nsddata_stimuli"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("COCO_73k_annots_curated.npy", "mini_nsd_truth.hdf5", "mini_nsd.json"):
        (root / name).unlink(missing_ok=True)


def _split_counts(design: dict[str, np.ndarray], subject: int, spec: MiniNSDSpec) -> dict[str, int]:
    master = design["masterordering"][0].astype(np.int64)
    master = master[:spec.sessions_of(subject) * spec.trials_per_session]  # the sessions written
    ids = design["subjectim"][subject - 1].astype(np.int64)[master - 1]
    test = master <= spec.n_shared
    return dict(n_train_images=int(len(np.unique(ids[~test]))), n_test_images=int(len(np.unique(ids[test]))),
                n_train_trials=int((~test).sum()), n_test_trials=int(test.sum()))
