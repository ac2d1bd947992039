"""NSD's pre-processed fMRI time series and their design files, read run by run, streamed.

Facts and their sources (NSD data manual, "Time-series data",
https://cvnlab.slite.page/p/vjWTghPTb3/Time-series-data; NSD's own code, cvnlab/nsddatapaper
``main/export.m``, ``glm_nsd.m``, ``datafix_script3b.m``; GLMsingle's example 1):

* **Files.** ``nsddata_timeseries/ppdata/subjNN/func1pt8mm/timeseries/timeseries_sessionSS_runRR.nii.gz``
  (``func1mm``: the 1-mm preparation) and ``.../design/design_sessionSS_runRR.tsv``. A session
  has 12 runs; one with resting-state scans has 14, whose runs 01 and 14 are rest with an
  all-zero design (manual; export.m ``allruns([13 1:12 14])``; glm_nsd.m fits runs 2..13).
* **Data.** int16 NIfTI-1, X×Y×Z×T (subject 1: 81×104×83, 1.8 mm), scanner intensities: "no
  high-pass filtering, nuisance regression, nor units conversion" (manual); no scaling, the
  TR in the header (export.m: "stored as int16", ``nsd_savenifti(..., tr)``). Voxels outside
  the liberal brain mask ``nsddata/ppdata/subjNN/func1pt8mm/brainmask.nii.gz`` are zero. NIfTI
  data are in Fortran order, one volume a contiguous run of bytes: this reader streams the
  gzip volume by volume and keeps only the asked voxels.
* **Time.** Cubic resampling (slice-time corrected) to 4/3 s (≈1.333 s, "standard",
  func1pt8mm) or 1 s ("high", func1mm); the first time point is the start of the first
  volume's acquisition (manual). A run is 75 trial slots of 4 s; a trial shows an image for
  3 s (glm_nsd.m ``stimdur = 3``), then 1 s of gap. Runs have 226 volumes (func1pt8mm) or
  301 (func1mm) (datafix_script3b.m): samples at 0 … 300 s (188 volumes acquired at TR 1.6 s).
* **Design.** One integer a row: the 1-based 73k id of the image whose trial starts at that
  volume, else 0 (manual; export.m, whose check compares the non-zero rows with the upsampled
  ``stimpattern``); 3 rows a trial in func1pt8mm (``designmatrixFULL_3pertrial``), 4 in
  func1mm. 750 trials a session (a session's ``stimpattern``), 62 or 63 a run.
* **Rows vs volumes.** 225 rows (75 × 3; func1mm 300) for 226 volumes (301): the last volume,
  at t = 300 s, follows the last slot. NSD's GLM drops it ("trailing volumes of fMRI data
  must be dropped in order to match!", export.m; glm_nsd.m asserts ``size(data,4) >=
  size(stimulus,1)`` and keeps ``1:size(stimulus,1)``); GLMsingle's NSD example has 300
  volumes a run at 1 s. A run may exceed its design by :data:`MAX_TRAILING_VOLUMES` volume;
  :func:`read_run` keeps the first ``n_rows`` when asked.

Bad input raises an :class:`~fmri2img.storage.nsd.NSDError` subclass naming the file, what
was expected and the fix (message-only exceptions: they survive pickling).
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from fmri2img.storage.nsd._common import NSDError, NSDFileMissing, NSDFormatError, _fmt, _name, _open, _subj

#: TR in seconds of each preparation (manual: 1.333 s standard, 1 s high resolution).
TR_SECONDS: dict[str, float] = {"func1pt8mm": 4.0 / 3.0, "func1mm": 1.0}
#: Volumes of an NSD run; design rows a trial (a run's rows: 75 slots × these).
RUN_VOLUMES: dict[str, int] = {"func1pt8mm": 226, "func1mm": 301}
ROWS_PER_TRIAL: dict[str, int] = {"func1pt8mm": 3, "func1mm": 4}
TRIAL_SECONDS = 4.0
STIMULUS_SECONDS = 3.0
SLOTS_PER_RUN = 75
RUNS_PER_SESSION = 12
#: Runs of a session with resting-state scans; its runs 1 and 14 are rest (all-zero design).
RUNS_WITH_REST = 14
TRIALS_PER_SESSION = 750
#: A run may have this many volumes more than its design has rows (NSD: 226 vs 225).
MAX_TRAILING_VOLUMES = 1

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_PIECE = 4096  # compressed bytes read at a time for the header
_HEADER_BLOCK = 2**16  # smallest sensible range request (object stores)
_DATA_PIECE = 2**18  # compressed bytes read at a time for the data
_DATA_BLOCK = 4 * 2**20  # range request size for the data
_RUN_NAME = re.compile(r"timeseries_session(\d{2})_run(\d{2})\.nii\.gz$")


class NSDDesignError(NSDError):
    """A design TSV is malformed, has no trials, or does not fit its run's length."""


class NSDRunMismatchError(NSDError):
    """The runs of one session disagree (volumes, TR, grid)."""


class NSDVoxelError(NSDError):
    """Voxels inside the mask hold NaN or never change (dead or outside the field of view)."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class TimeseriesLayout:
    """Paths of NSD's time-series files under a dataset ``root`` (``"natural-scenes-dataset"``
    for the bucket, a local directory for mini-NSD), in ``space`` "func1pt8mm" or "func1mm"."""

    root: str
    space: str = "func1pt8mm"

    def __post_init__(self) -> None:
        if self.space not in TR_SECONDS:
            raise NSDError(f"time-series space {self.space!r} is not an NSD preparation; expected one of "
                           f"{', '.join(TR_SECONDS)}")

    def _join(self, rel: str) -> str:
        root = self.root.rstrip("/")
        return f"{root}/{rel}" if root else rel

    def run_dir(self, subject: int) -> str:
        """``nsddata_timeseries/ppdata/subjNN/<space>/timeseries``."""
        return self._join(f"nsddata_timeseries/ppdata/{_subj(subject)}/{self.space}/timeseries")

    def design_dir(self, subject: int) -> str:
        """``nsddata_timeseries/ppdata/subjNN/<space>/design``."""
        return self._join(f"nsddata_timeseries/ppdata/{_subj(subject)}/{self.space}/design")

    def timeseries(self, subject: int, session: int, run: int) -> str:
        """Path of ``timeseries_sessionSS_runRR.nii.gz``."""
        return f"{self.run_dir(subject)}/timeseries_session{_num(session, 'session')}_run{_num(run, 'run')}.nii.gz"

    def design(self, subject: int, session: int, run: int) -> str:
        """Path of ``design_sessionSS_runRR.tsv``."""
        return f"{self.design_dir(subject)}/design_session{_num(session, 'session')}_run{_num(run, 'run')}.tsv"

    def brainmask(self, subject: int) -> str:
        """Path of the subject's ``nsddata/ppdata/subjNN/<space>/brainmask.nii.gz``."""
        return self._join(f"nsddata/ppdata/{_subj(subject)}/{self.space}/brainmask.nii.gz")


def _num(value: int, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 99:
        raise NSDError(f"{what} {value!r} is not a {what} number; expected an integer 1..99")
    return f"{int(value):02d}"


# --------------------------------------------------------------------------- listing


def list_sessions(fs: Any, layout: TimeseriesLayout, subject: int) -> list[int]:
    """Sessions of ``subject`` that have time-series files (sorted, 1-based)."""
    return sorted({s for s, _ in _listed_runs(fs, layout, subject)})


def list_runs(fs: Any, layout: TimeseriesLayout, subject: int, session: int) -> list[int]:
    """Runs of one session (1..n, sorted); no run, or a gap in the numbering, is :class:`NSDFileMissing`."""
    runs = sorted(r for s, r in _listed_runs(fs, layout, subject) if s == session)
    where = layout.run_dir(subject)
    if not runs:
        raise NSDFileMissing(f"no timeseries_session{_num(session, 'session')}_runRR.nii.gz in {where} (subject "
                             f"{subject}, session {session}): check the dataset root, subject and session, or "
                             f"download the session's time series")
    missing = sorted(set(range(1, runs[-1] + 1)) - set(runs))
    if missing:
        raise NSDFileMissing(f"{where} has runs {runs} of session {session} but not run(s) {missing}: a session's "
                             f"runs are numbered 1..{RUNS_PER_SESSION} ({RUNS_WITH_REST} with resting state); "
                             f"download the missing run(s)")
    return runs


def _listed_runs(fs: Any, layout: TimeseriesLayout, subject: int) -> list[tuple[int, int]]:
    try:
        names = fs.ls(layout.run_dir(subject), detail=False)
    except FileNotFoundError:
        return []
    found = (_RUN_NAME.search(str(n)) for n in names)
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


# --------------------------------------------------------------------------- design


def read_design(fs: Any, path: str) -> np.ndarray:
    """Read a run's design TSV: one row a volume, the 1-based 73k id at a trial's onset, else 0.

    Returns
    -------
    design : array of shape (n_rows,), int64
    """
    with _open(fs, path, what="run design", fix="download the session's design files") as f:
        text = f.read().decode("ascii", errors="replace")
    rows = []
    for k, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token:
            continue
        try:
            rows.append(int(token))
        except ValueError:
            raise NSDDesignError(f"{_name(path)} line {k} is {token[:40]!r}; expected one integer a line (the "
                                 f"73k id of the image whose trial starts at that volume, or 0): is this an NSD "
                                 f"design file?") from None
    design = np.asarray(rows, dtype=np.int64)
    if not design.size:
        raise NSDDesignError(f"{_name(path)} at {path} is empty; expected one row a volume: download it again")
    if design.min() < 0:
        raise NSDDesignError(f"{_name(path)} holds {int((design < 0).sum())} negative value(s); expected 0 or a "
                             f"1-based 73k image id: download it again")
    return design


def design_trials(design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The trials of a design (array of shape (n_rows,)) as two arrays of shape (n_trials,), int64:
    ``onsets``, each trial's 0-based onset volume (time = onset × TR), and ``images``, its 0-based
    73k index (the file's id minus 1)."""
    onsets = np.flatnonzero(design)
    return onsets.astype(np.int64), np.asarray(design)[onsets].astype(np.int64) - 1


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class RunHeader:
    """What a run's NIfTI header says.

    Attributes
    ----------
    shape : tuple of 3 int, (X, Y, Z); n_volumes : int
    dtype : numpy dtype, stored type (NSD: int16) with the file's byte order
    tr : float, seconds between volumes; affine : array of shape (4, 4)
    data_offset : int, byte offset of the data in the uncompressed file
    scale : (slope, intercept) when the header sets them, else None
    """

    shape: tuple[int, int, int]
    n_volumes: int
    dtype: np.dtype
    tr: float
    affine: np.ndarray
    data_offset: int
    scale: tuple[float, float] | None

    @property
    def volume_bytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


class _Inflater:
    """Uncompressed bytes of a (gzip or plain) file object, read a piece at a time, never more."""

    def __init__(self, f: Any, path: str, piece: int) -> None:
        self.f, self.path, self.piece = f, path, piece
        self.pending = f.read(2)
        self.z = zlib.decompressobj(31) if self.pending == _GZIP_MAGIC else None

    def read_into(self, view: memoryview) -> int:
        """Fill ``view``; return how many bytes were filled (fewer only at the end of the file)."""
        filled = 0
        while filled < len(view) and not (self.z is not None and self.z.eof):
            data = self.pending or (self.z.unconsumed_tail if self.z is not None else b"") or self._raw()
            self.pending = b""
            if self.z is None:  # a plain .nii
                if not data:
                    break
                out, self.pending = data[:len(view) - filled], data[len(view) - filled:]
            elif not data:
                raise _truncated_stream(self.path, "the gzip stream ends early")
            else:
                try:
                    out = self.z.decompress(data, len(view) - filled)
                except zlib.error as exc:
                    raise _truncated_stream(self.path, f"zlib: {exc}") from exc
            view[filled:filled + len(out)] = out
            filled += len(out)
        return filled

    def _raw(self) -> bytes:
        try:
            return self.f.read(self.piece)
        except (OSError, ValueError, EOFError) as exc:
            raise _truncated_stream(self.path, f"{type(exc).__name__}: {exc}") from exc


def _truncated_stream(path: str, why: str) -> NSDFormatError:
    return NSDFormatError(f"{_name(path)} at {path} is truncated or corrupt ({why}); the download was probably "
                          f"interrupted: download the file again")


def _parse_header(raw: bytes, path: str) -> RunHeader:
    try:
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=True)
        shape, dtype, zooms = tuple(int(s) for s in hdr.get_data_shape()), hdr.get_data_dtype(), hdr.get_zooms()
        units, (slope, inter) = hdr.get_xyzt_units()[1], hdr.get_slope_inter()
        affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # nibabel: HeaderDataError, HeaderTypeError, ...
        raise NSDFormatError(f"{_name(path)} at {path} does not start with a NIfTI-1 header ({exc}); expected an NSD "
                             f"time series (timeseries_sessionSS_runRR.nii.gz): download it again") from exc
    if len(shape) != 4 or shape[3] < 2:
        raise NSDFormatError(f"{_name(path)} is {_fmt(shape)}; expected a 4-D X×Y×Z×T time series (a volume a TR): "
                             f"is this a single volume (a mask, a mean) rather than a run?")
    tr = float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(units, 1.0)
    if not np.isfinite(tr) or tr <= 0:
        raise NSDFormatError(f"{_name(path)} has no TR in its header (pixdim[4] = {zooms[3]}); expected the seconds "
                             f"between volumes (NSD: 4/3 s for func1pt8mm, 1 s for func1mm)")
    scale = None if slope is None else (float(slope), float(inter or 0.0))
    return RunHeader(shape=shape[:3], n_volumes=shape[3], dtype=np.dtype(dtype), tr=tr, affine=affine,
                     data_offset=int(hdr.get_data_offset()), scale=scale)


def _read_header(inflater: _Inflater, path: str) -> RunHeader:
    raw = bytearray(348)
    if inflater.read_into(memoryview(raw)) < 348:
        raise _truncated_stream(path, "shorter than a NIfTI-1 header")
    return _parse_header(bytes(raw), path)


def read_header(fs: Any, path: str) -> RunHeader:
    """Read a run's :class:`RunHeader` from its first bytes only (a small range read on object stores)."""
    with _open(fs, path, what="run time series", fix="download the session's time series", ranged=True,
               block_size=_HEADER_BLOCK) as f:
        return _read_header(_Inflater(f, path, _HEADER_PIECE), path)


# --------------------------------------------------------------------------- data


def read_run(fs: Any, path: str, mask: np.ndarray, *, block: slice | np.ndarray | None = None,
             n_volumes: int | None = None, check_voxels: bool = True) -> np.ndarray:
    """Read a run's time series at the mask's voxels, streaming the gzip volume by volume.

    Memory is the output plus one volume (and a 4 MiB read-ahead), never the 4-D array.

    Parameters
    ----------
    fs : fsspec filesystem
    path : str
        e.g. ``TimeseriesLayout(root).timeseries(1, 1, 1)``.
    mask : array of shape (X, Y, Z), bool
        The voxels to read (e.g. the brain mask or nsdgeneral); must match the run's grid.
    block : slice or int array, optional
        Positions in ``np.flatnonzero(mask)`` to read, e.g. ``slice(0, 5000)``: one voxel
        block of a later rechunk to voxel blocks × time. Default: all the mask's voxels.
    n_volumes : int, optional
        Keep the first ``n_volumes`` (a design's row count, dropping NSD's trailing volume);
        the whole file is still read, so a truncated file is always detected.
    check_voxels : bool
        Refuse voxels that hold NaN or never change (:class:`NSDVoxelError`).

    Returns
    -------
    data : array of shape (n_volumes, n_voxels), float32
        Values as stored (NSD: raw intensities), scaled by the header's slope/intercept if set;
        columns in the order of ``np.flatnonzero(mask)[block]``.
    """
    mask = np.asarray(mask, dtype=bool)
    voxels = np.flatnonzero(mask) if block is None else np.flatnonzero(mask)[block]
    with _open(fs, path, what="run time series", fix="download the session's time series", ranged=True,
               block_size=_DATA_BLOCK) as f:
        inflater = _Inflater(f, path, _DATA_PIECE)
        header = _read_header(inflater, path)
        _check_grid(path, header, mask.shape)
        keep = _keep(path, header, n_volumes)
        out = np.empty((keep, voxels.size), np.float32)
        fortran = np.ravel_multi_index(np.unravel_index(voxels, mask.shape), mask.shape, order="F")
        for t, volume in enumerate(_volumes(inflater, path, header)):
            if t < keep:
                out[t] = volume[fortran]
    if header.scale is not None and header.scale != (1.0, 0.0):
        out *= np.float32(header.scale[0])
        out += np.float32(header.scale[1])
    if check_voxels:
        _check_voxel_values(path, out, voxels, mask.shape)
    return out


def _volumes(inflater: _Inflater, path: str, header: RunHeader) -> Iterator[np.ndarray]:
    """Each volume as a flat array in the file's (Fortran) order, reusing one buffer."""
    skip = header.data_offset - 348
    if skip < 0:
        raise NSDFormatError(f"{_name(path)} puts its data at byte {header.data_offset}, inside the header; the "
                             f"file is corrupt: download it again")
    if skip and inflater.read_into(memoryview(bytearray(skip))) < skip:
        raise _truncated_stream(path, "ends inside the header extensions")
    buf = bytearray(header.volume_bytes)
    view, volume = memoryview(buf), np.frombuffer(buf, dtype=header.dtype)
    for t in range(header.n_volumes):
        got = inflater.read_into(view)
        if got < len(buf):
            raise NSDFormatError(f"{_name(path)} at {path} is truncated: it ends in volume {t + 1} of "
                                 f"{header.n_volumes} ({got} of {len(buf)} bytes); download the file again")
        yield volume


def _check_grid(path: str, header: RunHeader, mask_shape: tuple[int, ...]) -> None:
    if len(mask_shape) != 3 or tuple(mask_shape) != header.shape:
        raise NSDFormatError(f"{_name(path)} has {_fmt(header.shape)} voxels but the mask is {_fmt(mask_shape)}: the "
                             f"mask and the time series must come from the same subject and space (e.g. "
                             f"func1pt8mm's brainmask.nii.gz)")


def _keep(path: str, header: RunHeader, n_volumes: int | None) -> int:
    n_volumes = header.n_volumes if n_volumes is None else n_volumes
    if isinstance(n_volumes, bool) or not isinstance(n_volumes, (int, np.integer)) or not \
            1 <= n_volumes <= header.n_volumes:
        raise NSDError(f"n_volumes={n_volumes!r} for {_name(path)}, which has {header.n_volumes} volumes; expected "
                       f"1..{header.n_volumes} (the design's row count)")
    return int(n_volumes)


def _check_voxel_values(path: str, data: np.ndarray, voxels: np.ndarray, shape: tuple[int, ...]) -> None:
    nan = np.isnan(data).any(axis=0)
    flat = ~nan & (data.max(axis=0, initial=-np.inf) == data.min(axis=0, initial=np.inf))
    for bad, what, fix in ((nan, "hold NaN", "drop them from the mask or re-export the run"),
                           (flat, "never change (constant over the run, e.g. zero: outside the brain mask or "
                                  "the field of view)", "read with a mask that excludes them (e.g. the brain "
                                                        "mask of this subject and space)")):
        if bad.any():
            ijk = np.column_stack(np.unravel_index(voxels[bad][:5], shape)).tolist()
            raise NSDVoxelError(f"{_name(path)}: {int(bad.sum())} of {bad.size} voxels inside the mask {what}, e.g. "
                                f"voxels (i, j, k) {ijk}: {fix}, or pass check_voxels=False to keep them")


# --------------------------------------------------------------------------- a session


@dataclass(frozen=True)
class RunInfo:
    """One run of a session: ``run`` (1-based), ``path``, ``design_path``, ``header``, ``design``
    (array of shape (n_rows,), int64) and ``rest`` (runs 1 and 14 of a 14-run session, all-zero design)."""

    run: int
    path: str
    design_path: str
    header: RunHeader
    design: np.ndarray
    rest: bool

    n_rows = property(lambda self: int(self.design.size), doc="Volumes the GLM uses: the design's rows.")


@dataclass(frozen=True)
class SessionRuns:
    """The checked runs of one session (all share grid, length and TR); ``runs`` in run order, rest included."""

    subject: int
    session: int
    runs: tuple[RunInfo, ...]

    @property
    def task_runs(self) -> tuple[RunInfo, ...]:
        """The runs with trials (the 12 NSD runs)."""
        return tuple(r for r in self.runs if not r.rest)

    shape = property(lambda self: self.runs[0].header.shape, doc="(X, Y, Z) of every run.")
    tr = property(lambda self: self.runs[0].header.tr, doc="TR of every run, seconds.")

    n_trials = property(lambda self: int(sum(np.count_nonzero(r.design) for r in self.task_runs)),
                        doc="Trials of the session.")


def read_session_runs(fs: Any, layout: TimeseriesLayout, subject: int, session: int, *,
                      mask_shape: tuple[int, int, int] | None = None) -> SessionRuns:
    """List, read (headers and designs only) and check one session's runs: a :class:`SessionRuns`.

    Checks (raising NSDFileMissing, NSDFormatError, NSDRunMismatchError, NSDDesignError):
    every run has its design; all runs have one grid (``mask_shape`` when given), length and
    TR; a design has as many rows as its run has volumes, or up to :data:`MAX_TRAILING_VOLUMES`
    fewer (NSD: 225 rows, 226 volumes); every run but a 14-run session's runs 1 and 14 has trials.
    """
    numbers = list_runs(fs, layout, subject, session)
    runs = []
    for run in numbers:
        path, dpath = layout.timeseries(subject, session, run), layout.design(subject, session, run)
        header = read_header(fs, path)
        if mask_shape is not None:
            _check_grid(path, header, tuple(mask_shape))
        design = read_design(fs, dpath)
        rest = len(numbers) == RUNS_WITH_REST and run in (1, RUNS_WITH_REST) and not design.any()
        _check_design(dpath, path, design, header, rest)
        runs.append(RunInfo(run=run, path=path, design_path=dpath, header=header, design=design, rest=rest))
    _check_runs_agree(runs, subject, session)
    return SessionRuns(subject=int(subject), session=int(session), runs=tuple(runs))


def _check_design(dpath: str, path: str, design: np.ndarray, header: RunHeader, rest: bool) -> None:
    extra = header.n_volumes - design.size
    if not 0 <= extra <= MAX_TRAILING_VOLUMES:
        raise NSDDesignError(
            f"{_name(dpath)} has {design.size} rows but {_name(path)} has {header.n_volumes} volumes; expected one "
            f"row a volume, or up to {MAX_TRAILING_VOLUMES} trailing volume(s) more than rows (NSD: 225 rows, 226 "
            f"volumes): the design and the run do not belong together: download both again")
    if not rest and not design.any():
        raise NSDDesignError(f"{_name(dpath)} has no trials (every row is 0); expected the 73k ids of the run's "
                             f"trials (only runs 1 and 14 of a 14-run session are resting state): download it "
                             f"again, or leave this run out")


def _check_runs_agree(runs: list[RunInfo], subject: int, session: int) -> None:
    where = f"subject {subject} session {session}"
    listing = ", ".join(f"run {r.run}: {r.header.n_volumes} volumes of {_fmt(r.header.shape)} at "
                        f"{r.header.tr:.4f} s" for r in runs)
    if len({r.header.shape for r in runs}) > 1:
        raise NSDRunMismatchError(f"the runs of {where} have different grids ({listing}); expected one grid per "
                                  f"subject and space: some files come from another subject or preparation")
    if len({r.header.n_volumes for r in runs}) > 1:
        raise NSDRunMismatchError(f"the runs of {where} have different lengths ({listing}); expected every run of a "
                                  f"session to have as many volumes (NSD: 226 at 4/3 s): a file is incomplete or "
                                  f"from another preparation: download it again")
    trs = [r.header.tr for r in runs]
    if max(trs) - min(trs) > 1e-3 * max(trs):
        raise NSDRunMismatchError(f"the runs of {where} have different TRs ({listing}); expected one TR per session "
                                  f"(NSD: 4/3 s for func1pt8mm, 1 s for func1mm): do not mix preparations")
