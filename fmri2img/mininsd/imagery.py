"""mini-NSD's imagery session: NSD-Imagery's files, simulated with what is known of mental images.

Written by :func:`fmri2img.mininsd.generate.generate_mini_nsd` when ``spec.imagery`` is set, in
the layout :mod:`fmri2img.storage.nsd.imagery` reads: one ``betas_nsdimagery.{nii.gz,hdf5}``
per subject (NSD's int16 × 300, the same voxel grid as the main sessions), the 12 run TSVs
(columns SUBJECT, SESSION, RUN, TRIAL, CONDITION, CUE, TRIALONSET) and the targets under
``nsddata/experiments/nsdimagery/rawtargetimages/`` with ``stimuli_info.csv``.

The 18 targets (6 per set, NSD-Imagery's cue letters) are mini-NSD stimuli: shared test images
first (as NSD-Imagery's naturalistic set B are NSD shared images), then images no written
subject saw; none is in a written subject's training set. Their files are named like NSD's
shared images (``mini07_nsd00042.png``: 1-based NSD number), so the ground truth is known.

Responses (percent signal change, plus the same trial noise as the main sessions):

* vision: the seen drive of the target, as in the main sessions;
* imagery: a coarser, weaker copy. Imagery pRFs are larger and nearer the fovea than seen
  pRFs (Breedlove, St-Yves, Olman & Naselaris 2020, Curr. Biol. 30:2211, "Generative feedback
  explains distinct brain activity codes for seen and mental images"): pRF sizes ×
  :data:`IMAGERY_PRF_SCALE`, eccentricities × :data:`IMAGERY_ECC_SCALE`, and the feature maps
  blurred by :data:`IMAGERY_BLUR` pixels of 32. Decodable imagery signal is weakest in early
  visual cortex and grows along the hierarchy (Lee, Kravitz & Baker 2012, NeuroImage 59:4064;
  Dijkstra et al. 2019, Trends Cogn. Sci. 23:423): amplitude × :data:`IMAGERY_AREA_GAIN` per
  area (V1, V2, V3, hV4, higher), so the signal-to-noise ratio is lower too. The papers give
  the direction of these effects, not mini-NSD's numbers: the values are chosen so that imagery
  stays decodable above chance but well below vision, as in NSD-Imagery (Kneeland et al. 2025);
* attention: the cue epoch (a letter, no picture) evokes half the imagery response of the
  cued target; the detection epoch (a rapid stream of the set's pictures) 0.4 × the target's
  seen drive + 0.6 × the mean seen drive of the set's targets.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from scipy import ndimage

from fmri2img.mininsd import cortex
from fmri2img.mininsd import responses as _responses, spec as _spec
from fmri2img.mininsd.files import write_betas_hdf5, write_nifti_gz
from fmri2img.storage.nsd import NSDLayout
from fmri2img.storage.nsd.imagery import RUNS, ImageryLayout

#: NSD-Imagery's cue letters per target set (NaselarisLab NSD_Imagery_Access stim info)
LETTERS: dict[str, tuple[str, ...]] = {"A": ("L", "V", "H", "P", "R", "E"), "B": ("B", "W", "T", "K", "C", "D"),
                                       "C": ("Y", "M", "N", "S", "Z", "F")}
IMAGERY_PRF_SCALE = 2.0
IMAGERY_ECC_SCALE = 0.8
IMAGERY_BLUR = 2.0
IMAGERY_AREA_GAIN: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.45)
_SESSION_KEY = 900  # the random stream of the imagery session (main sessions are 1..n_sessions)


def choose_targets(spec: Any, design: dict[str, np.ndarray]) -> np.ndarray:
    """18 0-based image ids: shared images, then images no written subject saw, in seeded order."""
    shared = design["sharedix"][0].astype(np.int64) - 1
    seen = np.unique(np.concatenate([design["subjectim"][s - 1].astype(np.int64) - 1 for s in spec.subjects]))
    unseen = np.setdiff1d(np.arange(spec.n_images), seen)
    rng = _spec.rng_for(spec, 20)
    pool = np.concatenate([rng.permutation(shared), rng.permutation(unseen)])
    n = sum(len(v) for v in LETTERS.values())
    if len(pool) < n:
        raise ValueError(f"MiniNSDSpec: imagery needs {n} target images outside every written subject's training "
                         f"images, found {len(pool)} (shared {len(shared)}, unseen {len(unseen)}): raise n_shared "
                         f"or n_images")
    return pool[:n]


def _conditions() -> list[tuple[str, str]]:
    return [(s, c) for s, letters in LETTERS.items() for c in letters]


def write_targets(root: Path, spec: Any, design: dict[str, np.ndarray]) -> dict[str, Any]:
    """Target pictures (copies of ``imgBrick``) and ``stimuli_info.csv``; return the manifest entry."""
    layout = ImageryLayout("")
    ids = choose_targets(spec, design)
    folder = root / layout.targets_dir()
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["condition", "file_name"])
    with h5py.File(root / NSDLayout("").stimuli(), "r") as h5:
        for k, ((_, cond), image) in enumerate(zip(_conditions(), ids)):
            name = f"mini{k:02d}_nsd{int(image) + 1:05d}.png"
            Image.fromarray(np.asarray(h5["imgBrick"][int(image)])).save(folder / name, optimize=False)
            w.writerow([cond, name])
    (root / layout.targets_table()).write_text(buf.getvalue())
    return dict(targets={c: int(i) for (_, c), i in zip(_conditions(), ids)}, repeats=spec.imagery_repeats,
                prf_scale=IMAGERY_PRF_SCALE, ecc_scale=IMAGERY_ECC_SCALE, blur=IMAGERY_BLUR,
                area_gain=list(IMAGERY_AREA_GAIN))


def imagery_drive(anat: cortex.Anatomy, features: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The drive of imagined images, shape (n_images, n_voxels): larger, more foveal pRFs on blurred features.

    Z-scored per voxel like the seen drive, then scaled by the area's imagery gain.
    """
    coarse = dataclasses.replace(anat, rf_size=anat.rf_size * IMAGERY_PRF_SCALE, rf_x=anat.rf_x * IMAGERY_ECC_SCALE,
                                 rf_y=anat.rf_y * IMAGERY_ECC_SCALE)
    size = int(round(np.sqrt(features.shape[2])))
    maps = features.reshape(len(features), features.shape[1], size, size)
    blurred = ndimage.gaussian_filter(maps, sigma=(0, 0, IMAGERY_BLUR, IMAGERY_BLUR)).reshape(features.shape)
    drive = cortex.voxel_drive(coarse, blurred, categories)
    return drive * np.asarray(IMAGERY_AREA_GAIN)[anat.area][None, :]


def _run_trials(rng: np.random.Generator, stim_set: str, task: str, repeats: int) -> list[tuple[str, str]]:
    """(condition, cue) per trial: each condition ``repeats`` times in random order; in vision and
    attention runs the cue names the target on half the trials, another target of the set otherwise."""
    letters = LETTERS[stim_set]
    order = rng.permutation(np.repeat(np.arange(len(letters)), repeats))
    match = rng.permutation(np.arange(len(order)) % 2 == 0)
    out = []
    for k, m in zip(order, match):
        cue = letters[k]
        if task != "imagery" and not m:
            cue = letters[(k + 1 + int(rng.integers(len(letters) - 1))) % len(letters)]
        out.append((letters[k], cue))
    return out


def _rows(task: str, target: int, drives: dict[str, np.ndarray], set_targets: np.ndarray) -> list[np.ndarray]:
    seen, imagined = drives["seen"], drives["imagined"]
    if task == "vision":
        return [seen[target]]
    if task == "imagery":
        return [imagined[target]]
    return [0.5 * imagined[target], 0.4 * seen[target] + 0.6 * seen[set_targets].mean(axis=0)]


def write_subject(root: Path, spec: Any, subject: int, anat: cortex.Anatomy, seen: np.ndarray,
                  drive_in: tuple[np.ndarray, np.ndarray], tuning: tuple[np.ndarray, np.ndarray],
                  design: dict[str, np.ndarray]) -> dict[str, Any]:
    """One subject's 12 run TSVs and ``betas_nsdimagery.{nii.gz,hdf5}``; return counts for the manifest."""
    layout = ImageryLayout("")
    ids = choose_targets(spec, design)
    index = {c: i for i, (_, c) in enumerate(_conditions())}
    drives = {"seen": seen[ids], "imagined": imagery_drive(anat, *drive_in)[ids]}
    rng = _spec.rng_for(spec, 21, subject)
    rows: list[np.ndarray] = []
    for run_number, run in enumerate(RUNS, start=1):
        trials = _run_trials(rng, run.stim_set, run.task, spec.imagery_repeats)
        set_targets = np.array([index[c] for c in LETTERS[run.stim_set]])
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(["SUBJECT", "SESSION", "RUN", "TRIAL", "CONDITION", "CUE", "TRIALONSET"])
        for t, (cond, cue) in enumerate(trials, start=1):
            w.writerow([subject, 1, run_number, t, cond, cue, f"{4.0 * (t - 1):.1f}"])
            rows += _rows(run.task, index[cond], drives, set_targets)
        path = root / layout.behavior(subject, run.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(buf.getvalue())
    drive = np.stack(rows)
    betas = _responses.session_betas(spec, anat, subject, _SESSION_KEY, np.arange(len(drive)), drive, tuning,
                                ([], np.zeros(0, np.int64)))
    nii = root / layout.betas(subject, "nii.gz")
    write_nifti_gz(nii, memoryview(betas).cast("B"), (*anat.shape, len(drive)), betas.dtype, anat.affine)
    if spec.write_hdf5:
        write_betas_hdf5(root / layout.betas(subject, "hdf5"), betas, spec.hdf5_layout)
    return dict(n_imagery_betas=int(len(drive)))
