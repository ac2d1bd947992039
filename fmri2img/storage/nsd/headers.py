"""The headers of NSD's input files, checked before anything is written (a few small reads each).

A command that will refuse its input must refuse it before its first write, so that a store it
was pointed at stays byte for byte as it was. The readers (:mod:`.betas`, :mod:`.stimuli`,
:mod:`.captions`) check the same things again as they read, but by then the driver has written
templates; these functions read only what says whether a file can be read:

- :func:`check_betas_file`: a session's betas file exists, its volume and trial count match the
  mask and the design, its values are numbers (NSD's int16, or floats with a scale named), and
  it is whole: a ``.nii.gz``'s gzip trailer records the uncompressed size the header implies
  (the last 8 bytes), an ``.hdf5``'s superblock records an end of file no later than its size
  (HDF5 itself refuses a truncated file when it opens it), and a contiguous dataset ends inside it;
- :func:`check_stimuli_file`: ``imgBrick`` is uint8 (n, side, side, 3) with every wanted image;
- :func:`check_captions_file`: the ``.npy`` header says a C-order unicode (n, k) array holding
  every wanted image, and the file is long enough for it.

Each failure is the reader's own error class (:class:`~._common.NSDFileMissing`,
:class:`~._common.NSDFormatError`) with the same wording: the file, what was expected, the fix.
"""
from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass
from typing import Any

import h5py
import nibabel as nib
import numpy as np

from fmri2img.storage.nsd._common import (NSDFileMissing, NSDFormatError, NSDLayout, _contiguous_offset, _fmt,
                                          _name, _open, _truncated)
from fmri2img.storage.nsd.betas import NSD_SCALE, _check_betas_shape, _check_dtype, _divisor, \
    _missing_betas_message

__all__ = ["BetasHeader", "betas_path", "check_betas_file", "check_nifti_file", "check_stimuli_file",
           "check_captions_file"]

#: bytes of a .nii.gz inflated to read its header (NIfTI-2's is 540 bytes, plus the extension flag)
_NIFTI_HEAD = 544
#: read-ahead of the HDF5 header reads
_HDF5_BLOCK = 64 * 2**10


@dataclass(frozen=True)
class BetasHeader:
    """What a betas file's header says: its path, format, shape (X, Y, Z, trials) and value type."""

    path: str
    fmt: str
    shape: tuple[int, ...]
    dtype: np.dtype


def betas_path(fs: Any, layout: NSDLayout, subject: int, session: int, prefer: str) -> tuple[str, str]:
    """(path, format) of the file :func:`~.betas.read_session_betas` would read for the session."""
    if prefer == "hdf5" and fs.exists(layout.betas(subject, session, "hdf5")):
        return layout.betas(subject, session, "hdf5"), "hdf5"
    path = layout.betas(subject, session, "nii.gz")
    if not fs.exists(path):
        raise NSDFileMissing(_missing_betas_message(layout, subject, session, path))
    return path, "nii.gz"


def check_betas_file(fs: Any, layout: NSDLayout, subject: int, session: int, volume_shape: tuple[int, ...],
                     trials: int, *, prefer: str = "hdf5", scale: str | float = NSD_SCALE) -> BetasHeader:
    """Check one session's betas file from its header and size; return what the header says.

    Raises
    ------
    NSDFileMissing
        Neither the ``.hdf5`` (when preferred) nor the ``.nii.gz`` exists.
    NSDFormatError
        Another volume or trial count, values that are not numbers, a float file without a
        scale, or a truncated file.
    """
    divisor = _divisor(scale)
    path, fmt = betas_path(fs, layout, subject, session, prefer)
    fix = _missing_betas_message(layout, subject, session, path)
    with _open(fs, path, what="single-trial betas", fix=fix, ranged=True, block_size=_HDF5_BLOCK) as f:
        header = _hdf5_betas_header(f, path) if fmt == "hdf5" else _nifti_betas_header(f, path)
    _check_numbers(path, header.dtype)
    _check_betas_shape(path, header.shape[:3], header.shape[3], tuple(int(s) for s in volume_shape), int(trials))
    _check_dtype(path, header.dtype, (scale, divisor))
    return header


def _check_numbers(path: str, dtype: np.dtype) -> None:
    if np.dtype(dtype).kind not in "iuf":
        raise NSDFormatError(f"{_name(path)} holds {np.dtype(dtype)} values, not numbers; expected NSD's int16 betas "
                             f"(percent signal change × 300) or floats: this is not a betas file, or it is damaged: "
                             f"download it again")


def _file_size(f: Any) -> int:
    size = getattr(f, "size", None)
    if size is None:
        size = f.seek(0, 2)
        f.seek(0)
    return int(size)


def check_nifti_file(fs: Any, path: str, *, what: str = "NIfTI volume", fix: str = "") -> tuple[int, ...]:
    """A NIfTI volume's shape from its header, after checking that the file is whole."""
    with _open(fs, path, what=what, fix=fix, ranged=True, block_size=_HDF5_BLOCK) as f:
        return _nifti_header(f, path)[0]


def _nifti_betas_header(f: Any, path: str) -> BetasHeader:
    shape, dtype = _nifti_header(f, path)
    if len(shape) != 4:
        raise NSDFormatError(f"{_name(path)} has shape {_fmt(shape)}; expected a 4-D X×Y×Z×trials volume")
    return BetasHeader(path, "nii.gz", shape, dtype)


def _nifti_header(f: Any, path: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the first inflated bytes; the gzip trailer's size (or the file's) must match them."""
    size = _file_size(f)
    magic = f.read(2)
    f.seek(0)
    compressed = magic == b"\x1f\x8b"
    try:
        head = gzip.GzipFile(fileobj=f, mode="rb").read(_NIFTI_HEAD) if compressed else f.read(_NIFTI_HEAD)
        klass = nib.Nifti2Header if len(head) >= 4 and struct.unpack("<i", head[:4])[0] in (540, 469893120) \
            else nib.Nifti1Header
        hdr = klass.from_fileobj(io.BytesIO(head), check=False)
        shape, dtype, offset = tuple(int(s) for s in hdr.get_data_shape()), hdr.get_data_dtype(), hdr.get_data_offset()
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise _truncated(path, exc) from exc
    except Exception as exc:  # nibabel: HeaderDataError, ...
        raise NSDFormatError(f"{_name(path)} at {path} is not a readable NIfTI-1 file ({exc}); expected a .nii.gz "
                             f"volume: download it again") from exc
    expected = int(offset) + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if compressed:
        f.seek(size - 4)
        tail = f.read(4)
        isize = struct.unpack("<I", tail)[0] if len(tail) == 4 else -1
        if isize != expected % 2**32:
            raise _truncated(path, EOFError(
                f"its gzip trailer records {isize} uncompressed bytes where the header implies {expected} (mod 2^32); "
                f"a file written as several gzip members would also show this: recompress it with gzip"))
    elif size < expected:
        raise _truncated(path, EOFError(f"the header implies {expected} bytes, the file has {size}"))
    return shape, np.dtype(dtype)


def _hdf5_betas_header(f: Any, path: str) -> BetasHeader:
    """Dataset ``betas`` (trials, Z, Y, X) from the HDF5 header; HDF5 refuses a file shorter than its EOF."""
    size = _file_size(f)
    try:
        h5 = h5py.File(f, "r")
    except OSError as exc:
        raise _truncated(path, exc) from exc
    with h5:
        ds = h5.get("betas")
        if not isinstance(ds, h5py.Dataset):
            raise NSDFormatError(f"{_name(path)} has no dataset 'betas' (found {sorted(h5.keys())}); expected the "
                                 f"NSD betas HDF5 with dataset 'betas' of shape (trials, Z, Y, X)")
        if ds.ndim != 4:
            raise NSDFormatError(f"{_name(path)}: dataset 'betas' has shape {_fmt(ds.shape)}; expected 4-D "
                                 f"(trials, Z, Y, X)")
        _check_ends_inside(path, ds, size)
        t, z, y, x = (int(s) for s in ds.shape)
        return BetasHeader(path, "hdf5", (x, y, z, t), np.dtype(ds.dtype))


def _check_ends_inside(path: str, ds: h5py.Dataset, size: int) -> None:
    """A contiguous dataset's bytes must lie inside the file (a chunked one's are checked by the EOF above)."""
    offset = _contiguous_offset(ds)
    if offset is None:
        return
    end = offset + int(np.prod(ds.shape)) * ds.dtype.itemsize
    if end > size:
        raise _truncated(path, EOFError(f"dataset '{ds.name.lstrip('/')}' ends at byte {end}, the file has {size}"))


def check_stimuli_file(fs: Any, path: str, n_needed: int) -> tuple[int, ...]:
    """``imgBrick`` must be uint8 (n, side, side, 3) with ``n >= n_needed`` and lie inside the file; its shape."""
    fix = "download nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5 or regenerate mini-NSD"
    with _open(fs, path, what="stimulus images", fix=fix, ranged=True, block_size=_HDF5_BLOCK) as f:
        size = _file_size(f)
        try:
            h5 = h5py.File(f, "r")
        except OSError as exc:
            raise _truncated(path, exc) from exc
        with h5:
            ds = h5.get("imgBrick")
            ok = isinstance(ds, h5py.Dataset) and ds.ndim == 4 and ds.shape[3] == 3 and ds.shape[1] == ds.shape[2] \
                and ds.dtype == np.uint8
            if not ok:
                found = f"shape {ds.shape}, dtype {ds.dtype}" if isinstance(ds, h5py.Dataset) else "no such dataset"
                raise NSDFormatError(f"{_name(path)}: dataset 'imgBrick' ({found}); expected uint8 of shape "
                                     f"(n_images, side, side, 3)")
            if ds.shape[0] < n_needed:
                raise NSDFormatError(f"{_name(path)} holds {ds.shape[0]} images but the design shows image ids up to "
                                     f"{n_needed - 1} (0-based): the file is incomplete or from another dataset; "
                                     f"{fix}")
            _check_ends_inside(path, ds, size)
            return tuple(int(s) for s in ds.shape)


def check_captions_file(fs: Any, path: str, n_needed: int) -> tuple[int, ...]:
    """The ``.npy`` header must say a C-order unicode (n, k) array, ``n >= n_needed``, all of it in the file."""
    fix = "place COCO_73k_annots_curated.npy at the dataset root (or regenerate mini-NSD)"
    with _open(fs, path, what="captions", fix=fix, ranged=True, block_size=_HDF5_BLOCK) as f:
        size = _file_size(f)
        try:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
        except (ValueError, OSError, EOFError) as exc:
            raise NSDFormatError(f"{_name(path)} at {path} is not a readable .npy file ({exc}); expected a "
                                 f"(n_images, 5) unicode array: download it again") from exc
        offset = f.tell()
    if dtype.kind != "U" or len(shape) != 2 or fortran:
        raise NSDFormatError(f"{_name(path)} holds a {'Fortran-order ' if fortran else ''}{dtype} array of "
                             f"shape {shape}; expected a C-order unicode array of shape (n_images, 5) "
                             f"(e.g. <U250), '' where missing")
    if shape[0] < n_needed:
        raise NSDFormatError(f"{_name(path)} holds captions of {shape[0]} images but the design shows image ids up to "
                             f"{n_needed - 1} (0-based): the file is incomplete or from another dataset; {fix}")
    end = offset + int(np.prod(shape)) * dtype.itemsize
    if end > size:
        raise _truncated(path, EOFError(f"its header implies {end} bytes, the file has {size}"))
    return tuple(int(s) for s in shape)
