"""mini-NSD's time series: NSD's ``nsddata_timeseries`` layout, simulated from known single-trial responses.

What is written, per subject and for the first ``spec.timeseries_sessions`` sessions (the
facts, and their sources, are in :mod:`fmri2img.storage.nsd.timeseries`):

* ``nsddata_timeseries/ppdata/subjNN/func1pt8mm/timeseries/timeseries_sessionSS_runRR.nii.gz``:
  int16 X×Y×Z×T raw intensities (no scaling), TR 4/3 s in the header, zero outside the brain
  mask, written through gzip one volume at a time (memory: a few volumes);
* ``.../design/design_sessionSS_runRR.tsv``: one row a volume, the 1-based image id at each
  trial's onset, else 0; 3 rows a 4-s trial slot, and one volume fewer than the run (NSD's
  225 rows for 226 volumes);
* ``nsddata/ppdata/subjNN/func1pt8mm/brainmask.nii.gz`` (int16, 1 inside the brain);
* ``mini_nsd_timeseries_truth.hdf5``: what the data were made from (:class:`SubjectWriter`).

The trials are mini-NSD's own: the same subjects, images and order (``masterordering``), cut
into runs by the design's ``stimpattern``, which :func:`stimpattern` makes NSD-like when time
series are written (12 runs of 75 four-second slots and 62–63 trials for 750 trials a
session; fewer, shorter runs for small specs; a blank first slot and two blank last slots are
mini-NSD's choice). Each trial's true response at an nsdgeneral voxel is that trial's
mini-NSD beta at the voxel (percent signal change), so a GLM fitted to these time series
can be compared with ``betas_sessionNN``; the rest of the brain does not respond.

A voxel's time series, in percent signal change of its baseline ``B`` (raw units), is
``B · (1 + (s + d + n + e) / 100)`` rounded to int16, with
``s`` = Σ amplitude × HRF (one of the library's HRFs per voxel, onset at the trial's first
volume), ``d`` = a polynomial drift (degrees 0–2, new coefficients each run), ``n`` = shared
nuisance time courses (smooth, new each run) times the voxel's loadings (what GLMdenoise
removes), ``e`` = AR(1) noise. Deterministic: the same spec gives byte-identical files.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fmri2img.mininsd.cortex import Anatomy
from fmri2img.mininsd.files import _nifti_header, nifti_gz
from fmri2img.mininsd.spec import MiniNSDSpec, rng_for
from fmri2img.storage.nsd import BETA_SCALE
from fmri2img.storage.nsd.timeseries import (ROWS_PER_TRIAL, RUN_VOLUMES, SLOTS_PER_RUN, STIMULUS_SECONDS,
                                             TR_SECONDS, TimeseriesLayout)

SPACE = "func1pt8mm"
TR = TR_SECONDS[SPACE]
ROWS = ROWS_PER_TRIAL[SPACE]
TRUTH_FILE = "mini_nsd_timeseries_truth.hdf5"
#: NSD's trials a run at most (63) and its slots (75): mini-NSD keeps the ratio.
_NSD_MAX_TRIALS = 63
#: Drift standard deviation (percent signal change) of the polynomial of degree 0, 1, 2.
DRIFT_PSC: tuple[float, ...] = (2.0, 1.5, 0.75)
#: Shared nuisance time courses and the standard deviation of a voxel's loadings (percent).
N_NUISANCE = 3
NUISANCE_PSC = 1.0
#: Baseline intensities (raw units, int16-safe with the signal on top).
BASELINE_RANGE = (800.0, 1600.0)
AR_RHO_RANGE = (0.1, 0.5)


# --------------------------------------------------------------------------- design


def runs_per_session(spec: MiniNSDSpec) -> int:
    """Runs of a session: ``spec.runs_per_session``, or NSD's 12 when ≥ 30 trials a run allow."""
    if spec.runs_per_session:
        return int(spec.runs_per_session)
    return max(1, min(12, spec.trials_per_session // 30))


def trials_per_run(spec: MiniNSDSpec) -> np.ndarray:
    """Trials of each run (as even as possible; NSD: 750 = 6 × 63 + 6 × 62), shape (runs,)."""
    runs = runs_per_session(spec)
    base, extra = divmod(spec.trials_per_session, runs)
    return np.array([base + (r < extra) for r in range(runs)], dtype=np.int64)


def slots_per_run(spec: MiniNSDSpec) -> int:
    """Four-second slots of a run: NSD's 75 for 63 trials, the same ratio otherwise (≥ 3 blanks)."""
    most = int(trials_per_run(spec).max())
    return max(most + 3, int(round(most * SLOTS_PER_RUN / _NSD_MAX_TRIALS)))


def volumes_per_run(spec: MiniNSDSpec) -> int:
    """Volumes of a run: 3 a slot plus NSD's trailing volume (226 for 75 slots)."""
    return slots_per_run(spec) * ROWS + (RUN_VOLUMES[SPACE] - SLOTS_PER_RUN * ROWS)


def stimpattern(spec: MiniNSDSpec) -> np.ndarray:
    """``stimpattern`` of ``nsd_expdesign.mat`` for a dataset with time series.

    Returns
    -------
    pattern : array of shape (n_sessions, runs, slots), uint8
        1 at a stimulus trial's slot. The first slot and the last two are blank; the other
        blanks are placed at random (seeded per session and run).
    """
    counts, slots = trials_per_run(spec), slots_per_run(spec)
    out = np.zeros((spec.n_sessions, len(counts), slots), np.uint8)
    for s in range(spec.n_sessions):
        for r, n in enumerate(counts):
            free = np.arange(1, slots - 2)
            out[s, r, np.sort(rng_for(spec, 22, s + 1, r + 1).choice(free, int(n), replace=False))] = 1
    return out


def design_rows(pattern_run: np.ndarray, images: np.ndarray) -> np.ndarray:
    """A run's design TSV rows from its slots and its trials' 0-based images.

    Parameters
    ----------
    pattern_run : array of shape (slots,)
    images : array of shape (n_trials,)

    Returns
    -------
    rows : array of shape (slots * 3,), int64
        The 1-based image id at each trial's first volume, else 0.
    """
    rows = np.zeros(pattern_run.size * ROWS, np.int64)
    rows[np.flatnonzero(pattern_run) * ROWS] = np.asarray(images, np.int64) + 1
    return rows


# --------------------------------------------------------------------------- signal


def default_hrfs() -> np.ndarray:
    """GLMsingle's 20 HRFs for a 3-s stimulus at 4/3 s, from :mod:`fmri2img.glm.hrf`, shape (n_time, 20)."""
    from fmri2img.glm.hrf import hrf_library

    return hrf_library(STIMULUS_SECONDS, TR)


def noiseless_signal(onsets: np.ndarray, amplitudes: np.ndarray, hrfs: np.ndarray, hrf_index: np.ndarray,
                     n_volumes: int) -> np.ndarray:
    """The evoked signal: each trial's amplitude times its voxel's HRF from the trial's onset.

    Parameters
    ----------
    onsets : array of shape (n_trials,)
        0-based onset volumes.
    amplitudes : array of shape (n_trials, n_voxels)
        Percent signal change (the response's peak: the HRFs peak at 1).
    hrfs : array of shape (n_time, n_hrf)
    hrf_index : array of shape (n_voxels,)
    n_volumes : int

    Returns
    -------
    signal : array of shape (n_volumes, n_voxels), float64
    """
    shifted = np.zeros((n_volumes, len(onsets), hrfs.shape[1]))
    for j, onset in enumerate(np.asarray(onsets, np.int64)):
        stop = min(n_volumes, onset + hrfs.shape[0])
        shifted[onset:stop, j] = hrfs[:stop - onset]
    out = np.zeros((n_volumes, amplitudes.shape[1]))
    for h in np.unique(hrf_index):
        cols = np.flatnonzero(hrf_index == h)
        out[:, cols] = shifted[:, :, h] @ amplitudes[:, cols]
    return out


def drift_basis(n_volumes: int, degree: int = len(DRIFT_PSC) - 1) -> np.ndarray:
    """Legendre polynomials of degrees 0..``degree`` on [-1, 1], shape (n_volumes, degree + 1)."""
    t = np.linspace(-1.0, 1.0, n_volumes)
    return np.stack([np.polynomial.legendre.Legendre.basis(k)(t) for k in range(degree + 1)], axis=1)


def nuisance_courses(rng: np.random.Generator, n_volumes: int, n: int = N_NUISANCE) -> np.ndarray:
    """Smooth shared time courses (Gaussian-smoothed white noise, unit standard deviation), (n_volumes, n)."""
    raw = rng.standard_normal((n_volumes + 12, n))
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.5) ** 2)
    smooth = np.stack([np.convolve(raw[:, k], kernel, mode="valid") for k in range(n)], axis=1)[:n_volumes]
    smooth -= smooth.mean(axis=0)
    return smooth / smooth.std(axis=0)


# --------------------------------------------------------------------------- writer


@dataclass
class _Voxels:
    """One subject's brain voxels and what is drawn once for them."""

    flat: np.ndarray        # (n_brain,) flat C-order indices of the brain mask
    fortran: np.ndarray     # (n_brain,) the same voxels' flat Fortran-order indices
    responding: np.ndarray  # (n_resp,) positions in ``flat`` of the nsdgeneral voxels
    zyx: np.ndarray         # (n_resp,) their flat indices in a (Z, Y, X) betas volume
    hrf_index: np.ndarray   # (n_brain,)
    baseline: np.ndarray    # (n_brain,)
    rho: np.ndarray         # (n_brain,)
    sd: np.ndarray          # (n_brain,)
    loadings: np.ndarray    # (n_brain, N_NUISANCE)


class SubjectWriter:
    """Writes one subject's time series, designs and brain mask, and its truth.

    The truth group ``subjNN`` of ``mini_nsd_timeseries_truth.hdf5`` holds
    ``voxels`` (n_brain,): flat C-order indices of the brain-mask voxels, the voxel axis of
    every per-voxel array; ``responding`` (n_resp,): positions of the responding (nsdgeneral)
    voxels in ``voxels``; ``hrfs`` (n_time, n_hrf); ``hrf_index``, ``baseline`` (raw units),
    ``ar_rho``, ``noise_sd`` (percent) of shape (n_brain,); ``nuisance_loadings``
    (n_brain, n_nuisance, percent); ``drift_basis_degree``. Per session ``sessionSS``:
    ``image`` (0-based), ``run`` (1-based), ``onset_volume`` (0-based) of shape (n_trials,),
    ``amplitudes`` (n_trials, n_resp, percent signal change: the trials' true responses),
    and per run ``runRR``: ``nuisance`` (n_volumes, n_nuisance) and ``drift`` (degree + 1,
    n_brain, percent; the drift is ``drift_basis(n_volumes) @ drift``).

    Parameters
    ----------
    root : Path
    spec : MiniNSDSpec
    subject : int
    anat : cortex.Anatomy
    truth : h5py.File
        The open truth file.
    hrfs : array of shape (n_time, n_hrf), optional
        HRFs sampled every 4/3 s from onset; default :func:`default_hrfs`.
    """

    def __init__(self, root: Path, spec: MiniNSDSpec, subject: int, anat: Anatomy, truth: h5py.File,
                 hrfs: np.ndarray | None = None) -> None:
        self.root, self.spec, self.subject, self.anat = Path(root), spec, int(subject), anat
        self.layout = TimeseriesLayout("", SPACE)
        self.hrfs = np.asarray(default_hrfs() if hrfs is None else hrfs, dtype=np.float64)
        if self.hrfs.ndim != 2 or self.hrfs.shape[0] >= volumes_per_run(spec):
            raise ValueError(f"hrfs has shape {self.hrfs.shape}; expected (n_time, n_hrf) sampled every 4/3 s, shorter "
                             f"than a run ({volumes_per_run(spec)} volumes): use more trials per run")
        self.pattern = stimpattern(spec)
        self.vox = self._draw_voxels()
        self.sessions: list[int] = []
        self.group = truth.create_group(f"subj{self.subject:02d}")
        self._write_subject_truth()
        path = self.root / self.layout.brainmask(self.subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(nifti_gz(anat.brain.astype(np.int16), anat.affine))

    @property
    def n_sessions(self) -> int:
        """Sessions of this subject written as time series (its first ones)."""
        return min(self.spec.timeseries_sessions, self.spec.sessions_of(self.subject))

    def _draw_voxels(self) -> _Voxels:
        anat, rng = self.anat, rng_for(self.spec, 20, self.subject)
        flat = np.flatnonzero(anat.brain)
        responding = np.flatnonzero(np.isin(flat, anat.voxels))
        x, y, z = np.unravel_index(flat[responding], anat.shape)
        n = flat.size
        return _Voxels(
            flat=flat, fortran=np.ravel_multi_index(np.unravel_index(flat, anat.shape), anat.shape, order="F"),
            responding=responding, zyx=(z * anat.shape[1] + y) * anat.shape[0] + x,
            hrf_index=rng.integers(0, self.hrfs.shape[1], n), baseline=rng.uniform(*BASELINE_RANGE, n),
            rho=rng.uniform(*AR_RHO_RANGE, n), sd=self.spec.timeseries_noise * rng.uniform(0.7, 1.3, n),
            loadings=rng.normal(0.0, NUISANCE_PSC, (n, N_NUISANCE)))

    def _write_subject_truth(self) -> None:
        v, g = self.vox, self.group
        for name, data in (("voxels", v.flat), ("responding", v.responding), ("hrfs", self.hrfs),
                           ("hrf_index", v.hrf_index), ("baseline", v.baseline.astype(np.float32)),
                           ("ar_rho", v.rho.astype(np.float32)), ("noise_sd", v.sd.astype(np.float32)),
                           ("nuisance_loadings", v.loadings.astype(np.float32))):
            g.create_dataset(name, data=data, track_times=False)
        g.attrs.update(volume_shape=list(self.anat.shape), tr=TR, stimulus_seconds=STIMULUS_SECONDS,
                       drift_basis_degree=len(DRIFT_PSC) - 1, units="percent signal change of baseline")

    def write_session(self, session: int, images: np.ndarray, betas: np.ndarray) -> None:
        """Write one session's runs from its trials' images and mini-NSD betas.

        Parameters
        ----------
        session : int
        images : array of shape (n_trials,)
            0-based image of each trial, in trial order.
        betas : array of shape (n_trials, Z, Y, X)
            The session's betas as stored (× 300); NaN counts as no response.
        """
        stored = betas.reshape(len(images), -1)[:, self.vox.zyx]
        amps = np.nan_to_num(stored / np.float32(BETA_SCALE)).astype(np.float32)
        pattern = self.pattern[session - 1]
        counts = pattern.sum(axis=1).astype(np.int64)
        group = self.group.create_group(f"session{session:02d}")
        run_of, onset_of = np.repeat(np.arange(1, len(counts) + 1), counts), []
        for r, first in enumerate(np.concatenate([[0], np.cumsum(counts)[:-1]])):
            trials = slice(int(first), int(first + counts[r]))
            onsets = np.flatnonzero(pattern[r]) * ROWS
            onset_of.append(onsets)
            self._write_run(group, session, r + 1, pattern[r], onsets, images[trials], amps[trials])
        for name, data in (("image", np.asarray(images, np.int64)), ("run", run_of),
                           ("onset_volume", np.concatenate(onset_of)), ("amplitudes", amps)):
            group.create_dataset(name, data=data, track_times=False)
        self.sessions.append(int(session))

    def _write_run(self, group: h5py.Group, session: int, run: int, pattern_run: np.ndarray, onsets: np.ndarray,
                   images: np.ndarray, amps: np.ndarray) -> None:
        rows = design_rows(pattern_run, images)
        dpath = self.root / self.layout.design(self.subject, session, run)
        dpath.parent.mkdir(parents=True, exist_ok=True)
        dpath.write_text("".join(f"{int(v)}\n" for v in rows))
        n_vol = volumes_per_run(self.spec)
        rng = rng_for(self.spec, 21, self.subject, session, run)
        v = self.vox
        drift = np.asarray(DRIFT_PSC)[:, None] * rng.standard_normal((len(DRIFT_PSC), v.flat.size))
        nuisance = nuisance_courses(rng, n_vol)
        signal = noiseless_signal(onsets, amps.astype(np.float64), self.hrfs, v.hrf_index[v.responding], n_vol)
        run_path = self.root / self.layout.timeseries(self.subject, session, run)
        self._stream_volumes(run_path, rng, drift_basis(n_vol), drift, nuisance, signal)
        sub = group.create_group(f"run{run:02d}")
        sub.create_dataset("nuisance", data=nuisance.astype(np.float32), track_times=False)
        sub.create_dataset("drift", data=drift.astype(np.float32), track_times=False)
        sub.attrs.update(path=str(run_path.relative_to(self.root)), n_volumes=n_vol, design_rows=rows.size)

    def _stream_volumes(self, path: Path, rng: np.random.Generator, basis: np.ndarray, drift: np.ndarray,
                        nuisance: np.ndarray, signal: np.ndarray) -> None:
        """Write the run one volume at a time (memory: a few volumes of brain voxels).

        ``basis`` (n_volumes, degree + 1) and ``drift`` (degree + 1, n_brain) give the drift,
        ``nuisance`` (n_volumes, n_nuisance) times the loadings the nuisance, ``signal``
        (n_volumes, n_resp) the evoked response; the AR(1) noise is drawn volume by volume.
        """
        v, shape = self.vox, self.anat.shape
        n_vol = signal.shape[0]
        noise = v.sd * rng.standard_normal(v.flat.size)
        innovation = v.sd * np.sqrt(1.0 - v.rho ** 2)
        volume = np.zeros(int(np.prod(shape)), np.int16)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            gz.write(_nifti_header((*shape, n_vol), np.dtype(np.int16), self.anat.affine))
            for t in range(n_vol):
                if t:
                    noise = v.rho * noise + innovation * rng.standard_normal(v.flat.size)
                psc = basis[t] @ drift + v.loadings @ nuisance[t] + noise
                psc[v.responding] += signal[t]
                values = np.round(v.baseline * (1.0 + psc / 100.0))
                volume[v.fortran] = np.clip(values, -32768, 32767).astype(np.int16)
                gz.write(volume.tobytes())

    def summary(self) -> dict[str, Any]:
        """What was written for this subject (for ``mini_nsd.json``)."""
        return dict(space=SPACE, sessions=list(self.sessions), runs_per_session=int(self.pattern.shape[1]),
                    volumes_per_run=volumes_per_run(self.spec), design_rows=slots_per_run(self.spec) * ROWS,
                    n_brain_voxels=int(self.vox.flat.size), n_responding_voxels=int(self.vox.responding.size),
                    brainmask=self.layout.brainmask(self.subject))


def manifest_entry(spec: MiniNSDSpec, hrfs_given: bool = False) -> dict[str, Any]:
    """The dataset-wide description of the time series for ``mini_nsd.json``."""
    return dict(
        layout="nsddata_timeseries/ppdata/subjNN/func1pt8mm/{timeseries,design}", tr=TR, dtype="int16",
        stimulus_seconds=STIMULUS_SECONDS, trial_seconds=ROWS * TR, rows_per_trial=ROWS,
        runs_per_session=runs_per_session(spec), slots_per_run=slots_per_run(spec),
        trials_per_run=trials_per_run(spec).tolist(), volumes_per_run=volumes_per_run(spec),
        design_rows=slots_per_run(spec) * ROWS, truth=TRUTH_FILE,
        hrfs="given by the caller" if hrfs_given else "fmri2img.glm.hrf.hrf_library(3.0, 4/3): GLMsingle's 20",
        model=("raw = baseline * (1 + (signal + drift + nuisance + AR(1) noise) / 100), int16; signal = sum of "
               "trial amplitude * the voxel's HRF from the trial's onset at nsdgeneral voxels (amplitude = the "
               "trial's mini-NSD beta in percent signal change), none elsewhere; drift = Legendre degrees 0-2 "
               f"(sd {list(DRIFT_PSC)} %) per run; nuisance = {N_NUISANCE} smooth shared courses per run times "
               f"voxel loadings (sd {NUISANCE_PSC} %); AR(1) rho in {list(AR_RHO_RANGE)}, sd "
               f"{spec.timeseries_noise} % x U(0.7, 1.3)"))
