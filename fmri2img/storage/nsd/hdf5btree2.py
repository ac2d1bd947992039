"""The version 2 B-tree chunk index of HDF5 (datasets with several unlimited dimensions), walked by range.

HDF5 File Format Specification 3.0, "III.A.2 Disk Format: Level 1A2 - Version 2 B-trees" and
"VII.E The Version 2 B-trees Index": a header (``BTHD``) gives the root, its record count and the
tree's depth; internal nodes (``BTIN``) hold records and one more child pointer than records,
leaves (``BTLF``) records only, each node ending in a checksum. Chunk records (types 10 and 11)
hold the chunk's address, (filtered) its size and filter mask, then its scaled coordinates;
records are ordered by those coordinates, dimension 0 first, and sit in internal nodes as well.

The tree is walked one level per batch of range requests, all the wanted chunks together.
"""

from __future__ import annotations

import struct

import numpy as np

from fmri2img.storage.nsd.hdf5index import O, Fetch, Locations, Space, entries, one, short, signed
from fmri2img.storage.nsd.hdf5meta import UNDEF, HDF5LayoutError, Layout, check_sum, check_sums

_PREFIX = 10  # signature, version, type, checksum: every node's fixed overhead


def btree2(fetch: Fetch, layout: Layout, space: Space, scaled: np.ndarray, filtered: bool) -> Locations:
    """Locations of the chunks at ``scaled`` from the version 2 B-tree at ``layout.address``."""
    hdr = one(fetch, layout.address, 38)
    signed(hdr, b"BTHD", layout.address)
    check_sum(hdr, "version 2 B-tree header", layout.address)
    btype = hdr[5]
    node_size, rec_size, depth = struct.unpack_from("<IHH", hdr, 6)
    root, root_n = struct.unpack_from("<QH", hdr, 16)
    rank = len(space.shape)
    entry = rec_size - 8 * rank
    if btype != (11 if filtered else 10) or entry < O or (not filtered and entry != O):
        raise HDF5LayoutError(f"the version 2 B-tree at byte {layout.address} does not match its dataset")
    out = Locations.empty(len(scaled))
    if root == UNDEF or not len(scaled):
        return out
    widths = pointer_widths(node_size, rec_size, depth)
    keys = _keys(scaled)
    todo = {int(root): (int(depth), int(root_n), np.arange(len(scaled)))}
    for _ in range(depth + 1):
        if not todo:
            break
        nodes = list(todo)
        bufs = fetch([(a, a + node_size) for a in nodes])
        used = [_used(todo[a][0], todo[a][1], rec_size, widths) for a in nodes]
        for a, buf, n in zip(nodes, bufs, used):
            signed(buf, b"BTLF" if todo[a][0] == 0 else b"BTIN", a)
            if len(buf) < n + 4:
                short(a)
        check_sums([buf[:n + 4] for buf, n in zip(bufs, used)], "version 2 B-tree node", nodes)
        nxt: dict[int, tuple[int, int, np.ndarray]] = {}
        for a, buf in zip(nodes, bufs):
            level, nrec, mine = todo[a]
            for child, (count, members) in _node(buf, a, level, nrec, rec_size, rank, widths, filtered,
                                                 layout.chunk_bytes, keys, mine, out).items():
                nxt[child] = (level - 1, count, members)
        todo = nxt
    if todo:
        raise HDF5LayoutError(f"the version 2 B-tree at byte {layout.address} is deeper than its header says")
    return out


def pointer_widths(node_size: int, rec_size: int, depth: int) -> list[tuple[int, int]]:
    """Per depth d ≥ 1: bytes of a child pointer's record count and (d > 1) total record count.

    A leaf holds ``(node size - 10) // record size`` records; a node at depth d holds one
    pointer more than records, each pointer an address, the child's record count in as few
    bytes as the child's maximum needs, and above depth 1 the child subtree's total count
    likewise (III.A.2, "Number of Records in Child Node", "Total Number of Records in Child Node").
    """
    def enc(n: int) -> int:
        return max(1, (int(n).bit_length() - 1) // 8 + 1)

    max_n = [(node_size - _PREFIX) // rec_size]
    total = [max_n[0]]
    widths = [(0, 0)]
    for d in range(1, depth + 1):
        w = (enc(max_n[d - 1]), enc(total[d - 1]) if d > 1 else 0)
        ptr = O + w[0] + w[1]
        max_n.append((node_size - _PREFIX - ptr) // (rec_size + ptr))
        total.append((max_n[d] + 1) * total[d - 1] + max_n[d])
        widths.append(w)
    return widths


def _used(level: int, nrec: int, rec_size: int, widths: list[tuple[int, int]]) -> int:
    """Bytes of a node before its checksum."""
    ptr = O + sum(widths[level]) if level else 0
    return 6 + nrec * rec_size + ((nrec + 1) * ptr if level else 0)


def _keys(scaled: np.ndarray) -> np.ndarray:
    """Scaled coordinates as byte strings that sort like the coordinates (dimension 0 first)."""
    big_endian = np.ascontiguousarray(np.asarray(scaled, np.int64).astype(">u8"))
    return big_endian.view(f"S{8 * big_endian.shape[1]}").ravel()


def _node(buf: bytes, at: int, level: int, nrec: int, rec_size: int, rank: int, widths: list, filtered: bool,
          chunk_bytes: int, keys: np.ndarray, mine: np.ndarray, out: Locations) -> dict:
    """Resolve the keys ``keys[mine]`` at one node; return {child address: (record count, members)}."""
    records = np.frombuffer(buf, np.uint8, nrec * rec_size, 6).reshape(nrec, rec_size)
    coords = records[:, rec_size - 8 * rank:].copy().view("<u8").reshape(nrec, rank)
    rec_keys = _keys(coords.astype(np.int64))
    if np.any(rec_keys[1:] <= rec_keys[:-1]):
        raise HDF5LayoutError(f"the records of the version 2 B-tree node at byte {at} are out of order")
    pos = np.searchsorted(rec_keys, keys[mine])
    hit = (pos < nrec) & (rec_keys[np.minimum(pos, nrec - 1)] == keys[mine]) if nrec else np.zeros(len(mine), bool)
    entry = rec_size - 8 * rank
    out.put(mine[hit], entries(records[pos[hit]][:, :entry], entry, filtered, chunk_bytes))
    if not level:
        return {}
    w_n, _ = widths[level]
    ptr = O + sum(widths[level])
    base = 6 + nrec * rec_size
    children = {}
    for child in np.unique(pos[~hit]):
        p = base + int(child) * ptr
        address = struct.unpack_from("<Q", buf, p)[0]
        count = int.from_bytes(buf[p + O:p + O + w_n], "little")
        children[int(address)] = (count, mine[~hit][pos[~hit] == child])
    return children
