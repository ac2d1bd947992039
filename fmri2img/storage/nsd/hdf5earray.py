"""The extensible array chunk index of HDF5 (datasets with one unlimited dimension), walked by range.

HDF5 File Format Specification 3.0, "VII.D The Extensible Array Index": a header (``EAHD``)
points to an index block (``EAIB``) that holds the first few elements and data block addresses
directly, then the addresses of secondary blocks (``EASB``), each listing data blocks (``EADB``)
of one "super block" size class; data blocks larger than a page are paged, pages following the
block's prefix, and the secondary block keeps a bitmap of the pages initialized. The sizes of the
classes are not in the specification's tables; they are the library's (``H5EA__hdr_init``):
super block ``s`` has ``2**(s // 2)`` data blocks of ``2**((s + 1) // 2) × min elements`` each.

Four batches of range requests at most: the header, the index block, the secondary blocks the
wanted chunks need, and their data blocks or pages. Every structure's checksum is verified.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fmri2img.storage.nsd.hdf5index import O, Fetch, Locations, Space, bits, entries, one, short, signed
from fmri2img.storage.nsd.hdf5meta import UNDEF, HDF5LayoutError, Layout, check_sum, check_sums

_BLOCK = 6 + O  # signature, version, client ID, header address: how every array block starts


@dataclass(frozen=True)
class Geometry:
    """Element counts of an extensible array, from its header.

    Attributes
    ----------
    idx_elmts : int
        Elements stored in the index block itself.
    min_elmts, min_ptrs : int
        Elements of the smallest data block; data block pointers of the smallest secondary block.
    page_n : int
        Elements per data block page.
    esize, off_size : int
        Bytes per element; bytes of a block's "block offset" field.
    ndblks, dblk_nelmts, start_idx, start_dblk : arrays, one value per super block
        Its data blocks, their elements, its first element and first data block number.
    iblock_sblks : int
        Super blocks whose data block addresses the index block lists.
    """

    idx_elmts: int
    min_elmts: int
    min_ptrs: int
    page_n: int
    esize: int
    off_size: int
    ndblks: np.ndarray
    dblk_nelmts: np.ndarray
    start_idx: np.ndarray
    start_dblk: np.ndarray
    iblock_sblks: int

    @classmethod
    def from_header(cls, hdr: bytes) -> "Geometry":
        esize, max_bits, idx_elmts, min_elmts, min_ptrs, page_bits = hdr[6], hdr[7], hdr[8], hdr[9], hdr[10], hdr[11]
        if not min_elmts or not min_ptrs or min_elmts & (min_elmts - 1) or min_ptrs & (min_ptrs - 1):
            raise HDF5LayoutError("extensible array block sizes that are not powers of two")
        nsblks = 1 + max_bits - (min_elmts.bit_length() - 1)
        u = np.arange(nsblks)
        ndblks = 2 ** (u // 2)
        nelmts = 2 ** ((u + 1) // 2) * min_elmts
        start_idx = np.concatenate([[0], np.cumsum(ndblks * nelmts)[:-1]]).astype(np.int64)
        start_dblk = np.concatenate([[0], np.cumsum(ndblks)[:-1]]).astype(np.int64)
        return cls(idx_elmts, min_elmts, min_ptrs, 1 << page_bits, esize, (max_bits + 7) // 8, ndblks, nelmts,
                   start_idx, start_dblk, 2 * (min_ptrs.bit_length() - 1))

    @property
    def iblock_dblks(self) -> int:
        """Data block addresses in the index block."""
        return 2 * (self.min_ptrs - 1)

    @property
    def iblock_size(self) -> int:
        n_sblks = len(self.ndblks) - self.iblock_sblks
        return _BLOCK + self.idx_elmts * self.esize + (self.iblock_dblks + n_sblks) * O + 4

    def super_block(self, j: np.ndarray) -> np.ndarray:
        """Super block of each element number ``j`` counted past the index block's own elements."""
        x = (np.asarray(j, np.int64) // self.min_elmts + 1).astype(np.uint64)
        s = np.floor(np.log2(x.astype(np.float64))).astype(np.int64)
        s -= (np.uint64(1) << s.astype(np.uint64)) > x  # correct a rounding up near powers of two
        s += (np.uint64(1) << (s + 1).astype(np.uint64)) <= x
        return s

    def sblock_bitmap(self, s: int) -> int:
        """Bytes of a secondary block's page bitmap: whole bytes per data block, bits packed across them."""
        nel = int(self.dblk_nelmts[s])
        return int(self.ndblks[s]) * ((nel // self.page_n + 7) // 8) if nel > self.page_n else 0

    def sblock_size(self, s: int) -> int:
        return _BLOCK + self.off_size + self.sblock_bitmap(s) + int(self.ndblks[s]) * O + 4


def swizzled_index(space: Space, scaled: np.ndarray) -> np.ndarray:
    """Element number of each chunk: C order with the unlimited dimension moved first.

    The library's "swizzled" coordinates (``H5VM_swizzle_coords``); the other dimensions count
    chunks of their maximum extent.
    """
    unlimited = [i for i, m in enumerate(space.maxshape) if m is None]
    if len(unlimited) != 1:
        raise HDF5LayoutError("an extensible array index needs exactly one unlimited dimension")
    u = unlimited[0]
    order = [u] + [i for i in range(len(space.shape)) if i != u]
    fixed = [-(-int(space.maxshape[i]) // space.chunks[i]) for i in order[1:]]  # type: ignore[arg-type]
    down = np.cumprod([1] + fixed[::-1])[::-1].astype(np.int64)
    return (scaled[:, order] * down).sum(axis=1)


def extensible_array(fetch: Fetch, layout: Layout, space: Space, scaled: np.ndarray, filtered: bool) -> Locations:
    """Locations of the chunks at ``scaled`` from the extensible array at ``layout.address``."""
    hdr = one(fetch, layout.address, 72)
    signed(hdr, b"EAHD", layout.address)
    check_sum(hdr, "extensible array header", layout.address)
    if hdr[5] != int(filtered):
        raise HDF5LayoutError(f"the extensible array at byte {layout.address} does not match its dataset")
    geo = Geometry.from_header(hdr)
    iblock = struct.unpack_from("<Q", hdr, 60)[0]
    idx = swizzled_index(space, scaled)
    out = Locations.empty(len(idx))
    if iblock == UNDEF:
        return out
    raw = one(fetch, iblock, geo.iblock_size)
    signed(raw, b"EAIB", iblock)
    check_sum(raw, "extensible array index block", iblock)
    direct = np.frombuffer(raw, np.uint8, geo.idx_elmts * geo.esize, _BLOCK).reshape(-1, geo.esize)
    pos = _BLOCK + geo.idx_elmts * geo.esize
    dblk_addrs = np.frombuffer(raw, "<u8", geo.iblock_dblks, pos)
    sblk_addrs = np.frombuffer(raw, "<u8", len(geo.ndblks) - geo.iblock_sblks, pos + geo.iblock_dblks * O)
    here = np.flatnonzero(idx < geo.idx_elmts)
    out.put(here, entries(direct[idx[here]], geo.esize, filtered, layout.chunk_bytes))
    rest = np.flatnonzero(idx >= geo.idx_elmts)
    j = idx[rest] - geo.idx_elmts
    sblk = geo.super_block(j)
    if len(sblk) and sblk.max() >= len(geo.ndblks):
        raise HDF5LayoutError(f"a chunk past the extensible array at byte {layout.address}")
    blocks = _data_blocks(fetch, geo, sblk, j - geo.start_idx[sblk], dblk_addrs, sblk_addrs)
    _elements(fetch, geo, blocks, rest, filtered, layout.chunk_bytes, out)
    return out


def _data_blocks(fetch: Fetch, geo: Geometry, sblk: np.ndarray, elmt: np.ndarray, dblk_addrs: np.ndarray,
                 sblk_addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data block address, element within it, its element count, page initialized) per element.

    Data blocks of the first super blocks are listed in the index block; the others in
    secondary blocks, fetched in one batch, which also hold the page bitmaps of paged blocks.
    """
    nel = geo.dblk_nelmts[sblk]
    dblk = np.full(len(sblk), UNDEF, np.uint64)
    init = np.ones(len(sblk), bool)
    inside = sblk < geo.iblock_sblks
    if np.any(inside & (nel > geo.page_n)):
        raise HDF5LayoutError("a paged data block listed in an extensible array's index block")
    dblk[inside] = dblk_addrs[geo.start_dblk[sblk[inside]] + elmt[inside] // nel[inside]]
    outer = np.flatnonzero(~inside)
    needed = np.unique(sblk[outer])
    addrs = sblk_addrs[needed - geo.iblock_sblks]
    needed, addrs = needed[addrs != np.uint64(UNDEF)], addrs[addrs != np.uint64(UNDEF)]
    sizes = [geo.sblock_size(int(s)) for s in needed]
    got = fetch([(int(a), int(a) + n) for a, n in zip(addrs, sizes)])
    for buf, a, n in zip(got, addrs, sizes):
        if len(buf) < n:
            short(int(a))
        signed(buf, b"EASB", int(a))
    check_sums([buf[:n] for buf, n in zip(got, sizes)], "extensible array secondary block", addrs)
    for buf, s in zip(got, needed):
        s = int(s)
        mine = outer[sblk[outer] == s]
        which = elmt[mine] // geo.dblk_nelmts[s]
        at, bitmap = _BLOCK + geo.off_size, geo.sblock_bitmap(s)
        dblk[mine] = np.frombuffer(buf, "<u8", int(geo.ndblks[s]), at + bitmap)[which]
        if bitmap:
            npages = int(geo.dblk_nelmts[s]) // geo.page_n
            init[mine] = bits(buf[at:at + bitmap], which * npages + (elmt[mine] % geo.dblk_nelmts[s]) // geo.page_n)
    return dblk, elmt % nel, nel, init


def _elements(fetch: Fetch, geo: Geometry, blocks: tuple, rest: np.ndarray, filtered: bool, chunk_bytes: int,
              out: Locations) -> None:
    """Fetch the data blocks (or their pages) holding the elements, one batch, and decode them.

    A unit is a whole data block (``EADB``: prefix, elements, checksum) or one page of a paged
    data block (elements, checksum; the pages follow the block's prefix).
    """
    dblk, within, nel, init = blocks
    live = (dblk != np.uint64(UNDEF)) & init
    paged = nel > geo.page_n
    prefix = _BLOCK + geo.off_size + 4
    page = np.where(paged, within // geo.page_n, 0)
    start = dblk.astype(np.int64) + np.where(paged, prefix + page * (geo.page_n * geo.esize + 4), 0)
    count = np.where(paged, geo.page_n, nel)
    rows = np.unique(np.stack([start[live], count[live], paged[live].astype(np.int64)], axis=1), axis=0)
    units = [(int(s), int(c), bool(p)) for s, c, p in rows]
    nbytes = [c * geo.esize + (4 if p else prefix) for _, c, p in units]
    got = fetch([(s, s + n) for (s, _, _), n in zip(units, nbytes)])
    for (s, _, p), buf, n in zip(units, got, nbytes):
        if len(buf) < n:
            short(s)
        if not p:
            signed(buf, b"EADB", s)
    check_sums([buf[:n] for buf, n in zip(got, nbytes)], "extensible array data block", [u[0] for u in units])
    order = np.argsort(start[live], kind="stable")
    members = np.flatnonzero(live)[order]
    bounds = np.searchsorted(start[members], [u[0] for u in units] + [np.iinfo(np.int64).max])
    for k, ((s, c, p), buf) in enumerate(zip(units, got)):
        mine = members[bounds[k]:bounds[k + 1]]
        table = np.frombuffer(buf, np.uint8, c * geo.esize, 0 if p else prefix - 4).reshape(c, geo.esize)
        out.put(rest[mine], entries(table[within[mine] % c], geo.esize, filtered, chunk_bytes))
