"""Consolidated metadata at a store's root, for readers (``xarray.open_zarr(url, group=...)``).

xarray looks for consolidated metadata at the root of a Zarr store and warns when it finds none.
:class:`fmri2img.storage.store.Store` keeps it either absent or true: :func:`unconsolidate`
before any metadata write, :func:`consolidate` when a writing command ends.  Zarr's own
``consolidate_metadata`` cannot leave bookkeeping nodes out, so the document is built here the
same way with an ``exclude`` list.
"""
from __future__ import annotations

import json
from typing import Any, Sequence


async def consolidate(zstore: Any, exclude: Sequence[str] = ()) -> None:
    """The root's consolidated metadata over every node but the top-level names in ``exclude`` (as zarr's own
    ``consolidate_metadata`` builds it, which has no way to leave nodes out).  Already present, it
    still holds (every metadata write drops it first), so a command that changed nothing lists nothing."""
    import dataclasses

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import AsyncGroup, ConsolidatedMetadata, GroupMetadata
    from zarr.storage import StorePath

    raw = await zstore.get("zarr.json", prototype=default_buffer_prototype())
    if raw is None or json.loads(raw.to_bytes()).get("consolidated_metadata") is not None:
        return
    root = await AsyncGroup.open(StorePath(zstore), zarr_format=3, use_consolidated=False)
    members = {}
    async for path, node in root.members(max_depth=None, use_consolidated_for_children=False):
        if path.split("/", 1)[0] in exclude:
            continue
        meta = node.metadata
        if isinstance(meta, GroupMetadata) and meta.consolidated_metadata is None:
            meta = dataclasses.replace(meta, consolidated_metadata=ConsolidatedMetadata(metadata={}))
        members[path] = meta
    ConsolidatedMetadata._flat_to_nested(members)
    metadata = dataclasses.replace(root.metadata, consolidated_metadata=ConsolidatedMetadata(metadata=members))
    await dataclasses.replace(root, metadata=metadata)._save_metadata()


async def unconsolidate(zstore: Any) -> None:
    """Drop the root's consolidated metadata, if any (one small read; a write only when present)."""
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    raw = await zstore.get("zarr.json", prototype=proto)
    if raw is None:
        return
    doc = json.loads(raw.to_bytes())
    if doc.get("consolidated_metadata") is None:
        return
    doc.pop("consolidated_metadata")
    await zstore.set("zarr.json", proto.buffer.from_bytes(json.dumps(doc, indent=2, allow_nan=True).encode()))
