"""What is at a store URL, and the claim that makes it an fmri2img store.

Nothing is written into a location unless it is empty or already an fmri2img store:
a Zarr v2 tree, another project's Zarr v3 tree, a folder of unrelated files or a
regular file is refused before the first byte is written, with what was found and
the fix.  An fmri2img store carries ``fmri2img_store`` in its root group's
attributes (written by :func:`claim`); stores written before that marker existed
are recognised by their ``_progress`` group and get the marker on their next write.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from fmri2img.storage import urls

#: the stores these functions take are fmri2img.storage.store.Store objects (typed as Any: store.py
#: imports this module, and a module never imports back)

#: the root attribute that marks a store as ours (its value: the store format version)
MARKER = "fmri2img_store"
STORE_FORMAT = 1
#: root documents of a Zarr v2 hierarchy
V2_DOCUMENTS = (".zgroup", ".zarray", ".zattrs", ".zmetadata")
#: what an fmri2img store may hold at its root besides groups of data
_OURS = ("_progress", "_runlog", "_lock")


class ForeignStoreError(urls.StorageError):
    """The target holds something that is not an fmri2img store; nothing was written."""


@dataclass(frozen=True)
class Found:
    """What is at a store URL.

    kind : {"empty", "fmri2img", "fmri2img-unmarked", "zarr-v2", "zarr-v3-array", "foreign", "file"}
    entries : up to a few names found at the root (for messages)
    """

    kind: str
    entries: tuple[str, ...] = ()

    @property
    def is_ours(self) -> bool:
        return self.kind in ("empty", "fmri2img", "fmri2img-unmarked")


def inspect(store: Any) -> Found:
    """Look at the root of ``store`` without writing anything."""
    scheme, rest = urls.split_url(store.url)
    if scheme in ("", "file"):
        path = os.path.expanduser(rest)
        if os.path.exists(path) and not os.path.isdir(path):
            return Found("file")
        if not os.path.exists(path):
            return Found("empty")
    zstore = store.zarr_store(read_only=True)
    try:
        root_doc = sync(zstore.get("zarr.json", prototype=default_buffer_prototype()))
        if root_doc is not None and MARKER in (_parse(root_doc).get("attributes") or {}):
            return Found("fmri2img")  # the common case: one small read, no listing
        entries = sorted(sync(_list_root(zstore)))
    except FileNotFoundError:
        return Found("empty")
    except NotADirectoryError:
        return Found("file")
    if not entries:
        return Found("empty")
    shown = tuple(entries[:6])
    if any(e in V2_DOCUMENTS for e in entries):
        return Found("zarr-v2", shown)
    if root_doc is None:
        return Found("foreign", shown)
    doc = _parse(root_doc)
    if not doc:
        return Found("foreign", shown)
    if doc.get("node_type") != "group":
        return Found("zarr-v3-array", shown)
    if MARKER in (doc.get("attributes") or {}):
        return Found("fmri2img")
    if "_progress" in entries:
        return Found("fmri2img-unmarked")
    return Found("foreign", shown)


def _parse(doc) -> dict:
    try:
        parsed = json.loads(doc.to_bytes())
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def _list_root(zstore) -> list[str]:
    return [k async for k in zstore.list_dir("")]


def refusal(store: Any, found: Found) -> ForeignStoreError:
    """The error for a target that is not an fmri2img store (what was found, the fix)."""
    where = store.describe()
    listing = f" (found: {', '.join(found.entries)})" if found.entries else ""
    what = {
        "file": "is a regular file, not a directory or bucket prefix",
        "zarr-v2": "is a Zarr v2 store" + listing + ", not an fmri2img store (fmri2img writes Zarr v3)",
        "zarr-v3-array": "is a Zarr v3 array, not an fmri2img store" + listing,
        "foreign": "is not empty and is not an fmri2img store" + listing,
    }[found.kind]
    return ForeignStoreError(
        f"{where} {what}. Nothing was written. Fix: give a new or empty location for the store "
        f"(e.g. ./runs/NAME/store.zarr); fmri2img never writes into another project's data"
    )


def check(store: Any) -> Found:
    """Raise :class:`ForeignStoreError` unless ``store`` is empty or an fmri2img store."""
    found = inspect(store)
    if not found.is_ours:
        raise refusal(store, found)
    return found


def claim(store: Any) -> None:
    """Check the target, then mark it as an fmri2img store (idempotent; before any other write)."""
    found = check(store)
    if found.kind == "fmri2img":
        return
    import zarr

    if found.kind == "empty" and urls.split_url(store.url)[0] in ("", "file"):
        urls.check_writable(store.url, dict(store.storage_options) or None)
    root = zarr.open_group(store.zarr_store(), mode="a", zarr_format=3)
    root.attrs.update({MARKER: STORE_FORMAT})
