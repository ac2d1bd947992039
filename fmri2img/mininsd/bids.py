"""A BIDS dataset with fMRIPrep-style derivatives for a new person, simulated from mini-NSD.

The person has their own voxel space (another grid, 2-mm voxels, their own simulated cortex from
:mod:`fmri2img.mininsd.cortex`) and views, NSD-like (3-s images in 4-s slots, blank slots, each image
``repeats`` times per session), ``n_shared`` images a fitted mini-NSD subject (``reference_subject``)
saw and ``n_new`` images no mini-NSD subject saw (the colour negative, transposed, of an image the
reference never saw). Images are PNGs under ``stimuli/`` (pixels equal to mini-NSD's ``imgBrick``),
named by the events' ``stim_file``. Onsets are jittered by a few ms and lie off the TR grid (TR 1.6 s,
4-s slots: on NSD's 4/3-s grid); durations are jittered.

Series (per run, at fMRIPrep's slice-time-corrected times ``StartTime + n·TR``): baseline ×
(1 + (single-trial responses + drift + physiological noise + AR(1) noise) / 100), minus the intensity
change of head motion (∇baseline · displacement). A trial's response is its true beta
(``amplitude × drive[image] + trial noise``, percent signal change) times its boxcar convolved with
SPM's canonical double-gamma HRF, scaled so a nominal 3-s trial peaks at 1.

Files (BIDS specification; fMRIPrep's documented outputs): raw and derivative
``dataset_description.json``, ``README``, ``participants.tsv/.json``, root ``task-<task>_bold.json``
(TaskName, RepetitionTime) and ``task-<task>_events.json``, per run ``_bold.nii.gz`` (int16),
``_bold.json`` (interleaved SliceTiming) and ``_events.tsv`` (onset, duration, trial_type, stim_file;
blanks with stim_file n/a); in ``derivatives/fmriprep``: ``_space-T1w_desc-preproc_bold`` (float32;
sidecar with SliceTimingCorrected and StartTime as fMRIPrep computes it), ``_desc-brain_mask``, and
``_desc-confounds_timeseries.tsv/.json`` computed from the data: motion and expansions,
framewise_displacement (Power), dvars and std_dvars (DVARS over its median: fMRIPrep uses a model of
its expected value), global_signal/csf/white_matter and expansions, cosineNN (DCT to 1/128 Hz),
a_comp_cor (combined, CSF, WM) and t_comp_cor with JSON metadata, non_steady_state_outlierNN,
motion_outlierNN (FD > 0.5 mm or std_dvars > 1.5).

The truth stays under ``sourcedata/`` (ignored by BIDS tools): ``mini_nsd_bids_truth.hdf5`` (per run:
betas, onsets, images, motion, noise-free response, frame times; per person: voxels, drive,
amplitudes, pRFs, HRF, brain) and ``mini_nsd_bids_truth.json`` (spec, images with mini-NSD ids,
timing, files). The same spec and mini-NSD give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage, stats

from fmri2img.mininsd import cortex
from fmri2img.mininsd.bids_confounds import confounds
from fmri2img.storage.bids.entities import format_name
from fmri2img.storage.nsd import NSDLayout, read_expdesign, read_stimuli

logger = logging.getLogger(__name__)

__all__ = ["BIDSSpec", "generate_bids", "TRUTH_HDF5", "TRUTH_JSON", "DERIVATIVES"]

TRUTH_HDF5 = "sourcedata/mini_nsd_bids_truth.hdf5"
TRUTH_JSON = "sourcedata/mini_nsd_bids_truth.json"
DERIVATIVES = "derivatives/fmriprep"
BIDS_VERSION = "1.10.0"
_FEATURE_SIZE = 32


@dataclass(frozen=True)
class BIDSSpec:
    """Size and simulation settings of the generated BIDS dataset; the defaults generate in about 2 s.

    Attributes
    ----------
    participant, task, space : str
        BIDS labels; ``sessions`` (labels, ``()`` for a dataset without sessions) hold ``runs`` runs each.
    reference_subject : int
        The fitted mini-NSD subject whose seen images provide the ``n_shared`` shared images.
    n_shared, n_new, repeats : int
        Images shared with the reference, new images, and showings of each image per session.
    tr, trial_seconds, image_seconds, lead_in, tail : float
        Seconds: TR, slot and image length, before the first and after the last slot; every
        ``blank_every``-th slot is blank.
    volume_shape, voxel_mm
        The person's own grid (X, Y, Z) and voxel size.
    trial_noise, noise, ar1, drift, motion : float
        Trial-to-trial beta noise and AR(1) noise (percent signal change, AR coefficient), drift (%),
        motion scale (1: realistic, with two jerks per run).
    onset_jitter, duration_jitter : float
        Uniform onset jitter (± s) and duration standard deviation (s).
    non_steady : int
        Initial volumes with T1 saturation, flagged as ``non_steady_state_outlierNN``.
    n_compcor : int
        aCompCor components of the combined mask (3 each for CSF and WM).
    """

    seed: int = 0
    participant: str = "01"
    sessions: tuple[str, ...] = ("01",)
    task: str = "images"
    runs: int = 2
    reference_subject: int = 1
    n_shared: int = 12
    n_new: int = 4
    repeats: int = 3
    tr: float = 1.6
    trial_seconds: float = 4.0
    image_seconds: float = 3.0
    blank_every: int = 5
    lead_in: float = 4.0
    tail: float = 12.0
    volume_shape: tuple[int, int, int] = (18, 22, 18)
    voxel_mm: float = 2.0
    trial_noise: float = 0.3
    noise: float = 1.0
    ar1: float = 0.4
    drift: float = 1.0
    motion: float = 1.0
    onset_jitter: float = 0.005
    duration_jitter: float = 0.01
    non_steady: int = 1
    n_compcor: int = 5
    space: str = "T1w"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sessions", tuple(str(s) for s in self.sessions))
        object.__setattr__(self, "volume_shape", tuple(int(s) for s in self.volume_shape))
        labels = (self.participant, self.task, self.space, *self.sessions)
        checks = (
            (all(str(v).isalnum() for v in labels), f"labels {labels} must be alphanumeric (BIDS)"),
            (self.runs >= 1 and self.repeats >= 1, "runs and repeats must be >= 1"),
            (self.n_shared >= 1 and self.n_new >= 0, "n_shared must be >= 1 and n_new >= 0"),
            (0 < self.image_seconds < self.trial_seconds, "image_seconds must lie in (0, trial_seconds)"),
            (all(12 <= s <= 96 for s in self.volume_shape), "volume_shape sizes must be in 12..96"),
            (self.blank_every >= 2 and 0 <= self.non_steady <= 5, "blank_every >= 2, non_steady in 0..5"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"BIDSSpec: {message}")


def _rng(spec: BIDSSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, 7001, *key])


# --------------------------------------------------------------------------- images


def _images(spec: BIDSSpec, mini: Path) -> dict[str, Any]:
    """The person's images: mini-NSD ids (-1 for new), pixels, floc categories, stimulus file names."""
    from fmri2img.mininsd.generate import SOURCES

    fs, layout = fsspec.filesystem("file"), NSDLayout(str(mini))
    manifest = json.loads((mini / "mini_nsd.json").read_text())
    ref = spec.reference_subject
    if str(ref) not in manifest["subjects"]:
        raise ValueError(f"mini-NSD at {mini} has no subject {ref} (it has {sorted(manifest['subjects'])}); pass "
                         f"reference_subject= one of them")
    design = read_expdesign(fs, layout.expdesign())
    n_trials = manifest["subjects"][str(ref)]["n_sessions"] * design.trials_per_session
    seen = np.unique(design.subjectim[ref - 1][design.masterordering[:n_trials] - 1] - 1)
    unseen = np.setdiff1d(np.arange(len(manifest["images"])), design.subjectim[ref - 1] - 1)
    if len(seen) < spec.n_shared or len(unseen) < spec.n_new:
        raise ValueError(f"mini-NSD subject {ref} saw {len(seen)} images and left {len(unseen)} unseen; the spec "
                         f"asks for {spec.n_shared} shared and {spec.n_new} new")
    rng = _rng(spec, 1)
    shared = np.sort(rng.choice(seen, spec.n_shared, replace=False))
    parents = np.sort(rng.choice(unseen, spec.n_new, replace=False))
    pixels = read_stimuli(fs, layout.stimuli(), np.concatenate([shared, parents]))
    pixels[len(shared):] = 255 - pixels[len(shared):].transpose(0, 2, 1, 3)
    category = [SOURCES[manifest["images"][int(i)]["source"]][1] for i in np.concatenate([shared, parents])]
    names = [f"im{k:04d}.png" for k in rng.permutation(np.arange(1, len(pixels) + 1))]
    return dict(nsd_id=np.concatenate([shared, np.full(spec.n_new, -1)]).astype(np.int64), pixels=pixels,
                parents=parents, names=names,
                categories=np.array([[c == f for f in cortex.FLOC_CATEGORIES] for c in category], float))


def _drive(anat: cortex.Anatomy, pixels: np.ndarray, categories: np.ndarray) -> np.ndarray:
    small = np.stack([np.asarray(Image.fromarray(p).resize((_FEATURE_SIZE, _FEATURE_SIZE), Image.Resampling.BOX),
                                 np.float32) / 255.0 for p in pixels])
    return cortex.voxel_drive(anat, cortex.image_features(small, _FEATURE_SIZE), categories)


# --------------------------------------------------------------------------- timing and events


def slice_timing(spec: BIDSSpec) -> tuple[list[float], float]:
    """Interleaved ascending SliceTiming (s) and fMRIPrep's StartTime for it (first + 0.5 (last - first))."""
    n = spec.volume_shape[2]
    order = [*range(0, n, 2), *range(1, n, 2)]
    times = np.zeros(n)
    times[order] = np.arange(n) * spec.tr / n
    times = np.round(times, 4)
    return times.tolist(), float(np.round(times.min() + 0.5 * (times.max() - times.min()), 3))


def _session_events(spec: BIDSSpec, session: int, n_images: int) -> list[pd.DataFrame]:
    """Per run: onset, duration, trial_type, stim image index (-1 for blanks)."""
    rng = _rng(spec, 2, session)
    order = rng.permutation(np.repeat(np.arange(n_images), spec.repeats))
    runs = []
    for images in np.array_split(order, spec.runs):
        slots = [s for k, image in enumerate(images)
                 for s in ([-1] if k and k % (spec.blank_every - 1) == 0 else []) + [int(image)]]
        n = len(slots)
        onset = spec.lead_in + spec.trial_seconds * np.arange(n) + rng.uniform(-1, 1, n) * spec.onset_jitter
        duration = spec.image_seconds + rng.normal(0, spec.duration_jitter, n)
        runs.append(pd.DataFrame({"onset": np.round(onset, 4), "duration": np.round(duration, 4),
                                  "trial_type": np.where(np.array(slots) < 0, "blank", "image"), "image": slots}))
    return runs


def _hrf() -> tuple[np.ndarray, np.ndarray]:
    """SPM's canonical double gamma (peak 6 s, undershoot 16 s, ratio 1/6) on a 0.01-s grid over 32 s."""
    t = np.arange(0, 32, 0.01)
    return t, stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6


def _responses(onsets: np.ndarray, durations: np.ndarray, times: np.ndarray, image_seconds: float) -> np.ndarray:
    """(n_times, n_trials): each trial's boxcar ⊛ HRF at ``times``, a nominal trial peaking at 1."""
    t, h = _hrf()
    cum = np.concatenate([[0.0], np.cumsum(h) * 0.01])[:-1]

    def integral(x: np.ndarray) -> np.ndarray:
        return np.interp(x, t, cum, left=0.0, right=cum[-1])

    nominal = integral(t) - integral(t - image_seconds)
    lag = times[:, None] - onsets[None, :]
    return (integral(lag) - integral(lag - durations[None, :])) / nominal.max()


# --------------------------------------------------------------------------- simulation


def _regions(anat: cortex.Anatomy) -> dict[str, np.ndarray]:
    shape = np.array(anat.shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    radius = np.linalg.norm((grid - (shape - 1) / 2) / (0.46 * shape), axis=-1)
    cortex_region = np.isin(np.arange(anat.brain.size), anat.voxels).reshape(anat.shape)
    return dict(brain=anat.brain, csf=anat.brain & (radius < 0.22),
                wm=anat.brain & (radius > 0.3) & (radius < 0.6) & ~cortex_region)


def _baseline(spec: BIDSSpec, regions: dict[str, np.ndarray]) -> np.ndarray:
    rng = _rng(spec, 3)
    smooth = ndimage.gaussian_filter(rng.standard_normal(spec.volume_shape), 2.0)
    base = np.where(regions["brain"], 700 + 600 * smooth, 30 + 5 * np.abs(rng.standard_normal(spec.volume_shape)))
    base[regions["wm"]] = 600 + 300 * smooth[regions["wm"]]
    base[regions["csf"]] = 1000
    return ndimage.gaussian_filter(base, 0.7).astype(np.float64)


def _motion(spec: BIDSSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 6): trans_x/y/z (mm) and rot_x/y/z (rad): slow drift plus two jerks."""
    steps = rng.normal(0, 1, (n, 6)) * np.array([0.02] * 3 + [0.0003] * 3)
    for t in rng.choice(np.arange(n // 4, n), 2, replace=False):
        steps[t] += rng.choice([-1, 1], 6) * np.array([0.3] * 3 + [0.003] * 3)
    return spec.motion * np.cumsum(steps, axis=0)


def _simulate_run(spec: BIDSSpec, anat: cortex.Anatomy, base: np.ndarray, regions: dict[str, np.ndarray],
                  responses: np.ndarray, betas: np.ndarray, key: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """One run's preprocessed series (X, Y, Z, T) float32, its motion (T, 6) and noise-free response (T, n_vox)."""
    rng = _rng(spec, 4, *key)
    n = len(responses)
    flat = base.reshape(-1)
    pct = np.zeros((n, flat.size))
    neural = responses @ betas
    pct[:, anat.voxels] += neural
    u = np.linspace(-1, 1, n)
    pct += np.outer(u, rng.normal(0, spec.drift, flat.size)) + np.outer(1.5 * u**2 - 0.5,
                                                                         rng.normal(0, spec.drift / 2, flat.size))
    physio = ndimage.gaussian_filter1d(rng.standard_normal((n, 3)), 1.0, axis=0)
    weight = 0.3 + (regions["csf"] | regions["wm"]).reshape(-1)
    pct += 0.8 * physio @ (rng.standard_normal((3, flat.size)) * weight)
    eps = rng.standard_normal((n, flat.size)) * spec.noise
    for t in range(1, n):
        eps[t] = spec.ar1 * eps[t - 1] + np.sqrt(1 - spec.ar1**2) * eps[t]
    pct += eps
    data = flat * (1 + pct / 100)
    if spec.non_steady:
        data[:spec.non_steady] *= 1 + 0.5 / (1 + np.arange(spec.non_steady))[:, None]
    motion = _motion(spec, n, rng)
    grads = np.stack([g.reshape(-1) for g in np.gradient(base)], axis=1) / spec.voxel_mm
    centre = (np.array(spec.volume_shape) - 1) / 2
    r = (np.stack(np.unravel_index(np.arange(flat.size), spec.volume_shape), axis=1) - centre) * spec.voxel_mm
    for t in range(n):
        displacement = motion[t, :3] + np.cross(motion[t, 3:], r)
        data[t] -= np.einsum("vk,vk->v", grads, displacement)
    data = np.clip(data, 0, None).astype(np.float32)
    return data.T.reshape(*spec.volume_shape, n), motion, neural.astype(np.float32)


# --------------------------------------------------------------------------- files


def _nifti_gz(data: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...]) -> bytes:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(zooms)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(img.to_bytes())
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class _Writer:
    def __init__(self, root: Path):
        self.root, self.files = root, []

    def bytes(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.append(rel)

    def json(self, rel: str, value: Any) -> None:
        self.bytes(rel, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def tsv(self, rel: str, table: pd.DataFrame) -> None:
        self.bytes(rel, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.8g",
                                     lineterminator="\n").encode())


def _run_entities(spec: BIDSSpec, session: str | None, run: int) -> dict[str, Any]:
    return dict(sub=spec.participant, ses=session, task=spec.task, run=run)


def _func_dir(spec: BIDSSpec, session: str | None) -> str:
    return f"sub-{spec.participant}/" + (f"ses-{session}/" if session else "") + "func"


def _top_files(w: _Writer, spec: BIDSSpec) -> None:
    w.json("dataset_description.json", {
        "Name": "mini-NSD BIDS: a simulated new person", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
        "License": "CC0", "Authors": ["fmri2img mini-NSD generator"],
        "GeneratedBy": [{"Name": "fmri2img", "Description": "fmri2img.mininsd.bids (simulated data)"}]})
    w.bytes("README", b"Simulated BIDS dataset written by fmri2img (fmri2img.mininsd.bids) for tests.\n"
                      b"The truth it was simulated from is under sourcedata/.\n")
    w.tsv("participants.tsv", pd.DataFrame({"participant_id": [f"sub-{spec.participant}"], "age": [np.nan],
                                            "sex": [np.nan]}))
    w.json("participants.json", {"age": {"Description": "age of the participant", "Units": "year"},
                                 "sex": {"Description": "sex of the participant", "Levels": {"F": "female",
                                                                                            "M": "male"}}})
    w.json(f"task-{spec.task}_bold.json", {"TaskName": spec.task, "RepetitionTime": spec.tr})
    w.json(f"task-{spec.task}_events.json", {
        "trial_type": {"Description": "image or blank slot"},
        "stim_file": {"Description": "the image shown, relative to /stimuli (n/a for blank slots)"}})
    w.json(f"{DERIVATIVES}/dataset_description.json", {
        "Name": "mini-NSD BIDS: fMRIPrep-style derivatives (simulated)", "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "fmri2img mini-nsd",
                                                      "Description": "simulated in fMRIPrep's output layout"}]})


def generate_bids(root: str | os.PathLike, mini_nsd: str | os.PathLike, spec: BIDSSpec = BIDSSpec(),
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the BIDS dataset under ``root`` from the mini-NSD dataset at ``mini_nsd``.

    Parameters
    ----------
    root : str or path-like
        Local folder (created; files already there with the same names are overwritten).
    mini_nsd : str or path-like
        A mini-NSD dataset (:func:`fmri2img.mininsd.generate_mini_nsd`) that has ``reference_subject``.
    spec : BIDSSpec
    progress : callable, optional
        Called with a line after each run; default the module's logger.

    Returns
    -------
    manifest : dict
        The content of ``sourcedata/mini_nsd_bids_truth.json``.
    """
    progress = progress or logger.info
    w = _Writer(Path(root))
    person = _person(spec, Path(mini_nsd))
    _top_files(w, spec)
    for name, pixels in zip(person.images["names"], person.images["pixels"]):
        w.bytes(f"stimuli/{name}", _png(pixels))
    truth_runs = {}
    for s, session in enumerate(spec.sessions or (None,)):
        for r, events in enumerate(_session_events(spec, s, len(person.images["names"])), start=1):
            ent = _run_entities(spec, session, r)
            truth = _simulate(spec, person, events, (s, r))
            _write_run(w, spec, person, ent, _func_dir(spec, session), events, truth)
            truth_runs[format_name(ent, "bold", "")] = truth
            progress(f"sub-{spec.participant} {format_name(ent, 'bold', '')}: {len(truth['frame_times'])} volumes, "
                     f"{len(truth['onset'])} trials")
    return _write_truth(w, spec, person, truth_runs)


@dataclass(frozen=True)
class _Person:
    """The simulated person: images seen, anatomy, responses, tissue regions, baseline image, timing."""

    images: dict[str, Any]
    anat: cortex.Anatomy
    drive: np.ndarray
    amplitude: np.ndarray
    regions: dict[str, np.ndarray]
    base: np.ndarray
    slice_timing: list[float]
    start: float


def _person(spec: BIDSSpec, mini: Path) -> _Person:
    images = _images(spec, mini)
    anat = cortex.build_anatomy(spec.volume_shape, _rng(spec, 5), keep=0.6, origin_mm=(1.0, -3.0, 2.0),
                                voxel_mm=spec.voxel_mm)
    regions = _regions(anat)
    st, start = slice_timing(spec)
    return _Person(images=images, anat=anat, drive=_drive(anat, images["pixels"], images["categories"]),
                   amplitude=_rng(spec, 6).uniform(1.0, 3.0, len(anat.voxels)), regions=regions,
                   base=_baseline(spec, regions), slice_timing=st, start=start)


def _simulate(spec: BIDSSpec, person: _Person, events: pd.DataFrame, key: tuple[int, int]) -> dict[str, np.ndarray]:
    """One run's truth (betas, onsets, images, motion, noise-free response) and its data (key ``data``)."""
    n_vol = int(np.ceil((events["onset"].iloc[-1] + spec.trial_seconds + spec.tail) / spec.tr))
    trials = events[events["image"] >= 0].reset_index(drop=True)
    noise = _rng(spec, 7, *key).normal(0, spec.trial_noise, (len(trials), len(person.anat.voxels)))
    betas = person.amplitude * person.drive[trials["image"].to_numpy()] + noise
    times = person.start + spec.tr * np.arange(n_vol)
    resp = _responses(trials["onset"].to_numpy(), trials["duration"].to_numpy(), times, spec.image_seconds)
    data, motion, neural = _simulate_run(spec, person.anat, person.base, person.regions, resp, betas, key)
    return dict(betas=betas.astype(np.float32), onset=trials["onset"].to_numpy(), image=trials["image"].to_numpy(),
                duration=trials["duration"].to_numpy(), motion=motion, neural=neural, frame_times=times, data=data)


def _write_run(w: _Writer, spec: BIDSSpec, person: _Person, ent: dict[str, Any], func: str, events: pd.DataFrame,
               truth: dict[str, np.ndarray]) -> None:
    data, affine, dfunc = truth.pop("data"), person.anat.affine, f"{DERIVATIVES}/{func}"
    names = person.images["names"]
    table = events.assign(stim_file=[names[i] if i >= 0 else np.nan for i in events["image"]])
    w.tsv(f"{func}/{format_name(ent, 'events', '.tsv')}", table.drop(columns="image"))
    zooms = (spec.voxel_mm,) * 3 + (spec.tr,)
    w.bytes(f"{func}/{format_name(ent, 'bold', '.nii.gz')}", _nifti_gz(np.round(data).astype(np.int16), affine, zooms))
    w.json(f"{func}/{format_name(ent, 'bold', '.json')}", {"SliceTiming": person.slice_timing})
    pre = {**ent, "space": spec.space, "desc": "preproc"}
    w.bytes(f"{dfunc}/{format_name(pre, 'bold', '.nii.gz')}", _nifti_gz(data, affine, zooms))
    w.json(f"{dfunc}/{format_name(pre, 'bold', '.json')}", {
        "RepetitionTime": spec.tr, "SliceTimingCorrected": True, "StartTime": person.start, "TaskName": spec.task,
        "SkullStripped": False})
    w.bytes(f"{dfunc}/{format_name({**pre, 'desc': 'brain'}, 'mask', '.nii.gz')}",
            _nifti_gz(person.regions["brain"].astype(np.uint8), affine, zooms[:3]))
    table, meta = confounds(data, truth["motion"], person.regions, tr=spec.tr, n_compcor=spec.n_compcor,
                            non_steady=spec.non_steady)
    w.tsv(f"{dfunc}/{format_name({**ent, 'desc': 'confounds'}, 'timeseries', '.tsv')}", table)
    w.json(f"{dfunc}/{format_name({**ent, 'desc': 'confounds'}, 'timeseries', '.json')}", meta)


def _write_truth(w: _Writer, spec: BIDSSpec, person: _Person, runs: dict[str, dict[str, np.ndarray]]
                 ) -> dict[str, Any]:
    anat, images, st, start = person.anat, person.images, person.slice_timing, person.start
    path = w.root / TRUTH_HDF5
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", track_order=True) as h5:
        ijk = np.stack(np.unravel_index(anat.voxels, anat.shape), axis=1)
        for name, value in dict(voxels_ijk=ijk, amplitude=person.amplitude, drive=person.drive.astype(np.float32),
                                nsd_id=images["nsd_id"], area=anat.area, rf_x=anat.rf_x, rf_y=anat.rf_y,
                                rf_size=anat.rf_size, ecc=anat.ecc, brain=anat.brain,
                                hrf=np.stack(_hrf())).items():
            h5.create_dataset(name, data=value, track_times=False)
        for run, values in runs.items():
            grp = h5.create_group(f"runs/{run}", track_order=True)
            for name, value in values.items():
                grp.create_dataset(name, data=value, track_times=False)
    w.files.append(TRUTH_HDF5)
    manifest = dict(
        format="mini-nsd-bids", version=1, spec=dataclasses.asdict(spec), reference_subject=spec.reference_subject,
        images=[dict(stim_file=n, nsd_id=int(i) if i >= 0 else None, new=bool(i < 0),
                     parent_nsd_id=None if i >= 0 else int(images["parents"][k - spec.n_shared]))
                for k, (n, i) in enumerate(zip(images["names"], images["nsd_id"]))],
        timing=dict(RepetitionTime=spec.tr, SliceTiming=st, StartTime=start, hrf="SPM canonical double gamma, "
                    "a nominal trial's response peaking at 1"),
        volume_shape=list(anat.shape), affine=anat.affine.tolist(), n_voxels=int(len(anat.voxels)),
        runs=sorted(runs),
        ground_truth=("betas[trial, voxel] = amplitude * drive[image] + N(0, trial_noise), percent signal change "
                      "of the voxels voxels_ijk (the simulated visual cortex); new images (nsd_id -1) are the "
                      "colour negative, transposed, of mini-NSD image parent_nsd_id, which the reference never saw"),
        files=sorted(w.files + [TRUTH_JSON]),
    )
    w.json(TRUTH_JSON, manifest)
    return manifest
