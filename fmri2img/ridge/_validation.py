"""Input checks for the ridge engine: one clear error per problem.

Every error is a :class:`RidgeInputError` (a ``ValueError`` subclass) that names the
argument, says what was found and what was expected, and how to fix it.
"""

from __future__ import annotations

import logging
from typing import Any

import dask.array as da
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "RidgeInputError",
    "NonFiniteInputError",
    "SampleCountMismatchError",
    "InvalidAlphaError",
    "ImageIdMismatchError",
    "TargetShapeError",
    "DeviceUnavailableError",
    "check_finite",
    "check_n_samples",
    "check_alphas",
    "check_same_images",
]


class RidgeInputError(ValueError):
    """Base class of every bad-input error raised by :mod:`fmri2img.ridge`."""


class NonFiniteInputError(RidgeInputError):
    """An input array holds NaN or infinite values."""


class SampleCountMismatchError(RidgeInputError):
    """Two arrays that must share their first axis (images) do not."""


class InvalidAlphaError(RidgeInputError):
    """A regularisation strength is not a finite positive number."""


class ImageIdMismatchError(RidgeInputError):
    """Two image-id coordinates that must be identical differ."""


class TargetShapeError(RidgeInputError):
    """Targets re-supplied to a fitted model do not match the ones it was fitted on."""


class DeviceUnavailableError(RidgeInputError):
    """The requested torch ``device`` cannot be used on this machine (no CUDA, no torch, ...)."""


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_finite(arr: Any, name: str) -> None:
    """Raise :class:`NonFiniteInputError` if ``arr`` holds NaN or inf.

    Parameters
    ----------
    arr : array of shape (n_samples, ...)
        NumPy or Dask array. A Dask array is checked with one streamed reduction
        (block by block, never loaded whole); the location of the first bad value
        is then found block by block.
    name : str
        The argument name used in the message.
    """
    if isinstance(arr, da.Array):
        n_bad = int((~da.isfinite(arr)).sum().compute())
        if n_bad == 0:
            return
        where = _locate_dask(arr)
    else:
        bad = ~np.isfinite(arr)
        n_bad = int(bad.sum())
        if n_bad == 0:
            return
        where = _first_bad(bad)
    raise NonFiniteInputError(
        f"{name} holds {n_bad} NaN/inf value(s); the first is at row {where[0]}"
        + (f", column {where[1:] if len(where) > 2 else where[1]}" if len(where) > 1 else "")
        + f" (shape {tuple(arr.shape)}). Expected finite values only: drop or impute "
        "the bad images/voxels/features upstream (e.g. mask NaN voxels at ingest)."
    )


def _locate_dask(arr: da.Array) -> tuple[int, ...]:
    for idx in np.ndindex(*arr.numblocks):
        block = np.asarray(arr.blocks[idx].compute())
        bad = ~np.isfinite(block)
        if bad.any():
            local = _first_bad(bad)
            offsets = [sum(arr.chunks[ax][:i]) for ax, i in enumerate(idx)]
            return tuple(o + j for o, j in zip(offsets, local))
    return (0,)  # unreachable when the count was > 0


def check_n_samples(a: Any, b: Any, name_a: str, name_b: str) -> None:
    """Raise :class:`SampleCountMismatchError` if ``a`` and ``b`` differ along axis 0."""
    if a.shape[0] != b.shape[0]:
        raise SampleCountMismatchError(
            f"{name_a} has {a.shape[0]} rows (images) but {name_b} has {b.shape[0]}: "
            f"row i of both must be the same image. Select the same images (and order) "
            f"in both, e.g. align them on their image-id coordinate."
        )


def check_alphas(alpha: Any, name: str = "alpha") -> np.ndarray:
    """Return ``alpha`` as a 1-D float64 array, or raise :class:`InvalidAlphaError`.

    Parameters
    ----------
    alpha : float or sequence of float
        One regularisation strength, or a grid to select from.
    """
    arr = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidAlphaError(
            f"{name} must be a positive number or a non-empty 1-D sequence of them; got "
            f"shape {arr.shape}. Pass e.g. {name}=60000 or {name}=[1e3, 1e4, 1e5]."
        )
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise InvalidAlphaError(
            f"{name} must be > 0 and finite; got {arr[bad][0].item()!r} "
            f"({int(bad.sum())} bad value(s) of {arr.size}). Ridge needs a positive "
            f"penalty: use e.g. the Brain-Diffuser presets (5e4, 1e5, 6e4)."
        )
    return arr


def check_same_images(ids_a: Any, ids_b: Any, name_a: str, name_b: str) -> None:
    """Raise :class:`ImageIdMismatchError` unless two image-id coordinates are identical.

    Parameters
    ----------
    ids_a, ids_b : array of shape (n_images,)
        Image ids (e.g. NSD 73k ids) of two arrays that must describe the same images
        in the same order (e.g. the fMRI ``train`` rows and ``features/<name>`` rows).
    name_a, name_b : str
        What the two arrays are, for the message.
    """
    a = np.asarray(ids_a).ravel()
    b = np.asarray(ids_b).ravel()
    fix = (
        f"Re-run the features stage for these images, or select the same images "
        f"(same ids, same order) from both {name_a} and {name_b}."
    )
    if a.shape != b.shape:
        raise ImageIdMismatchError(
            f"{name_a} has {a.size} image ids but {name_b} has {b.size}. {fix}"
        )
    diff = a != b
    if diff.any():
        i = int(np.argmax(diff))
        raise ImageIdMismatchError(
            f"{int(diff.sum())} of {a.size} image ids differ between {name_a} and "
            f"{name_b}; the first mismatch is at position {i}: {name_a}={a[i].item()!r}, "
            f"{name_b}={b[i].item()!r}. {fix}"
        )


def as_numpy_2d(X: Any, name: str) -> np.ndarray:
    """``X`` as a 2-D NumPy array (a Dask array is computed; a 1-D pattern becomes one row)."""
    X = X.compute() if isinstance(X, da.Array) else np.asarray(X)
    if X.ndim == 1 and name == "pattern":
        X = X[None, :]
    if X.ndim != 2:
        raise RidgeInputError(
            f"{name} must be 2-D (images × voxels); got shape {X.shape}. Reshape it, "
            f"e.g. {name}.reshape(n_images, -1)."
        )
    return X
