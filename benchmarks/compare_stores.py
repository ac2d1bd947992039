"""Compare two fmri2img stores: every array's values, and every attribute that differs.

    python benchmarks/compare_stores.py STORE_A STORE_B [--ignore-attr KEY ...]

Used to show that a change that should not change results does not (e.g. the demo's store
written before and after a refactoring, benchmarks/README.md "Layout"). Arrays are compared by
value (NaN equal to NaN; dtype and shape must match); attributes by key, group by group, with
values that differ printed side by side (timestamps, versions and commits are expected to).
Exit status 0 when every array is equal, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmri2img.storage.store import Store  # noqa: E402


def _nodes(url: str) -> dict[str, object]:
    root = zarr.open_group(Store(url).zarr_store(read_only=True), mode="r", zarr_format=3)
    out = {"": root}
    out.update(dict(root.members(max_depth=None)))
    return out


def _equal(x: np.ndarray, y: np.ndarray) -> bool:
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    return bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))


def _short(value: object, width: int = 90) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= width else text[:width - 1] + "…"


def compare(a: str, b: str, ignore_attrs: set[str]) -> int:
    """Print the differences; return the number of arrays that differ or exist on one side only."""
    na, nb = _nodes(a), _nodes(b)
    only = sorted(set(na) ^ set(nb))
    for path in only:
        print(f"only in {'A' if path in na else 'B'}: {path or '/'}")
    n_arrays = bad = 0
    attr_diffs: dict[str, int] = {}
    for path in sorted(set(na) & set(nb)):
        x, y = na[path], nb[path]
        if isinstance(x, zarr.Array) and isinstance(y, zarr.Array):
            n_arrays += 1
            if not _equal(np.asarray(x[...]), np.asarray(y[...])):
                bad += 1
                print(f"values differ: {path}")
        ax, ay = dict(x.attrs), dict(y.attrs)
        for key in sorted((set(ax) | set(ay)) - ignore_attrs):
            if ax.get(key) != ay.get(key):
                attr_diffs[key] = attr_diffs.get(key, 0) + 1
                if attr_diffs[key] <= 2:
                    print(f"attribute {key!r} of {path or '/'}: A {_short(ax.get(key))}  B {_short(ay.get(key))}")
    print(f"\n{n_arrays} arrays in both stores, {bad} differ in values, {len(only)} paths in one store only")
    for key, n in sorted(attr_diffs.items()):
        print(f"attribute {key!r} differs in {n} node(s)")
    return bad + len(only)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--ignore-attr", action="append", default=[], help="attribute keys not compared")
    args = parser.parse_args()
    return 1 if compare(args.a, args.b, set(args.ignore_attr)) else 0


if __name__ == "__main__":
    sys.exit(main())
