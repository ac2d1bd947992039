"""Chunk addresses from HDF5's chunk indexes: the shared pieces, single chunk, implicit, fixed array.

Files written with ``h5py.File(..., libver="latest")`` (or HDF5 ≥ 1.10 with the latest format)
keep a dataset's chunks in one of five indexes chosen by its shape ("VII. Appendix C: Types of
Indexes for Dataset Chunks" of the HDF5 File Format Specification 3.0):

* single chunk (VII.A): the layout message holds the chunk's address;
* implicit (VII.B): fixed size, no filters, early allocation: chunks are one array in C order;
* fixed array (VII.C, ``FAHD``/``FADB``): fixed maximum size: one array of chunk entries, paged;
* extensible array (VII.D): one unlimited dimension (:mod:`.hdf5earray`);
* version 2 B-tree (VII.E): several unlimited dimensions (:mod:`.hdf5btree2`).

Files in the default (earliest) format keep a version 1 B-tree (:mod:`.hdf5chunks`). Each walker
reads one level of its structure for all wanted chunks in one batch of concurrent range requests,
verifies every checksum, and returns each chunk's address, stored size and filter mask. Anything
unexpected raises :class:`~.hdf5meta.HDF5LayoutError`: the caller then reads the file whole, once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fmri2img.storage.nsd import hdf5chunks
from fmri2img.storage.nsd.hdf5meta import UNDEF, HDF5LayoutError, Layout, check_sum, check_sums

Fetch = Callable[[list[tuple[int, int]]], list[bytes]]  # [(start, end), ...] -> bytes of each, one batch
O = 8  # size of offsets and lengths (the only size planned)


@dataclass(frozen=True)
class Space:
    """A chunked dataset's extent: current shape, maximum shape (None: unlimited), chunk shape."""

    shape: tuple[int, ...]
    maxshape: tuple[int | None, ...]
    chunks: tuple[int, ...]

    def grid(self, dims: tuple[int, ...]) -> tuple[int, ...]:
        """Chunks along each dimension of an extent ``dims``."""
        return tuple(-(-int(s) // c) for s, c in zip(dims, self.chunks))

    @property
    def max_grid(self) -> tuple[int, ...]:
        if any(m is None for m in self.maxshape):
            raise HDF5LayoutError("an unlimited dimension has no chunk grid")
        return self.grid(self.maxshape)  # type: ignore[arg-type]


@dataclass
class Locations:
    """Where each wanted chunk is: address (-1 never written), stored bytes, filter mask."""

    address: np.ndarray
    size: np.ndarray
    mask: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "Locations":
        return cls(np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, np.uint32))

    def put(self, where: np.ndarray, other: "Locations") -> None:
        self.address[where], self.size[where], self.mask[where] = other.address, other.size, other.mask


def one(fetch: Fetch, start: int, nbytes: int) -> bytes:
    """``nbytes`` bytes at ``start`` (a structure running past the end of the file is a surprise)."""
    got = fetch([(start, start + nbytes)])[0]
    if len(got) < nbytes:
        short(start)
    return got


def short(at: int) -> None:
    raise HDF5LayoutError(f"a chunk index structure at byte {at} runs past the end of the file")


def signed(buf: bytes, signature: bytes, at: int, version: int = 0) -> None:
    """Check a structure's signature and version (0 for every chunk index structure)."""
    if buf[:4] != signature or len(buf) < 5 or buf[4] != version:
        raise HDF5LayoutError(f"no {signature.decode()} (version {version}) at byte {at}")


def entries(raw: np.ndarray, esize: int, filtered: bool, chunk_bytes: int) -> Locations:
    """Decode chunk entries (rows of ``esize`` bytes): address, then (filtered) size and filter mask.

    The element formats of VII.C/VII.D ("Data Block Element for (Non-)filtered Dataset Chunk")
    and the version 2 B-tree records of types 10 and 11 (III.A.2) start alike; the size field's
    width is what the entry size leaves (8 bytes in layout message version 5, fewer in 4).
    """
    raw = np.ascontiguousarray(raw, np.uint8).reshape(-1, esize)
    address = raw[:, :O].copy().view("<u8").ravel()
    n = len(address)
    if filtered:
        width = esize - O - 4
        if not 1 <= width <= 8:
            raise HDF5LayoutError(f"filtered chunk entries of {esize} bytes")
        sizes = np.zeros((n, 8), np.uint8)
        sizes[:, :width] = raw[:, O:O + width]
        size = sizes.view("<u8").ravel().astype(np.int64)
        mask = raw[:, O + width:O + width + 4].copy().view("<u4").ravel()
    else:
        size, mask = np.full(n, chunk_bytes, np.int64), np.zeros(n, np.uint32)
    undefined = address == np.uint64(UNDEF)
    return Locations(np.where(undefined, -1, address.astype(np.int64)), np.where(undefined, 0, size), mask)


def bits(bitmap: bytes, positions: np.ndarray) -> np.ndarray:
    """Bits of an HDF5 page bitmap (most significant bit first within each byte)."""
    b = np.frombuffer(bitmap, np.uint8)
    positions = np.asarray(positions, np.int64)
    if len(positions) and positions.max() // 8 >= len(b):
        raise HDF5LayoutError("a page bitmap is shorter than its pages")
    return (b[positions // 8] >> (7 - positions % 8)) & 1 == 1


# --------------------------------------------------------------------------- single chunk, implicit


def single_chunk(fetch: Fetch, layout: Layout, space: Space, scaled: np.ndarray, filtered: bool) -> Locations:
    """VII.A: one chunk; its address (and, filtered, its size and mask) sit in the layout message."""
    n = len(scaled)
    size, mask = (layout.params[0], layout.params[1]) if layout.flags & 0x02 else (layout.chunk_bytes, 0)
    if filtered != bool(layout.flags & 0x02) or np.any(scaled != 0):
        raise HDF5LayoutError("a single-chunk index that does not match its dataset")
    return Locations(np.full(n, layout.address, np.int64), np.full(n, size, np.int64), np.full(n, mask, np.uint32))


def implicit(fetch: Fetch, layout: Layout, space: Space, scaled: np.ndarray, filtered: bool) -> Locations:
    """VII.B: chunk i (C order over the maximum chunk grid) at ``address + i × chunk bytes``."""
    if filtered:
        raise HDF5LayoutError("an implicit index with filters")
    idx = np.ravel_multi_index(tuple(scaled.T), space.max_grid)
    n = len(scaled)
    return Locations(layout.address + idx.astype(np.int64) * layout.chunk_bytes,
                     np.full(n, layout.chunk_bytes, np.int64), np.zeros(n, np.uint32))


# --------------------------------------------------------------------------- fixed array


def fixed_array(fetch: Fetch, layout: Layout, space: Space, scaled: np.ndarray, filtered: bool) -> Locations:
    """VII.C: header ``FAHD`` → data block ``FADB`` (paged: a bitmap of initialized pages).

    Two batches: the header, then the data block's prefix with every page the chunks need.
    Entry i is the chunk numbered i in C order over the maximum chunk grid.
    """
    hdr = one(fetch, layout.address, 28)
    signed(hdr, b"FAHD", layout.address)
    check_sum(hdr, "fixed array header", layout.address)
    client, esize, page_bits = hdr[5], hdr[6], hdr[7]
    nelmts, dblk = struct.unpack_from("<QQ", hdr, 8)
    grid = space.max_grid
    if client != int(filtered) or nelmts != int(np.prod(grid, dtype=np.int64)):
        raise HDF5LayoutError(f"the fixed array at byte {layout.address} does not match its dataset")
    idx = np.ravel_multi_index(tuple(scaled.T), grid).astype(np.int64)
    if dblk == UNDEF:
        return Locations.empty(len(idx))
    page_n = 1 << page_bits
    if nelmts <= page_n:  # one block of entries, no pages
        raw = one(fetch, dblk, 18 + nelmts * esize)
        signed(raw, b"FADB", dblk)
        check_sum(raw, "fixed array data block", dblk)
        table = np.frombuffer(raw, np.uint8, nelmts * esize, 14).reshape(nelmts, esize)
        return entries(table[idx], esize, filtered, layout.chunk_bytes)
    return _fixed_array_pages(fetch, layout, dblk, int(nelmts), esize, page_n, idx, filtered)


def _fixed_array_pages(fetch: Fetch, layout: Layout, dblk: int, nelmts: int, esize: int, page_n: int,
                       idx: np.ndarray, filtered: bool) -> Locations:
    """Entries from a paged data block: pages of ``page_n`` entries and a checksum follow its prefix."""
    npages = -(-nelmts // page_n)
    prefix = 18 + (npages + 7) // 8  # signature .. header address, page bitmap, checksum
    pages = np.unique(idx // page_n)
    starts = dblk + prefix + pages * (page_n * esize + 4)
    counts = np.minimum(page_n, nelmts - pages * page_n)
    got = fetch([(dblk, dblk + prefix)] + [(int(s), int(s) + int(c) * esize + 4) for s, c in zip(starts, counts)])
    head = got[0]
    signed(head, b"FADB", dblk)
    check_sum(head, "fixed array data block", dblk)
    init = bits(head[14:prefix - 4], pages)
    live = np.flatnonzero(init)
    for i in live:
        if len(got[1 + i]) < int(counts[i]) * esize + 4:
            short(int(starts[i]))
    check_sums([got[1 + i] for i in live], "fixed array data block page", starts[live])
    out = Locations.empty(len(idx))
    for i in live:
        mine = np.flatnonzero(idx // page_n == pages[i])
        table = np.frombuffer(got[1 + i], np.uint8, int(counts[i]) * esize).reshape(-1, esize)
        out.put(mine, entries(table[idx[mine] % page_n], esize, filtered, layout.chunk_bytes))
    return out


# --------------------------------------------------------------------------- version 1 B-tree


def btree1(fetch: Fetch, layout: Layout, space: Space, scaled: np.ndarray, filtered: bool, *,
           btree_k: int = 32) -> Locations:
    """Layout messages 1-3: the version 1 B-tree of :mod:`.hdf5chunks` (node type 1, III.A.1)."""
    index = hdf5chunks.ChunkIndex(root=layout.address, shape=tuple(int(s) for s in space.shape),
                                  chunks=tuple(space.chunks), itemsize=layout.itemsize, k=btree_k, filtered=filtered)
    wanted = np.ravel_multi_index(tuple(scaled.T), index.grid)

    def nodes(addresses: list[int], nbytes: int) -> list[bytes]:
        return fetch([(a, a + nbytes) for a in addresses])

    try:
        address, size, mask = hdf5chunks.walk(index, wanted, nodes)
    except hdf5chunks.ChunkIndexError as exc:
        raise HDF5LayoutError(str(exc)) from exc
    if not filtered and np.any(mask):
        raise HDF5LayoutError("chunks of an unfiltered dataset skip filters")
    return Locations(address, size, mask)
