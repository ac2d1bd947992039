"""What every NSD reader shares: the bucket's paths, the errors, opening files, range reads.

Every reader takes an already-made fsspec filesystem plus a path (never a URL) and reads
only what it needs. Bad input raises one :class:`NSDError` subclass whose message names the
file, what was expected and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

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

    def __reduce__(self):
        # rebuilt by calling the class: with both ValueError and OSError as bases, pickling by
        # attributes (tblib's way, which Dask uses for errors raised on workers) calls
        # ValueError.__new__, which Python refuses for OSError's layout
        return type(self), self.args, self.__dict__ or None


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

    def stim_info(self) -> str:
        """Path of ``nsd_stim_info_merged.csv`` (one row per 73k image)."""
        return self._join("nsddata/experiments/nsd/nsd_stim_info_merged.csv")

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


def _truncated(path: str, exc: BaseException) -> NSDFormatError:
    return NSDFormatError(f"{_name(path)} at {path} is truncated or corrupt ({type(exc).__name__}: {exc}); the "
                          f"download was probably interrupted: download the file again")

def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)

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


