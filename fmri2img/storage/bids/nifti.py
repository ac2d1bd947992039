"""NIfTI files of fMRIPrep's derivatives read through fsspec, volume by volume.

A ``.nii.gz`` is one gzip stream: the header (NIfTI-1, 348 bytes, or NIfTI-2, 540), an optional
extension, then the voxels from ``vox_offset`` on, in Fortran order (x fastest), one volume after
the other (NIfTI-1 standard, ``nifti1.h``). :func:`read_timeseries` decompresses that stream once,
front to back, keeping one volume and the output: memory is (output + one volume) whatever the
run's length, and nothing is copied to local disk. Values are scaled by ``scl_slope``/``scl_inter``
when the header sets them (nibabel's rules) and returned as float32.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from scipy.interpolate import CubicSpline

from fmri2img.storage.bids.errors import BIDSFormatError
from fmri2img.storage.bids.tables import shown

__all__ = ["NiftiInfo", "read_nifti_info", "read_mask", "mask_voxels", "read_timeseries", "resample_matrix"]

_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}
_STREAM_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, struct.error)


@dataclass(frozen=True)
class NiftiInfo:
    """A NIfTI header as the readers need it.

    Attributes
    ----------
    shape : tuple of int
        (X, Y, Z) or (X, Y, Z, T).
    affine : array of shape (4, 4)
        Voxel to world (nibabel's choice of sform/qform).
    dtype : numpy dtype
        Stored type, with its byte order.
    offset : int
        Byte offset of the first voxel in the (decompressed) stream.
    slope, inter : float or None
        Scaling of the stored values (None: unscaled).
    tr : float or None
        The fourth zoom in seconds (header time units applied), None for a 3-D image.
    time_units : str
        The header's time unit (``sec``, ``msec``, ``usec`` or ``unknown``: read as seconds).
    """

    shape: tuple[int, ...]
    affine: np.ndarray = field(repr=False)
    dtype: np.dtype
    offset: int
    slope: float | None
    inter: float | None
    tr: float | None
    time_units: str

    @property
    def n_volumes(self) -> int:
        """Volumes (1 for a 3-D image)."""
        return int(self.shape[3]) if len(self.shape) > 3 else 1

    @property
    def volume_bytes(self) -> int:
        """Bytes of one volume as stored."""
        return int(np.prod(self.shape[:3])) * self.dtype.itemsize


class _Stream:
    """The decompressed byte stream of a ``.nii`` or ``.nii.gz`` opened through fsspec."""

    def __init__(self, fs: Any, path: str):
        self.path, self.shown = path, shown(fs, path)
        try:
            try:
                self.raw = fs.open(path, "rb", block_size=2**22)  # few, large requests on object stores
            except TypeError:  # filesystems whose open takes no block_size
                self.raw = fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise BIDSFormatError(f"{self.shown} does not exist; expected a NIfTI image there. Fix: check the "
                                  f"derivatives URL") from exc
        magic = self.raw.read(2)
        self.raw.seek(0)
        self.f = gzip.GzipFile(fileobj=self.raw, mode="rb") if magic == b"\x1f\x8b" else self.raw
        self.pos = 0

    def read(self, n: int) -> bytes:
        try:
            chunks, want = [], n
            while want:
                chunk = self.f.read(want)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
        except _STREAM_ERRORS as exc:
            raise self.truncated(exc) from exc
        data = b"".join(chunks)
        self.pos += len(data)
        return data

    def truncated(self, why: object) -> BIDSFormatError:
        return BIDSFormatError(f"{self.shown} is truncated or corrupt ({why}); expected a complete NIfTI image. "
                               f"Fix: copy or download the file again")

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()


def _header(stream: _Stream) -> NiftiInfo:
    start = stream.read(4)
    if len(start) < 4:
        raise stream.truncated("no header")
    size = struct.unpack("<i", start)[0]
    size = size if size in (348, 540) else struct.unpack(">i", start)[0]
    if size not in (348, 540):
        raise BIDSFormatError(f"{stream.shown} is not a NIfTI image (sizeof_hdr {size}, expected 348 or 540). "
                              f"Fix: the derivative must be a .nii or .nii.gz file")
    raw = start + stream.read(size - 4)
    if len(raw) < size:
        raise stream.truncated("header cut short")
    klass = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    try:
        hdr = klass(raw, check=True)
        shape = tuple(int(s) for s in hdr.get_data_shape())
        dtype = hdr.get_data_dtype()
        affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # nibabel's HeaderDataError and friends
        raise BIDSFormatError(f"{stream.shown} has an invalid NIfTI header ({exc}). Fix: regenerate the "
                              f"file") from exc
    slope, inter = hdr.get_slope_inter()
    units = hdr.get_xyzt_units()[1]
    zooms = hdr.get_zooms()
    tr = float(zooms[3]) * _TIME_UNITS.get(units, 1.0) if len(shape) > 3 else None
    return NiftiInfo(shape=shape, affine=affine, dtype=np.dtype(dtype), offset=int(hdr["vox_offset"]),
                     slope=None if slope is None else float(slope), inter=None if inter is None else float(inter),
                     tr=tr, time_units=units)


def read_nifti_info(fs: Any, path: str) -> NiftiInfo:
    """Read only the header of a NIfTI image (a few hundred bytes of the stream).

    Raises
    ------
    BIDSFormatError
        Missing, not NIfTI, or truncated.
    """
    with _Stream(fs, path) as stream:
        return _header(stream)


def _skip_to_data(stream: _Stream, info: NiftiInfo) -> None:
    gap = info.offset - stream.pos
    if gap > 0 and len(stream.read(gap)) < gap:
        raise stream.truncated("ends before its data")


def _values(stream: _Stream, info: NiftiInfo, raw: bytes) -> np.ndarray:
    if len(raw) < info.volume_bytes:
        raise stream.truncated(f"{len(raw)} of {info.volume_bytes} bytes of a volume")
    return np.frombuffer(raw, dtype=info.dtype)


def read_mask(fs: Any, path: str) -> tuple[np.ndarray, NiftiInfo]:
    """Read a brain mask (a 3-D NIfTI, or 4-D with one volume): voxels > 0 are in.

    Returns
    -------
    mask : array of shape (X, Y, Z), bool
    info : NiftiInfo
    """
    with _Stream(fs, path) as stream:
        info = _header(stream)
        if len(info.shape) not in (3, 4) or info.n_volumes != 1:
            raise BIDSFormatError(f"{stream.shown} has shape {info.shape}; expected a 3-D brain mask. Fix: use "
                                  f"fMRIPrep's *_desc-brain_mask.nii.gz")
        _skip_to_data(stream, info)
        values = _values(stream, info, stream.read(info.volume_bytes))
    mask = np.nan_to_num(values.astype(np.float64), nan=0.0) > 0
    return mask.reshape(info.shape[:3], order="F"), info


def mask_voxels(mask: np.ndarray) -> np.ndarray:
    """The (i, j, k) indices of the voxels in a mask, in C order (i slowest), shape (n_voxels, 3), int64."""
    return np.argwhere(mask).astype(np.int64)


def read_timeseries(fs: Any, path: str, voxels: np.ndarray, *, resample: np.ndarray | None = None,
                    info: NiftiInfo | None = None) -> np.ndarray:
    """Read a 4-D image's time series at some voxels, streaming one volume at a time.

    Parameters
    ----------
    fs : fsspec filesystem
    path : str
    voxels : array of shape (n_voxels, 3), int
        (i, j, k) of the voxels wanted (e.g. a block of :func:`mask_voxels`), in the output's order.
    resample : array of shape (n_out, n_volumes), optional
        A linear map in time applied on the fly (:func:`resample_matrix`): each volume is added to the
        few output rows its weights reach, so memory stays (output + one volume).
    info : NiftiInfo, optional
        The header, when already read (checked against the file's).

    Returns
    -------
    series : array of shape (n_volumes or n_out, n_voxels), float32
    """
    with _Stream(fs, path) as stream:
        found = _header(stream)
        if info is not None and (found.shape != info.shape or found.dtype != info.dtype):
            raise BIDSFormatError(f"{stream.shown} changed since it was planned: shape {found.shape} "
                                  f"{found.dtype}, planned {info.shape} {info.dtype}. Fix: plan the run again")
        info = found
        n_t = info.n_volumes
        ijk = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        x, y, _ = info.shape[:3]
        flat = ijk[:, 0] + x * (ijk[:, 1] + y * ijk[:, 2])
        bands = _bands(resample, n_t) if resample is not None else None
        out = np.zeros((n_t if resample is None else resample.shape[0], len(flat)), np.float32)
        _skip_to_data(stream, info)
        for t in range(n_t):
            v = _values(stream, info, stream.read(info.volume_bytes))[flat].astype(np.float32)
            if info.slope is not None:
                v = v * np.float32(info.slope) + np.float32(info.inter or 0.0)
            if bands is None:
                out[t] = v
            else:
                a, b = bands[t]
                out[a:b] += np.outer(resample[a:b, t], v).astype(np.float32)
    return out


def _bands(weights: np.ndarray, n_t: int) -> list[tuple[int, int]]:
    """Per input volume, the output rows its weight reaches (|w| > 1e-9 of the largest): a band, not all rows."""
    if weights.ndim != 2 or weights.shape[1] != n_t:
        raise ValueError(f"resample matrix has shape {weights.shape}; expected (n_out, {n_t})")
    tiny = 1e-9 * float(np.abs(weights).max() or 1.0)
    out = []
    for t in range(n_t):
        rows = np.flatnonzero(np.abs(weights[:, t]) > tiny)
        out.append((int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0))
    return out


def resample_matrix(frame_times: np.ndarray, grid_times: np.ndarray) -> np.ndarray:
    """The cubic-spline interpolation from one time grid to another, as a matrix.

    A not-a-knot cubic spline through the samples is linear in them, so interpolating every
    voxel (and every confound) is one matrix product: ``resampled = W @ series``.

    Parameters
    ----------
    frame_times : array of shape (n_volumes,)
        Acquisition times of the volumes (s), increasing.
    grid_times : array of shape (n_out,)
        Times wanted (s); outside ``frame_times`` the end polynomials extrapolate.

    Returns
    -------
    W : array of shape (n_out, n_volumes), float64
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    spline = CubicSpline(frame_times, np.eye(len(frame_times)), axis=0, bc_type="not-a-knot")
    return spline(np.asarray(grid_times, dtype=np.float64))
