"""Images of ``nsd_stimuli.hdf5`` (dataset ``imgBrick``, uint8 73000×425×425×3), read by byte range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from fmri2img.storage.nsd._common import (NSDFormatError, _cat_ranges, _check_ids, _contiguous_offset, _gather,
                                          _name, _open, _runs, _truncated)

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


