"""Walk stores and compare them: every array's values (completion records included) and raw bytes.

- ``arrays(store)``: array path → values, for every array of the store (``_progress`` records,
  the run log and data alike).
- ``assert_same_arrays(a, b, ignore=...)``: the two stores hold the same arrays with equal values.
- ``files(path)``: relative path → bytes of every file under a local directory (a store, or any
  target that must stay untouched).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import zarr


def arrays(store, ignore: Iterable[str] = ("_runlog",), prefix: str = "") -> dict[str, np.ndarray]:
    """Every array of ``store`` (a :class:`fmri2img.storage.store.Store`) by path, as NumPy values."""
    root = zarr.open_group(store.zarr_store(read_only=True), mode="r", zarr_format=3)
    skip = tuple(ignore)
    out = {}
    for path, node in root.members(max_depth=None):
        if not path.startswith(prefix):
            continue
        if isinstance(node, zarr.Array) and not any(path == s or path.startswith(s + "/") for s in skip):
            out[path] = np.asarray(node[...])
    return out


def records(store) -> dict[str, np.ndarray]:
    """The completion records only: group → record array."""
    return {k[len("_progress/"):]: v for k, v in arrays(store, prefix="_progress/").items()}


def assert_same_arrays(a, b, ignore: Iterable[str] = ("_runlog",)) -> None:
    """Same array paths, equal values (NaN equal to NaN), records included."""
    assert_same_values(arrays(a, ignore), arrays(b, ignore))


def assert_same_values(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Two results of :func:`arrays` (e.g. before and after a step) are equal."""
    assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))
    for path in want:
        x, y = got[path], want[path]
        assert x.shape == y.shape and x.dtype == y.dtype, (path, x.shape, y.shape, x.dtype, y.dtype)
        if x.dtype.kind in "fc":
            assert np.array_equal(x, y, equal_nan=True), path
        else:
            assert np.array_equal(x, y), path


def files(path: str | Path) -> dict[str, bytes]:
    """Relative path → content of every file under ``path`` (empty when absent)."""
    root = Path(path)
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
