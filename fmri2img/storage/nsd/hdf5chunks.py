"""Chunk addresses of a chunked HDF5 dataset, found by walking its B-tree by byte range.

NSD's ``betas_sessionNN.hdf5`` stores ``betas`` as int16 of MATLAB size X×Y×Z×750 with chunk
size [1 1 1 750], uncompressed (NSD data manual, "Functional data (NSD)"): in h5py order a
(750, Z, Y, X) dataset whose every chunk is one voxel's 750 trials (1,500 bytes). A masked
read then needs only the chunks of the masked voxels, about 2 % of the file for nsdgeneral.

h5py finds a chunk by walking the dataset's chunk B-tree one node at a time, each node a
separate small read: thousands of sequential round trips on an object store. This module
walks the same B-tree itself, one level at a time: every node a level needs is fetched in
one concurrent batch of range requests (``fs.cat_ranges``), so a session costs as many round
trips as the tree has levels (four for NSD) plus one batch for the chunks themselves, and
the bytes fetched are the masked chunks plus the B-tree nodes on their paths.

What is parsed here (HDF5 File Format Specification 3.0, "III.A.1 Version 1 B-trees", node
type 1): the chunk B-tree of data layout messages version 1-3, which MATLAB's
``h5create``/``h5write`` and h5py write by default (also in files with a version 2/3 superblock,
e.g. ``libver="v108"``). Superblock and object headers are read by :mod:`.hdf5meta`; the newer
chunk indexes (layout message version 4) by :mod:`.hdf5index`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

import h5py
import numpy as np

from fmri2img.storage.nsd import hdf5meta

_NODE_HEADER = 24  # "TREE", type, level, entries used, left and right sibling addresses


class ChunkIndexError(ValueError):
    """The B-tree does not hold what the dataset's header says (a damaged or truncated file)."""


@dataclass(frozen=True)
class ChunkIndex:
    """Where to find the chunk B-tree of one chunked, unfiltered dataset.

    Attributes
    ----------
    root : int
        Byte address of the B-tree's root node.
    shape, chunks : tuple of int
        Dataset and chunk shape (h5py order).
    itemsize : int
        Bytes per element.
    k : int
        The file's "indexed storage internal node K": a node holds up to ``2k`` children.
    filtered : bool
        The dataset has a filter pipeline: chunks have their own sizes and filter masks.
    """

    root: int
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    itemsize: int
    k: int = 32
    filtered: bool = False

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunks along each dimension."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))

    @property
    def chunk_bytes(self) -> int:
        return int(np.prod(self.chunks)) * self.itemsize

    @property
    def node_bytes(self) -> int:
        """Size of one B-tree node as allocated (2k entries, 2k + 1 keys)."""
        key = 8 + 8 * (len(self.shape) + 1)
        return _NODE_HEADER + (2 * self.k + 1) * key + 2 * self.k * 8


def _u16(b: bytes, at: int) -> int:
    return struct.unpack_from("<H", b, at)[0]


def chunk_index(f: Any, ds: h5py.Dataset) -> ChunkIndex | None:
    """Find the version 1 B-tree of ``ds`` from the file's superblock and the dataset's object header.

    Parameters
    ----------
    f : file object
        The open file ``ds`` was read from (seek/read; a read-ahead cache serves the header).
    ds : h5py.Dataset

    Returns
    -------
    ChunkIndex or None
        None when the dataset is not chunked, is filtered, or keeps its chunks in another index
        (:mod:`.hdf5index` plans those).
    """
    if ds.chunks is None or ds.id.get_create_plist().get_nfilters() or ds.dtype.hasobject:
        return None

    def read(address: int, nbytes: int) -> bytes:
        f.seek(address)
        return f.read(nbytes)

    addr = _header_address(ds)
    if addr is None:
        return None
    try:
        sb = hdf5meta.read_superblock(read)
        layout = hdf5meta.read_layout(read, addr)
    except hdf5meta.HDF5LayoutError:
        return None
    if layout.cls != 2 or layout.index != 0 or layout.address < 0 or tuple(layout.chunks) != tuple(ds.chunks) \
            or layout.itemsize != ds.dtype.itemsize:
        return None
    return ChunkIndex(root=layout.address, shape=tuple(int(s) for s in ds.shape),
                      chunks=tuple(int(c) for c in ds.chunks), itemsize=int(ds.dtype.itemsize), k=sb.btree_k)


def _header_address(ds: h5py.Dataset) -> int | None:
    """Object header address from the parent group's link (``H5Oget_info`` would walk the whole B-tree)."""
    try:
        info = ds.file.id.links.get_info(ds.name.encode())
    except (KeyError, ValueError, RuntimeError, AttributeError):
        return None
    if info.type != h5py.h5l.TYPE_HARD:
        return None
    return int(info.u)


def _node_dtype(rank: int) -> np.dtype:
    return np.dtype([("size", "<u4"), ("mask", "<u4"), ("offset", "<u8", (rank + 1,)), ("child", "<u8")])


def _linear(index: ChunkIndex, offsets: np.ndarray) -> np.ndarray:
    """Linear chunk number (C order over the chunk grid) of element offsets (n, rank)."""
    coords = offsets[:, :len(index.shape)] // np.asarray(index.chunks, np.uint64)
    return np.ravel_multi_index(tuple(coords.T.astype(np.int64)), index.grid)


def locate_chunks(index: ChunkIndex, wanted: np.ndarray, fetch: Callable[[list[int], int], list[bytes]],
                  nodes: dict[int, tuple[int, bytes]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Addresses and stored sizes of the chunks of an unfiltered dataset (see :func:`walk`)."""
    address, size, mask = walk(index, wanted, fetch, nodes)
    if np.any(mask):
        raise ChunkIndexError("chunks of an unfiltered dataset skip filters")
    return address, size


def walk(index: ChunkIndex, wanted: np.ndarray, fetch: Callable[[list[int], int], list[bytes]],
         nodes: dict[int, tuple[int, bytes]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Addresses, stored sizes and filter masks of chunks, by a level-by-level walk of the B-tree.

    Parameters
    ----------
    index : ChunkIndex
    wanted : array of shape (n,), int64
        Linear chunk numbers (C order over :attr:`ChunkIndex.grid`).
    fetch : callable
        ``fetch(addresses, nbytes)`` returns the ``nbytes`` bytes at each address (fewer at
        the end of the file), all fetched in one concurrent batch.
    nodes : dict, optional
        Filled with ``{address: (level, node bytes)}`` of every node walked.

    Returns
    -------
    address, size : arrays of shape (n,), int64
        ``address`` is -1 for a chunk that was never written (HDF5 then reads the fill value).
    mask : array of shape (n,), uint32
        Filters skipped for each chunk (bit i: filter i of the pipeline).
    """
    wanted = np.asarray(wanted, np.int64)
    address = np.full(len(wanted), -1, np.int64)
    size = np.zeros(len(wanted), np.int64)
    mask = np.zeros(len(wanted), np.uint32)
    todo: dict[int, np.ndarray] = {index.root: np.arange(len(wanted))}
    for _ in range(64):  # a B-tree deeper than 64 levels is a cycle in a damaged file
        if not todo:
            return address, size, mask
        level_nodes = list(todo)
        bufs = fetch(level_nodes, index.node_bytes)
        nxt: dict[int, list[np.ndarray]] = {}
        for node, buf in zip(level_nodes, bufs):
            for child, members in _walk_node(index, node, buf, wanted, todo[node], (address, size, mask), nodes):
                nxt.setdefault(child, []).append(members)
        todo = {c: np.concatenate(m) for c, m in nxt.items()}
    raise ChunkIndexError("the chunk B-tree is deeper than 64 levels (a cycle in a damaged file)")


def _walk_node(index: ChunkIndex, node: int, buf: bytes, wanted: np.ndarray, mine: np.ndarray, out: tuple,
               nodes: dict | None) -> list[tuple[int, np.ndarray]]:
    """Resolve ``wanted[mine]`` at one node: fill ``out`` at a leaf, else return (child, members) pairs."""
    dtype = _node_dtype(len(index.shape))
    if len(buf) < _NODE_HEADER or buf[:4] != b"TREE" or buf[4] != 1:
        raise ChunkIndexError(f"no chunk B-tree node at byte {node}")
    level, used = buf[5], _u16(buf, 6)
    if nodes is not None:
        nodes[node] = (int(level), bytes(buf))
    if used == 0:
        return []
    if len(buf) < _NODE_HEADER + used * dtype.itemsize:
        raise ChunkIndexError(f"B-tree node at byte {node} is cut short ({len(buf)} bytes)")
    entries = np.frombuffer(buf, dtype=dtype, count=used, offset=_NODE_HEADER)
    try:
        keys = _linear(index, entries["offset"])
    except ValueError as exc:  # a key outside the dataset's chunk grid
        raise ChunkIndexError(f"B-tree node at byte {node} has a key outside the dataset ({exc})") from exc
    pos = np.searchsorted(keys, wanted[mine], side="right") - 1
    if level == 0:
        hit = (pos >= 0) & (keys[np.maximum(pos, 0)] == wanted[mine])
        address, size, mask = out
        address[mine[hit]] = entries["child"][pos[hit]].astype(np.int64)
        size[mine[hit]] = entries["size"][pos[hit]].astype(np.int64)
        mask[mine[hit]] = entries["mask"][pos[hit]]
        return []
    inside = pos >= 0
    return _group(entries["child"][pos[inside]], mine[inside])


def _group(keys: np.ndarray, members: np.ndarray) -> list[tuple[int, np.ndarray]]:
    if not len(keys):
        return []
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    bounds = list(starts) + [len(order)]
    return [(int(u), members[order[bounds[i]:bounds[i + 1]]]) for i, u in enumerate(uniq)]


def merge_ranges(starts: np.ndarray, length: int | np.ndarray, extra: int,
                 max_block: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge byte ranges into fewer requests, reading at most ``extra`` unwanted bytes.

    The smallest gaps are bridged first: every gap up to the largest threshold whose gaps sum to
    at most ``extra`` bytes is read through, so the request count falls as far as the byte budget
    allows. No merged range exceeds ``max_block`` bytes (unless a single range does).

    Parameters
    ----------
    starts : array of int
        Start offsets (any order; duplicates are read once).
    length : int or array of int
        Bytes of every range, or of each (then aligned with ``starts``).
    extra : int
        Most bytes outside the ranges that may be read in all.
    max_block : int

    Returns
    -------
    merged_starts, merged_ends : arrays of int64
    """
    starts = np.asarray(starts, np.int64)
    lengths = np.broadcast_to(np.asarray(length, np.int64), starts.shape)
    starts, first = np.unique(starts, return_index=True)
    if not len(starts):
        return starts, starts
    ends = np.maximum.accumulate(starts + lengths[first])
    gaps = np.maximum(starts[1:] - ends[:-1], 0)
    order = np.sort(gaps)
    within = np.cumsum(order) <= extra
    threshold = int(order[within][-1]) if within.any() else -1
    bridge = gaps <= threshold
    m_starts, m_ends = [int(starts[0])], [int(ends[0])]
    for i in range(1, len(starts)):
        if bridge[i - 1] and ends[i] - m_starts[-1] <= max_block:
            m_ends[-1] = int(ends[i])
        else:
            m_starts.append(int(starts[i]))
            m_ends.append(int(ends[i]))
    return np.asarray(m_starts, np.int64), np.asarray(m_ends, np.int64)


#: leaves kept as witnesses of a :class:`ChunkMap` besides every internal node
WITNESS_LEAVES = 32


@dataclass(frozen=True)
class ChunkMap:
    """The addresses of some chunks in one file, with the B-tree nodes that located them.

    A file written by the same code with the same shapes (NSD's session files of one subject)
    has the same B-tree at the same addresses. :func:`reuse_map` checks that another file does
    (same size, byte-identical root and internal nodes, and a spread of leaves) before using
    these addresses for it: identical internal nodes put every leaf at the same address with
    the same key range, and uncompressed chunks never move once written.
    """

    index: ChunkIndex
    wanted: np.ndarray
    address: np.ndarray
    size: np.ndarray
    file_size: int
    witnesses: tuple[tuple[int, bytes], ...]


def build_map(index: ChunkIndex, wanted: np.ndarray, fetch: Callable[[list[int], int], list[bytes]],
              file_size: int) -> ChunkMap:
    """Walk the B-tree for ``wanted`` and keep the nodes that prove the result."""
    nodes: dict[int, tuple[int, bytes]] = {}
    address, size = locate_chunks(index, wanted, fetch, nodes)
    inner = sorted(a for a, (level, _) in nodes.items() if level > 0)
    leaves = sorted(a for a, (level, _) in nodes.items() if level == 0)
    pick = sorted({leaves[int(i)] for i in np.linspace(0, len(leaves) - 1, min(WITNESS_LEAVES, len(leaves)))}) \
        if leaves else []
    witnesses = tuple((a, nodes[a][1]) for a in inner + pick)
    return ChunkMap(index, np.asarray(wanted, np.int64), address, size, int(file_size), witnesses)


def reuse_map(ref: ChunkMap, index: ChunkIndex, wanted: np.ndarray, file_size: int,
              fetch: Callable[[list[int], int], list[bytes]]) -> tuple[np.ndarray, np.ndarray] | None:
    """``ref``'s addresses for another file when its B-tree is ``ref``'s, else None (walk it instead).

    One batch of requests: the witness nodes at their recorded addresses, compared byte for byte.
    """
    if ref.index != index or ref.file_size != file_size or not np.array_equal(ref.wanted, wanted):
        return None
    addresses = [a for a, _ in ref.witnesses]
    got = fetch(addresses, index.node_bytes)
    if any(bytes(g[:len(w)]) != w for g, (_, w) in zip(got, ref.witnesses)):
        return None
    return ref.address, ref.size
