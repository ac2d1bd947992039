"""Captions: ``COCO_73k_annots_curated.npy`` ((73000, 5) unicode), rows read by range with no pickle."""

from __future__ import annotations

from typing import Any

import numpy as np

from fmri2img.storage.nsd._common import NSDFormatError, _check_ids, _gather, _name, _open, _truncated

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
