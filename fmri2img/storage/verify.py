"""Checksums, whole-store verification and decode errors that name the chunk.

Every array the store writes ends its codec chain with zarr v3's ``crc32c`` codec
(:data:`CHECKSUM_CODECS`), so a truncated or byte-flipped chunk fails to decode
instead of passing as data.  Groups written this way also write chunks that hold
only the fill value (``fmri2img_chunks = "all"`` in their attributes), so a chunk
missing from a finished region is a fault too.

- :func:`verify_store` reads every chunk of every array and returns the bad ones;
  ``fmri2img status STORE --verify`` prints them with the stage that rewrites them.
- :func:`forget_bad` clears the completion records of the regions holding bad
  chunks (or the template of a group whose metadata arrays are bad), so that
  rerunning the stage rewrites exactly those.
- :class:`NamingCodecPipeline` (installed in zarr's configuration by
  :mod:`fmri2img.storage.store`) turns any decode failure, anywhere, into a
  :class:`ChunkDecodeError` naming the array, the chunk and the fix.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.sync import sync

#: the stores these functions take are fmri2img.storage.store.Store objects (typed as Any: store.py
#: imports this module, and a module never imports back)

#: group attribute: every chunk of the group's arrays is written, even one of fill values only
ALL_CHUNKS_ATTR = "fmri2img_chunks"

#: group path prefix → the stage that writes it (what to rerun after a repair)
STAGE_OF_PREFIX = (
    ("stimuli", "ingest"), ("subjects/", "ingest"), ("features/", "features"), ("models/", "regress"),
    ("predictions/", "regress"), ("recon/", "reconstruct"), ("evalfeatures/", "evaluate"),
    ("metrics/", "evaluate"), ("roi/", "roi"),
)


def checksum_codecs() -> list:
    """Bytes-to-bytes codecs of every array fmri2img writes: zstd, then a crc32c of the compressed chunk."""
    return [ZstdCodec(level=0), Crc32cCodec()]


def stage_of(group: str) -> str:
    for prefix, stage in STAGE_OF_PREFIX:
        if group == prefix or group.startswith(prefix if prefix.endswith("/") else prefix + "/"):
            return stage
    return "the stage that wrote it"


class ChunkDecodeError(ValueError):
    """A stored chunk is corrupt, truncated or unreadable; names the array, the chunk and the fix."""


def decode_message(array: str, chunk: str, cause: str, where: str = "") -> str:
    """One message for a chunk that does not decode: array, chunk, cause and the repair commands."""
    group = array.rsplit("/", 1)[0] if "/" in array else array
    target = where or "STORE"
    return (
        f"chunk {chunk} of array {array}{' in ' + where if where else ''} could not be decoded ({cause}): it is "
        f"corrupt or truncated. Fix: `fmri2img status {target} --verify` lists every bad chunk; "
        f"`fmri2img status {target} --verify --repair` clears their completion records; then rerun the "
        f"{stage_of(group)} stage (same command as before) to rewrite them"
    )


def _split_key(path: str) -> tuple[str, str]:
    """``"a/b/arr/c/0/1"`` → ``("a/b/arr", "c/0/1")`` (zarr v3 default chunk keys)."""
    head, sep, tail = path.rpartition("/c/")
    if sep:
        return head, "c/" + tail
    if path.endswith("/c"):
        return path[:-2], "c"
    return path, ""


def _store_location(zstore: Any) -> str:
    root = getattr(zstore, "root", None)
    if root is not None:
        return str(root)
    fs, path = getattr(zstore, "fs", None), getattr(zstore, "path", "")
    protocol = getattr(fs, "protocol", "") if fs is not None else ""
    protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
    return f"{protocol}://{path}" if protocol and protocol != "file" else str(path)


class NamingCodecPipeline(BatchedCodecPipeline):
    """zarr's batched codec pipeline; a chunk that fails to decode raises :class:`ChunkDecodeError`."""

    async def read_batch(self, batch_info, out, drop_axes=()) -> None:
        batch_info = list(batch_info)
        try:
            await super().read_batch(batch_info, out, drop_axes)
        except ChunkDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure: name the chunk(s)
            getters = [item[0] for item in batch_info]
            paths = [str(getattr(g, "path", g)) for g in getters]
            array, chunk = _split_key(paths[0]) if paths else ("?", "?")
            if len(paths) > 1:
                chunk = f"{chunk} (or one of {', '.join(_split_key(p)[1] for p in paths[1:])})"
            where = _store_location(getattr(getters[0], "store", None)) if getters else ""
            raise ChunkDecodeError(decode_message(array, chunk, f"{type(exc).__name__}: {exc}", where)) from exc


PIPELINE_PATH = f"{__name__}.NamingCodecPipeline"


def install() -> None:
    """Make :class:`NamingCodecPipeline` zarr's codec pipeline in this process (idempotent)."""
    import zarr
    from zarr.registry import register_pipeline

    register_pipeline(NamingCodecPipeline)
    zarr.config.set({"codec_pipeline.path": PIPELINE_PATH})


# -- verification ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BadChunk:
    """One chunk that is missing from a finished region or does not decode."""

    group: str
    array: str
    chunk: str
    problem: str
    region: str | None  # the region label whose record covers it; None: template data

    def line(self) -> str:
        where = f"region {self.region}" if self.region else "template data"
        return f"{self.group}/{self.array} chunk {self.chunk} ({where}): {self.problem}"


def _chunk_slices(arr, coords: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, arr.chunks, arr.shape))


def _covering_region(regions, axis_slice: slice):
    for r in regions:
        if r.start < axis_slice.stop and axis_slice.start < r.stop:
            yield r


def _check_array(store: Any, group: str, name: str, arr, regions, done: set[int], all_written: bool,
                 pool: ThreadPoolExecutor) -> list[BadChunk]:
    dims = tuple(arr.metadata.dimension_names or ())
    region_dim = regions[0].dim if regions else None
    axis = dims.index(region_dim) if region_dim in dims else None
    zstore = arr.store_path.store
    grid = [range(int(np.ceil(s / c))) if s else range(0) for s, c in zip(arr.shape, arr.chunks)]

    def one(coords: tuple[int, ...]) -> BadChunk | None:
        key = arr.metadata.encode_chunk_key(coords)
        slices = _chunk_slices(arr, coords)
        labels = None
        if axis is not None:
            covering = [r for r in _covering_region(regions, slices[axis])]
            if not any(r.index in done for r in covering):
                return None  # not finished: nothing to check yet
            labels = ",".join(r.label for r in covering)
        exists = sync(zstore.exists(f"{arr.store_path.path}/{key}"))
        if not exists:
            if all_written:
                return BadChunk(group, name, key, "missing", labels)
            return None
        try:
            arr[slices]
        except Exception as exc:  # noqa: BLE001 - every decode failure is reported
            cause = exc.__cause__ if isinstance(exc, ChunkDecodeError) and exc.__cause__ else exc
            return BadChunk(group, name, key, f"does not decode ({type(cause).__name__}: {cause})", labels)
        return None

    coords_list = [tuple(c) for c in np.ndindex(*[len(g) for g in grid])] if all(len(g) for g in grid) else []
    return [b for b in pool.map(one, coords_list) if b is not None]


def verify_store(store: Any, groups: Iterable[str] | None = None, threads: int = 8) -> list[BadChunk]:
    """Read every chunk of every array of ``groups`` (default: all) and return the bad ones.

    A chunk is bad when it does not decode (checksum mismatch, truncated, not zstd) or,
    in a group whose chunks are all written, when it is missing from a finished region.
    """
    bad: list[BadChunk] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for group in (store.list_groups() if groups is None else groups):
            g = store.group(group)
            regions = store.regions(group)
            done = store.done_regions(group)
            all_written = g.attrs.get(ALL_CHUNKS_ATTR) == "all"
            for name in sorted(g.array_keys()):
                bad += _check_array(store, group, name, g[name], regions, done, all_written, pool)
    return bad


def forget_bad(store: Any, bad: Iterable[BadChunk]) -> dict[str, list[str]]:
    """Clear what makes bad chunks look finished, so that rerunning their stage rewrites them.

    A bad chunk inside a region clears that region's completion record; a bad chunk of
    template data (coordinates, arrays not split in regions) invalidates the group's
    template, so the stage rewrites the whole group.  Returns group → what was cleared.
    """
    cleared: dict[str, list[str]] = {}
    for b in bad:
        regions = {r.label: r for r in store.regions(b.group)}
        if b.region:
            progress = store._progress_array(b.group, mode="r+")
            for label in b.region.split(","):
                progress[regions[label].index] = 0
                cleared.setdefault(b.group, []).append(label)
        else:
            g = store.group(b.group, mode="a")
            g.attrs["fmri2img_template"] = "invalidated-by-verify"
            store._reset_progress(b.group, len(regions))
            cleared.setdefault(b.group, []).append("the whole group (template data)")
    return {k: sorted(set(v)) for k, v in cleared.items()}
