"""Readers for the Natural Scenes Dataset (NSD) file formats.

Every reader takes an already-made fsspec filesystem plus a path (never a URL), opens
files with ``fs.open(path, "rb")`` and reads only what it needs: the experimental design
(MATLAB v5 ``nsd_expdesign.mat``), ROI volumes (``*.nii.gz``), single-trial betas (4-D
``betas_sessionNN.nii.gz`` streamed through gzip, or the uncompressed ``betas_sessionNN.hdf5``
twin read by range), the stimulus brick (``nsd_stimuli.hdf5``, dataset ``imgBrick``) and the
captions array (``COCO_73k_annots_curated.npy``). The same code reads real NSD from its
bucket and the locally generated mini-NSD (:mod:`fmri2img.storage.mininsd`).

Bad input raises one :class:`NSDError` subclass whose message names the file, what was
expected and the fix.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import scipy.io

logger = logging.getLogger(__name__)

#: Names of the ROI volumes under ``nsddata/ppdata/subjNN/func1pt8mm/roi/`` (without ``.nii.gz``).
ROI_FILES: tuple[str, ...] = (
    "nsdgeneral",
    "prf-visualrois",
    "floc-faces",
    "floc-words",
    "floc-places",
    "floc-bodies",
    "prf-eccrois",
)

#: Label names of ``prf-visualrois`` (1..7) and ``prf-eccrois`` (1..5).
VISUAL_ROI_LABELS: dict[int, str] = {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}
ECC_ROI_LABELS: dict[int, str] = {1: "ecc0.5", 2: "ecc1", 3: "ecc2", 4: "ecc4", 5: "ecc4+"}

#: Betas are stored as percent signal change times this factor.
BETA_SCALE: float = 300.0
#: Sessions of each subject in the public NSD bucket (38-40 were withheld).
PUBLIC_SESSIONS: int = 37

BETAS_FORMATS: tuple[str, ...] = ("nii.gz", "hdf5")
_RANGE_BLOCK = 8 * 2**20  # bytes per range request on object stores
_META_BLOCK = 2**20  # readahead of h5py/nibabel file objects (bulk data of contiguous HDF5 goes through cat_ranges)
_BLOCK_BYTES = 64 * 2**20  # bytes of raw betas held per block of trials


class NSDError(ValueError):
    """An NSD input file is missing or malformed; the message names the file and the fix."""


class NSDFileMissing(NSDError, FileNotFoundError):
    """An NSD file does not exist at the expected path."""


class NSDFormatError(NSDError):
    """An NSD file is truncated, corrupt, or has the wrong shape, dtype or fields."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class NSDLayout:
    """Paths of the NSD files, relative to the dataset root, exactly as in the bucket.

    Parameters
    ----------
    root : str
        Dataset root on the filesystem the readers receive, e.g. ``"natural-scenes-dataset"``
        (the bucket) or ``"/tmp/mini"``. Every path is ``root + "/" + relative path``.
    """

    root: str

    def _join(self, rel: str) -> str:
        root = self.root.rstrip("/")
        return f"{root}/{rel}" if root else rel

    def expdesign(self) -> str:
        """Path of ``nsd_expdesign.mat``."""
        return self._join("nsddata/experiments/nsd/nsd_expdesign.mat")

    def stimuli(self) -> str:
        """Path of ``nsd_stimuli.hdf5`` (dataset ``imgBrick``)."""
        return self._join("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")

    def captions(self) -> str:
        """Path of ``COCO_73k_annots_curated.npy`` (at the dataset root)."""
        return self._join("COCO_73k_annots_curated.npy")

    def subject_dir(self, subject: int) -> str:
        """Path of ``nsddata/ppdata/subjNN/func1pt8mm``."""
        return self._join(f"nsddata/ppdata/{_subj(subject)}/func1pt8mm")

    def roi(self, subject: int, name: str) -> str:
        """Path of one ROI volume; ``name`` is one of :data:`ROI_FILES`."""
        if name not in ROI_FILES:
            raise NSDError(f"ROI name {name!r} is not an NSD ROI file; expected one of {', '.join(ROI_FILES)}")
        return f"{self.subject_dir(subject)}/roi/{name}.nii.gz"

    def betas(self, subject: int, session: int, fmt: str = "nii.gz") -> str:
        """Path of ``betas_sessionNN.{nii.gz,hdf5}`` (betas_fithrf_GLMdenoise_RR, func1pt8mm)."""
        if fmt not in BETAS_FORMATS:
            raise NSDError(f"betas format {fmt!r} is not supported; expected one of {', '.join(BETAS_FORMATS)}")
        if not isinstance(session, (int, np.integer)) or not 1 <= session <= 99:
            raise NSDError(f"session {session!r} is not a session number; expected an integer 1..99")
        return self._join(
            f"nsddata_betas/ppdata/{_subj(subject)}/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
            f"betas_session{int(session):02d}.{fmt}"
        )


def _subj(subject: int) -> str:
    if not isinstance(subject, (int, np.integer)) or isinstance(subject, bool) or not 1 <= subject <= 99:
        raise NSDError(f"subject {subject!r} is not a subject number; expected an integer 1..99 (NSD has 1..8)")
    return f"subj{int(subject):02d}"


def _name(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _open(fs: Any, path: str, *, what: str, fix: str = "", ranged: bool = False, block_size: int = _META_BLOCK) -> Any:
    """Open ``path`` for reading, turning a missing file into :class:`NSDFileMissing`."""
    try:
        if ranged:
            try:
                return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
            except TypeError:
                pass
        return fs.open(path, "rb")
    except FileNotFoundError as exc:
        hint = f"; {fix}" if fix else ""
        raise NSDFileMissing(f"{_name(path)} ({what}) not found at {path}{hint}") from exc


# --------------------------------------------------------------------------- design


@dataclass(frozen=True)
class ExpDesign:
    """The NSD experimental design (``nsd_expdesign.mat``).

    Attributes
    ----------
    masterordering : array of shape (n_trials,), int64
        1-based index into a subject's image list for every trial, as in the file.
    subjectim : array of shape (n_subjects, n_per_subject), int64
        1-based 73k image ids shown to each subject.
    sharedix : array of shape (n_shared,), int64
        1-based 73k ids of the shared images (the first ``n_shared`` columns of subjectim).
    trials_per_session : int
        Stimulus trials per session (the sum of one session's ``stimpattern``; 750 for NSD).
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray
    trials_per_session: int

    @property
    def n_sessions(self) -> int:
        """Sessions covered by ``masterordering``."""
        return len(self.masterordering) // self.trials_per_session

    @property
    def n_subjects(self) -> int:
        """Rows of ``subjectim``."""
        return self.subjectim.shape[0]


def read_expdesign(fs: Any, path: str) -> ExpDesign:
    """Read ``nsd_expdesign.mat`` (MATLAB v5) and check its fields.

    Parameters
    ----------
    fs : fsspec filesystem
    path : str
        Path of the ``.mat`` file on ``fs``.

    Returns
    -------
    ExpDesign
    """
    fix = "download nsddata/experiments/nsd/nsd_expdesign.mat or regenerate mini-NSD"
    with _open(fs, path, what="NSD experimental design", fix=fix) as f:
        try:
            mat = scipy.io.loadmat(f, variable_names=("masterordering", "subjectim", "sharedix", "stimpattern"))
        except Exception as exc:  # scipy raises ValueError/TypeError/OSError on damaged files
            raise NSDFormatError(
                f"{_name(path)} at {path} is not a readable MATLAB v5 file ({exc}); it is truncated or corrupt: "
                f"download it again"
            ) from exc
    for field in ("masterordering", "subjectim", "sharedix", "stimpattern"):
        if field not in mat:
            raise NSDFormatError(f"{_name(path)} has no field {field!r}; expected the NSD fields masterordering, "
                                 f"subjectim, sharedix, stimpattern: this is not nsd_expdesign.mat")
    master = _int_field(mat, "masterordering", path, ndim=1)
    subjectim = _int_field(mat, "subjectim", path, ndim=2)
    shared = _int_field(mat, "sharedix", path, ndim=1)
    stim = np.asarray(mat["stimpattern"])
    if stim.ndim != 3 or stim.shape[0] < 1:
        raise NSDFormatError(f"{_name(path)}: field 'stimpattern' has shape {stim.shape}; expected "
                             f"(n_sessions, runs, trials_per_run), e.g. 40×12×75")
    tps = int(np.count_nonzero(stim[0]))
    if tps < 1 or len(master) % tps:
        raise NSDFormatError(f"{_name(path)}: masterordering has {len(master)} trials, not a multiple of the "
                             f"{tps} stimulus trials per session in stimpattern; the file is inconsistent")
    if master.min() < 1 or master.max() > subjectim.shape[1]:
        raise NSDFormatError(f"{_name(path)}: masterordering values span {master.min()}..{master.max()}; expected "
                             f"1-based indices 1..{subjectim.shape[1]} into subjectim's columns")
    if subjectim.min() < 1:
        raise NSDFormatError(f"{_name(path)}: subjectim holds {subjectim.min()}; expected 1-based 73k ids (>= 1)")
    return ExpDesign(masterordering=master, subjectim=subjectim, sharedix=shared, trials_per_session=tps)


def _int_field(mat: dict, field: str, path: str, *, ndim: int) -> np.ndarray:
    arr = np.asarray(mat[field])
    if ndim == 1:
        arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != ndim or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        raise NSDFormatError(f"{_name(path)}: field {field!r} has shape {arr.shape} and dtype {arr.dtype}; expected "
                             f"a non-empty {'row vector' if ndim == 1 else 'matrix'} of integers")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise NSDFormatError(f"{_name(path)}: field {field!r} holds non-integer values; expected integer indices")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class TrialSplit:
    """Trials of one subject split into train (non-shared) and test (shared) images.

    Attributes
    ----------
    train_ids, test_ids : array of shape (n_train,) / (n_test,), int64
        0-based 73k ids in first-presentation order.
    train_trials, test_trials : list of arrays
        For each image, its sorted 0-based global trial indices within the chosen sessions.
    sessions : tuple of int
        1-based sessions used, ascending.
    trial_image : array of shape (n_kept_trials,), int64
        0-based 73k id of every trial of the chosen sessions, in trial order.
    trial_session : array of shape (n_kept_trials,), int64
        1-based session of each such trial.
    """

    train_ids: np.ndarray
    train_trials: list[np.ndarray]
    test_ids: np.ndarray
    test_trials: list[np.ndarray]
    sessions: tuple[int, ...]
    trial_image: np.ndarray
    trial_session: np.ndarray

    @property
    def trial_index(self) -> np.ndarray:
        """Array of shape (n_kept_trials,): the 0-based global index of every kept trial."""
        tps = len(self.trial_image) // max(len(self.sessions), 1)
        return np.concatenate([np.arange((s - 1) * tps, s * tps) for s in self.sessions]) if self.sessions else \
            np.zeros(0, np.int64)


def split_trials(design: ExpDesign, subject: int, sessions: Sequence[int]) -> TrialSplit:
    """Split a subject's trials of the chosen sessions into train and test images.

    Trial ``idx`` shows ``nsdId = subjectim[subject-1, masterordering[idx]-1] - 1`` and is a
    test trial when ``masterordering[idx] <= len(sharedix)``, else a train trial.

    Parameters
    ----------
    design : ExpDesign
    subject : int
        1-based subject (row of ``subjectim``).
    sessions : sequence of int
        1-based sessions to use (each at most once).

    Returns
    -------
    TrialSplit
    """
    if not isinstance(subject, (int, np.integer)) or not 1 <= subject <= design.n_subjects:
        raise NSDError(f"subject {subject!r} is not in the experimental design, which has subjects "
                       f"1..{design.n_subjects}; choose a subject in that range")
    sess = [int(s) for s in sessions]
    if not sess:
        raise NSDError("no sessions selected; pass at least one session (e.g. --sessions 1-37)")
    bad = [s for s in sess if not 1 <= s <= design.n_sessions]
    if bad:
        raise NSDError(f"session(s) {bad} are outside the experimental design, which has sessions "
                       f"1..{design.n_sessions}; select sessions in that range with --sessions")
    if len(set(sess)) != len(sess):
        raise NSDError(f"sessions {sess} repeat a session; list each session once")
    sess = sorted(sess)
    tps = design.trials_per_session
    idx = np.concatenate([np.arange((s - 1) * tps, s * tps) for s in sess])
    order = design.masterordering[idx]
    image = design.subjectim[subject - 1, order - 1] - 1
    is_train = order > len(design.sharedix)
    train_ids, train_trials = _group_first_seen(image[is_train], idx[is_train])
    test_ids, test_trials = _group_first_seen(image[~is_train], idx[~is_train])
    return TrialSplit(train_ids=train_ids, train_trials=train_trials, test_ids=test_ids, test_trials=test_trials,
                      sessions=tuple(sess), trial_image=image.astype(np.int64),
                      trial_session=(idx // tps + 1).astype(np.int64))


def _group_first_seen(images: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group trials (ascending) by image; images ordered by first presentation."""
    uniq, first, inverse = np.unique(images, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    keys = rank[inverse]
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(len(uniq) + 1))
    groups = [trials[order[bounds[i]:bounds[i + 1]]].astype(np.int64) for i in range(len(uniq))]
    return uniq[np.argsort(first, kind="stable")].astype(np.int64), groups


# --------------------------------------------------------------------------- volumes


_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def _nifti_from_stream(f: Any, path: str) -> nib.Nifti1Image:
    """A NIfTI image whose data proxy reads lazily from the (gzip-wrapped) stream ``f``."""
    magic = f.read(2)
    f.seek(0)
    stream = gzip.GzipFile(fileobj=f, mode="rb") if magic == b"\x1f\x8b" else f
    try:
        holder = nib.FileHolder(fileobj=stream)
        return nib.Nifti1Image.from_file_map({"header": holder, "image": holder})
    except _GZIP_ERRORS as exc:
        raise _truncated(path, exc) from exc
    except Exception as exc:  # nibabel: HeaderDataError, ImageFileError, ...
        raise NSDFormatError(f"{_name(path)} at {path} is not a readable NIfTI-1 file ({exc}); expected a .nii.gz "
                             f"volume: download it again") from exc


def _truncated(path: str, exc: BaseException) -> NSDFormatError:
    return NSDFormatError(f"{_name(path)} at {path} is truncated or corrupt ({type(exc).__name__}: {exc}); the "
                          f"download was probably interrupted: download the file again")


def read_volume(fs: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume (gzip streamed in memory, never copied to local disk).

    Parameters
    ----------
    fs : fsspec filesystem
    path : str

    Returns
    -------
    data : array of shape (X, Y, Z) or (X, Y, Z, T)
        The stored values (scaled by the header slope/intercept if it sets them).
    affine : array of shape (4, 4)
        Voxel-to-world affine.
    """
    with _open(fs, path, what="NIfTI volume", fix="check the dataset root and subject") as f:
        img = _nifti_from_stream(f, path)
        try:
            data = np.asarray(img.dataobj)
        except _GZIP_ERRORS as exc:
            raise _truncated(path, exc) from exc
        except (OSError, ValueError) as exc:
            raise _truncated(path, exc) from exc
        return data, np.asarray(img.affine, dtype=np.float64)


def read_mask(fs: Any, path: str, *, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an ROI volume as a boolean mask (label > 0).

    Parameters
    ----------
    fs : fsspec filesystem
    path : str
        e.g. ``NSDLayout.roi(1, "nsdgeneral")``.
    expected_shape : tuple of 3 int, optional
        Raise :class:`NSDFormatError` when the volume has another shape.

    Returns
    -------
    mask : array of shape (X, Y, Z), bool
    """
    data, _ = read_volume(fs, path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NSDFormatError(f"{_name(path)} has shape {_fmt(data.shape)}; expected a 3-D label volume")
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise NSDFormatError(f"{_name(path)} is {_fmt(data.shape)} but {_fmt(expected_shape)} was expected: the ROI "
                             f"masks and betas must come from the same space (func1pt8mm) and subject")
    return np.nan_to_num(data, nan=0) > 0


def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


# --------------------------------------------------------------------------- betas


def read_session_betas(fs: Any, layout: NSDLayout, subject: int, session: int, voxels: np.ndarray,
                       volume_shape: tuple[int, int, int], expected_trials: int, prefer: str = "hdf5",
                       *, block_bytes: int = _BLOCK_BYTES) -> np.ndarray:
    """Read one session's single-trial betas at the given voxels.

    Uses the uncompressed HDF5 twin when it exists and ``prefer == "hdf5"``: it is read by
    range over the z-range of the voxels' bounding box (one contiguous byte run per trial), a
    block of trials at a time. Otherwise the ``.nii.gz`` is streamed through gzip a block of
    trials at a time; memory stays near ``block_bytes`` plus the output. Both give identical
    results.

    Parameters
    ----------
    fs : fsspec filesystem
    layout : NSDLayout
    subject, session : int
        1-based.
    voxels : array of shape (n_voxels,), int64
        Flat C-order indices into the (X, Y, Z) volume, e.g. ``np.flatnonzero(mask)``.
    volume_shape : tuple of 3 int
        (X, Y, Z) of the mask; the betas must match it.
    expected_trials : int
        Trials the session must hold (750 for NSD).
    prefer : {"hdf5", "nii.gz"}
    block_bytes : int
        Raw bytes of betas held in memory per block of trials (gzip, chunked HDF5); a contiguous
        HDF5 is read by ranges of up to ``2 × block_bytes``, two in flight at a time.

    Returns
    -------
    betas : array of shape (expected_trials, n_voxels), float32
        Percent signal change (file values / 300); NaN stays NaN in float files.
    """
    if prefer not in _BETA_READERS:
        raise NSDError(f"prefer={prefer!r} is not a betas format; expected one of {', '.join(_BETA_READERS)}")
    volume_shape = tuple(int(s) for s in volume_shape)
    voxels = _check_voxels(voxels, volume_shape)
    fmt = prefer
    if prefer == "hdf5" and not fs.exists(layout.betas(subject, session, "hdf5")):
        fmt = "nii.gz"
    path = layout.betas(subject, session, fmt)
    if fmt == "nii.gz" and not fs.exists(path):
        raise NSDFileMissing(_missing_betas_message(layout, subject, session, path))
    logger.debug("reading %s (%d voxels)", path, len(voxels))
    fix = _missing_betas_message(layout, subject, session, path)
    # HDF5: a 1 MiB read-ahead serves the header, the bounding box is read by range; gzip is one
    # forward pass, so it is read in large blocks (few requests per GB on object stores)
    block = _META_BLOCK if fmt == "hdf5" else _RANGE_BLOCK * 8
    with _open(fs, path, what="single-trial betas", fix=fix, ranged=True, block_size=block) as f:
        out = _BETA_READERS[fmt](f, path, voxels, volume_shape, int(expected_trials), block_bytes, fs=fs)
    return out


def _missing_betas_message(layout: NSDLayout, subject: int, session: int, path: str) -> str:
    name = _name(path)
    if session > PUBLIC_SESSIONS:
        why = (f"sessions {PUBLIC_SESSIONS + 1}–40 are not public in real NSD (withheld as held-out test data); "
               f"select sessions 1–{PUBLIC_SESSIONS} with --sessions")
    else:
        why = "check the dataset root and subject, or select the sessions you have with --sessions"
    return f"{name} (subject {subject}, session {session}) not found at {path}: {why}"


def _check_voxels(voxels: np.ndarray, volume_shape: tuple[int, ...]) -> np.ndarray:
    v = np.asarray(voxels)
    if len(volume_shape) != 3:
        raise NSDError(f"volume_shape {volume_shape} is not 3-D; expected (X, Y, Z) of the mask")
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise NSDError(f"voxels has shape {v.shape} and dtype {v.dtype}; expected a 1-D integer array of flat "
                       f"C-order indices (np.flatnonzero(mask))")
    if v.size and (v.min() < 0 or v.max() >= int(np.prod(volume_shape))):
        raise NSDError(f"voxels span {v.min()}..{v.max()}; expected flat indices into a {_fmt(volume_shape)} volume")
    return v.astype(np.int64)


def _trial_blocks(n_trials: int, bytes_per_trial: int, block_bytes: int) -> list[tuple[int, int]]:
    step = max(1, int(block_bytes) // max(1, bytes_per_trial))
    return [(t, min(t + step, n_trials)) for t in range(0, n_trials, step)]


def _check_betas_shape(path: str, vol: tuple[int, ...], trials: int, volume_shape: tuple[int, ...],
                       expected_trials: int) -> None:
    if tuple(vol) != tuple(volume_shape):
        raise NSDFormatError(f"{_name(path)} has {_fmt(vol)} voxels but the nsdgeneral mask is {_fmt(volume_shape)}: "
                             f"the mask and betas must come from the same space (func1pt8mm)")
    if trials != expected_trials:
        raise NSDFormatError(f"{_name(path)} holds {trials} trials but the experimental design has {expected_trials} "
                             f"per session: the file is incomplete or from another design; download it again")


def _to_psc(raw: np.ndarray) -> np.ndarray:
    return (np.asarray(raw, dtype=np.float32) / np.float32(BETA_SCALE)).astype(np.float32, copy=False)


def _read_betas_nifti(f: Any, path: str, voxels: np.ndarray, volume_shape: tuple[int, ...], expected_trials: int,
                      block_bytes: int, fs: Any = None) -> np.ndarray:
    """Stream a 4-D X×Y×Z×T NIfTI through gzip a block of trials at a time."""
    img = _nifti_from_stream(f, path)
    shape = img.shape
    if len(shape) != 4:
        raise NSDFormatError(f"{_name(path)} has shape {_fmt(shape)}; expected a 4-D X×Y×Z×trials volume")
    _check_betas_shape(path, shape[:3], shape[3], volume_shape, expected_trials)
    coords = np.unravel_index(voxels, volume_shape)
    out = np.empty((expected_trials, len(voxels)), np.float32)
    itemsize = img.get_data_dtype().itemsize
    proxy = img.dataobj
    for t0, t1 in _trial_blocks(expected_trials, int(np.prod(volume_shape)) * itemsize, block_bytes):
        try:
            block = np.asarray(proxy[..., t0:t1])
        except (*_GZIP_ERRORS, OSError, ValueError) as exc:
            raise _truncated(path, exc) from exc
        out[t0:t1] = _to_psc(block[coords].T)
    return out


def _betas_dataset(h5: h5py.File, path: str, volume_shape: tuple[int, ...], expected_trials: int) -> h5py.Dataset:
    if "betas" not in h5 or not isinstance(h5["betas"], h5py.Dataset):
        raise NSDFormatError(f"{_name(path)} has no dataset 'betas' (found {sorted(h5.keys())}); expected the "
                             f"NSD betas HDF5 with dataset 'betas' of shape (trials, Z, Y, X)")
    ds = h5["betas"]
    if ds.ndim != 4:
        raise NSDFormatError(f"{_name(path)}: dataset 'betas' has shape {_fmt(ds.shape)}; expected 4-D "
                             f"(trials, Z, Y, X)")
    _check_betas_shape(path, ds.shape[:0:-1], ds.shape[0], volume_shape, expected_trials)
    return ds


def _read_betas_hdf5(f: Any, path: str, voxels: np.ndarray, volume_shape: tuple[int, ...], expected_trials: int,
                     block_bytes: int, fs: Any = None) -> np.ndarray:
    """Read dataset ``betas`` of shape (T, Z, Y, X) over the voxels' z-range, by blocks of trials."""
    try:
        h5 = h5py.File(f, "r")
    except OSError as exc:
        raise _truncated(path, exc) from exc
    with h5:
        ds = _betas_dataset(h5, path, volume_shape, expected_trials)
        x, y, z = np.unravel_index(voxels, volume_shape)
        out = np.empty((expected_trials, len(voxels)), np.float32)
        if not len(voxels):
            return out
        # The bounding box's z-range is one contiguous byte run per trial: a few large reads
        # instead of one tiny read per x-row of the box (what an exact box hyperslab costs).
        z0, z1 = int(z.min()), int(z.max()) + 1
        slab_items = (z1 - z0) * volume_shape[1] * volume_shape[0]
        offset = _contiguous_offset(ds)
        if offset is not None and fs is not None:
            _read_slabs_by_range(fs, path, ds.dtype, offset, int(np.prod(ds.shape[1:])), z0 * volume_shape[1] *
                                 volume_shape[0], (z1 - z0, volume_shape[1], volume_shape[0]),
                                 (z - z0, y, x), out, 4 * block_bytes)
            return out
        for t0, t1 in _trial_blocks(expected_trials, slab_items * ds.dtype.itemsize, block_bytes):
            try:
                slab = ds[t0:t1, z0:z1]
            except (OSError, ValueError) as exc:
                raise _truncated(path, exc) from exc
            out[t0:t1] = _to_psc(slab[:, z - z0, y, x])
        return out


def _read_slabs_by_range(fs: Any, path: str, dtype: np.dtype, offset: int, trial_items: int, slab_start: int,
                         slab_shape: tuple[int, int, int], index: tuple, out: np.ndarray, block_bytes: int) -> None:
    """``out[t] = volume_t[slab][index] / 300`` for every trial, the slabs read by concurrent byte ranges.

    Each trial's slab is one contiguous run.  When the gap between neighbouring slabs is under a
    quarter of a slab, runs of trials are read as one range (gaps included) of at most
    ``block_bytes / 2`` and cut up by a strided view, without copying; otherwise one range per
    trial.  A block of ranges (``block_bytes``) is fetched concurrently, then decoded.
    """
    item = dtype.itemsize
    trial_bytes, slab_bytes = trial_items * item, int(np.prod(slab_shape)) * item
    merge = trial_bytes - slab_bytes <= slab_bytes // 4
    per_part = max(1, (block_bytes // 2) // trial_bytes) if merge else 1
    trials = len(out)
    parts = [(t, min(t + per_part, trials)) for t in range(0, trials, per_part)]
    per_block = max(1, block_bytes // max(1, per_part * trial_bytes))
    for b in range(0, len(parts), per_block):
        group = parts[b:b + per_block]
        starts = [offset + ta * trial_bytes + slab_start * item for ta, _ in group]
        ends = [a + (tb - ta - 1) * trial_bytes + slab_bytes for a, (ta, tb) in zip(starts, group)]
        try:
            got = fs.cat_ranges([path] * len(group), starts, ends)
        except (OSError, ValueError) as exc:
            raise _truncated(path, exc) from exc
        for raw, a, e, (ta, tb) in zip(got, starts, ends, group):
            if isinstance(raw, Exception):
                raise _truncated(path, raw)
            if len(raw) != e - a:
                raise _truncated(path, EOFError(f"expected {e - a} bytes at offset {a}, got {len(raw)}"))
            flat = np.frombuffer(raw, dtype=dtype)
            nz, ny, nx = slab_shape
            slabs = np.lib.stride_tricks.as_strided(flat, shape=(tb - ta, nz, ny, nx), writeable=False,
                                                    strides=(trial_bytes, ny * nx * item, nx * item, item))
            out[ta:tb] = _to_psc(slabs[(slice(None), *index)])


def _contiguous_offset(ds: h5py.Dataset) -> int | None:
    """Byte offset of a contiguous, unfiltered dataset in its file (None: read through h5py)."""
    if ds.chunks is not None or ds.compression is not None or ds.dtype.hasobject:
        return None
    try:
        offset = ds.id.get_offset()
    except (OSError, ValueError, AttributeError):
        return None
    return None if offset is None else int(offset)


def _cat_ranges(fs: Any, path: str, starts: list[int], ends: list[int], *, max_block: int = 8 * _RANGE_BLOCK,
                max_gap: int | None = None) -> bytes:
    """Read byte ranges (concurrently on object stores) and join them; a short read is a truncated file.

    Neighbouring ranges are merged into one request (up to ``max_block`` bytes) when the gap
    between them is under a quarter of a typical range: fewer requests for at most ~25% more
    bytes, never the whole file for a small bounding box.
    """
    from fsspec.utils import merge_offset_ranges

    if max_gap is None:
        max_gap = int(0.25 * float(np.median(np.subtract(ends, starts)))) if len(starts) else 0
    _, m_starts, m_ends = merge_offset_ranges([path] * len(starts), list(starts), list(ends),
                                              max_gap=max_gap, max_block=max_block, sort=True)
    try:
        parts = fs.cat_ranges([path] * len(m_starts), m_starts, m_ends)
    except (OSError, ValueError) as exc:
        raise _truncated(path, exc) from exc
    blocks = []
    for part, a, b in zip(parts, m_starts, m_ends):
        if isinstance(part, Exception):
            raise _truncated(path, part)
        if len(part) != b - a:
            raise _truncated(path, EOFError(f"expected {b - a} bytes at offset {a}, got {len(part)}"))
        blocks.append((a, part))
    out = []
    for a, b in zip(starts, ends):
        i = int(np.searchsorted([s for s, _ in blocks], a, side="right")) - 1
        base, data = blocks[i]
        out.append(data[a - base:b - base])
    return b"".join(out)


_BETA_READERS: dict[str, Callable[..., np.ndarray]] = {"hdf5": _read_betas_hdf5, "nii.gz": _read_betas_nifti}


# --------------------------------------------------------------------------- stimuli and captions


def _check_ids(ids: np.ndarray, n: int, path: str, what: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise NSDError(f"{what} ids for {_name(path)} have shape {a.shape} and dtype {a.dtype}; expected a 1-D "
                       f"array of 0-based integer image ids")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise NSDError(f"{what} ids span {a.min()}..{a.max()} but {_name(path)} holds {n} images; expected 0-based "
                       f"ids 0..{n - 1} (NSD 73k ids minus 1)")
    return a


def _runs(sorted_ids: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted unique ids into [start, stop) runs of consecutive values."""
    if not len(sorted_ids):
        return []
    breaks = np.flatnonzero(np.diff(sorted_ids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(sorted_ids)]])
    return [(int(sorted_ids[a]), int(sorted_ids[b - 1]) + 1) for a, b in zip(starts, stops)]


def _gather(ids: np.ndarray, read_run: Callable[[int, int], np.ndarray], item_shape: tuple, dtype: Any) -> np.ndarray:
    """Read ``ids`` (any order, repeats allowed) through ``read_run(start, stop)`` over sorted runs."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    buf = np.empty((len(uniq), *item_shape), dtype)
    pos = 0
    for a, b in _runs(uniq):
        buf[pos:pos + b - a] = read_run(a, b)
        pos += b - a
    return buf[inverse.reshape(-1)]


@dataclass(frozen=True)
class StimuliLayout:
    """Where ``imgBrick`` lies in ``nsd_stimuli.hdf5``: read once, then images are read by range alone.

    ``offset`` is None when the dataset is chunked or filtered (then h5py reads it).
    """

    shape: tuple[int, int, int, int]
    offset: int | None

    @classmethod
    def of(cls, ds: h5py.Dataset) -> "StimuliLayout":
        return cls(tuple(int(n) for n in ds.shape), _contiguous_offset(ds))

    @property
    def side(self) -> int:
        return int(self.shape[1])


def _open_stimuli(fs: Any, path: str):
    fix = "download nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5 or regenerate mini-NSD"
    f = _open(fs, path, what="stimulus images", fix=fix, ranged=True)
    try:
        h5 = h5py.File(f, "r")
    except OSError as exc:
        f.close()
        raise _truncated(path, exc) from exc
    ds = h5.get("imgBrick")
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8:
        found = f"shape {ds.shape}, dtype {ds.dtype}" if isinstance(ds, h5py.Dataset) else "no such dataset"
        h5.close()
        f.close()
        raise NSDFormatError(f"{_name(path)}: dataset 'imgBrick' ({found}); expected uint8 of shape "
                             f"(n_images, side, side, 3)")
    return f, h5, ds


def stimuli_layout(fs: Any, path: str) -> StimuliLayout:
    """Read the HDF5 header of ``nsd_stimuli.hdf5`` once (a driver does this; tasks reuse the result)."""
    f, h5, ds = _open_stimuli(fs, path)
    with f, h5:
        return StimuliLayout.of(ds)


def read_stimuli(fs: Any, path: str, ids: np.ndarray, layout: StimuliLayout | None = None) -> np.ndarray:
    """Read stimulus images from ``nsd_stimuli.hdf5`` by range.

    Parameters
    ----------
    fs : fsspec filesystem
    path : str
    ids : array of shape (n,), int
        0-based 73k ids, any order (sorted runs read fastest).
    layout : StimuliLayout, optional
        From :func:`stimuli_layout` on the same file: skips reading the header again (one
        request fewer per call, which matters on object stores).

    Returns
    -------
    images : array of shape (n, side, side, 3), uint8
        In the order of ``ids``.
    """
    if layout is not None and layout.offset is not None:
        return _read_images_by_range(fs, path, _check_ids(ids, layout.shape[0], path, "stimulus"), layout)
    f, h5, ds = _open_stimuli(fs, path)
    with f, h5:
        found = StimuliLayout.of(ds)
        ids = _check_ids(ids, ds.shape[0], path, "stimulus")
        if found.offset is not None:
            return _read_images_by_range(fs, path, ids, found)

        def read_run(a: int, b: int) -> np.ndarray:
            try:
                return ds[a:b]
            except (OSError, ValueError) as exc:
                raise _truncated(path, exc) from exc

        return _gather(ids, read_run, ds.shape[1:], np.uint8)


def _read_images_by_range(fs: Any, path: str, ids: np.ndarray, layout: StimuliLayout) -> np.ndarray:
    item = int(np.prod(layout.shape[1:]))
    uniq, inverse = np.unique(ids, return_inverse=True)
    runs = _runs(uniq)
    # merge runs separated by up to 4 unwanted images: far fewer requests, ≤ 4 images of waste per gap
    raw = _cat_ranges(fs, path, [layout.offset + a * item for a, _ in runs],
                      [layout.offset + b * item for _, b in runs], max_gap=4 * item)
    images = np.frombuffer(raw, dtype=np.uint8).reshape(len(uniq), *layout.shape[1:])
    return images[inverse.reshape(-1)]


def read_captions(fs: Any, path: str, ids: np.ndarray) -> np.ndarray:
    """Read caption rows of ``COCO_73k_annots_curated.npy`` by range (no pickle, no full load).

    Parameters
    ----------
    fs : fsspec filesystem
    path : str
    ids : array of shape (n,), int
        0-based 73k ids.

    Returns
    -------
    captions : array of shape (n, 5), str
        '' where a caption is missing.
    """
    fix = "place COCO_73k_annots_curated.npy at the dataset root (or regenerate mini-NSD)"
    with _open(fs, path, what="captions", fix=fix, ranged=True) as f:
        try:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
        except (ValueError, OSError, EOFError) as exc:
            raise NSDFormatError(f"{_name(path)} at {path} is not a readable .npy file ({exc}); expected a "
                                 f"(n_images, 5) unicode array: download it again") from exc
        if dtype.kind != "U" or len(shape) != 2 or fortran:
            raise NSDFormatError(f"{_name(path)} holds a {'Fortran-order ' if fortran else ''}{dtype} array of "
                                 f"shape {shape}; expected a C-order unicode array of shape (n_images, 5) "
                                 f"(e.g. <U250), '' where missing")
        ids = _check_ids(ids, shape[0], path, "caption")
        offset = f.tell()
        row = shape[1] * dtype.itemsize

        def read_run(a: int, b: int) -> np.ndarray:
            f.seek(offset + a * row)
            raw = f.read((b - a) * row)
            if len(raw) != (b - a) * row:
                raise _truncated(path, EOFError(f"expected {(b - a) * row} bytes at row {a}, got {len(raw)}"))
            return np.frombuffer(raw, dtype=dtype).reshape(b - a, shape[1])

        return _gather(ids, read_run, (shape[1],), dtype)
