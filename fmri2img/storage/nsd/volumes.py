"""NIfTI volumes: ROI label volumes and masks, streamed through gzip in memory (never copied to disk)."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import nibabel as nib
import numpy as np

from fmri2img.storage.nsd._common import NSDFormatError, _fmt, _name, _open, _truncated

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


