"""HDF5 file metadata read by byte range: superblock, object headers, the data layout message.

Facts from the HDF5 File Format Specification, version 3.0 (the ``H5.format`` document), cited
by section below. Only what a masked read of one dataset needs is parsed: where the dataset's
chunks (or its contiguous block) are, and how its chunk index is built. Every structure that
carries a "Checksum" field (the version 2/3 superblock, version 2 object headers and their
continuation blocks, and every chunk index structure of the layout message version 4; Jenkins'
lookup3 hash, as the specification's field descriptions say) is verified; anything unexpected
raises :class:`HDF5LayoutError`, which callers treat as "this file cannot be planned": they read
it whole, once, through h5py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

SIGNATURE = b"\x89HDF\r\n\x1a\n"
UNDEF = 0xFFFF_FFFF_FFFF_FFFF
_LAYOUT_MSG, _CONTINUATION_MSG = 0x0008, 0x0010
#: index types of the data layout message version 4 (III... "Chunked Storage Property Description");
#: 0 stands for the version 1 B-tree of layout messages version 1-3
INDEX_NAMES = {0: "version 1 B-tree", 1: "single chunk", 2: "implicit", 3: "fixed array", 4: "extensible array",
               5: "version 2 B-tree"}

Reader = Callable[[int, int], bytes]  # read(address, nbytes) -> bytes (fewer at the end of the file)


class HDF5LayoutError(ValueError):
    """A structure is not what the specification says (or is one this reader does not plan).

    Callers never show this to users: they fall back to reading the file whole, once.
    """


class HDF5ChecksumError(HDF5LayoutError):
    """A structure fails its checksum: bytes [start, end) as fetched are damaged (on disk or on the way)."""

    def __init__(self, message: str, start: int = -1, end: int = -1) -> None:
        super().__init__(message, start, end)
        self.start, self.end = start, end

    def __str__(self) -> str:
        return str(self.args[0])


# --------------------------------------------------------------------------- checksums


def _rot(x: np.ndarray, k: int) -> np.ndarray:
    return (x << np.uint32(k)) | (x >> np.uint32(32 - k))


def _mix(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a -= c; a ^= _rot(c, 4); c += b  # noqa: E702 (the algorithm's own layout)
    b -= a; b ^= _rot(a, 6); a += c  # noqa: E702
    c -= b; c ^= _rot(b, 8); b += a  # noqa: E702
    a -= c; a ^= _rot(c, 16); c += b  # noqa: E702
    b -= a; b ^= _rot(a, 19); a += c  # noqa: E702
    c -= b; c ^= _rot(b, 4); b += a  # noqa: E702
    return a, b, c


def _final(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    c ^= b; c -= _rot(b, 14)  # noqa: E702
    a ^= c; a -= _rot(c, 11)  # noqa: E702
    b ^= a; b -= _rot(a, 25)  # noqa: E702
    c ^= b; c -= _rot(b, 16)  # noqa: E702
    a ^= c; a -= _rot(c, 4)  # noqa: E702
    b ^= a; b -= _rot(a, 14)  # noqa: E702
    c ^= b; c -= _rot(b, 24)  # noqa: E702
    return c


def lookup3_many(bufs: Sequence[bytes]) -> np.ndarray:
    """Jenkins' lookup3 ``hashlittle`` (initial value 0) of each byte string.

    HDF5 checksums every version 2 structure with it (the specification's "Checksum" fields;
    ``H5_checksum_lookup3`` in the library). All strings are hashed at once, one 12-byte block at
    a time across them, so a batch of index pages or nodes costs about as much as its longest.

    Parameters
    ----------
    bufs : sequence of bytes

    Returns
    -------
    hashes : array of shape (len(bufs),), uint32
    """
    lengths = np.array([len(b) for b in bufs], np.int64)
    blocks = np.maximum(1, -(-lengths // 12))
    padded = np.zeros((len(bufs), int(blocks.max(initial=1)) * 12), np.uint8)
    for i, buf in enumerate(bufs):
        padded[i, :len(buf)] = np.frombuffer(buf, np.uint8)
    words = padded.view("<u4").reshape(len(bufs), -1, 3)
    a = ((0xDEADBEEF + lengths) & 0xFFFFFFFF).astype(np.uint32)
    b, c = a.copy(), a.copy()
    out = c.copy()  # an empty string hashes to the initial value
    for i in range(words.shape[1]):
        a += words[:, i, 0]
        b += words[:, i, 1]
        c += words[:, i, 2]
        last = (blocks - 1 == i) & (lengths > 0)
        if last.any():
            out[last] = _final(a[last], b[last], c[last])
        going = blocks - 1 > i
        if not going.any():
            break
        a[going], b[going], c[going] = _mix(a[going], b[going], c[going])
    return out


def lookup3(data: bytes) -> int:
    """lookup3 of one byte string (see :func:`lookup3_many`)."""
    return int(lookup3_many([data])[0])


def check_sums(bufs: Sequence[bytes], what: str, ats: Sequence[int]) -> None:
    """Raise :class:`HDF5LayoutError` unless each buffer ends in the lookup3 checksum of the rest."""
    if not len(bufs):
        return
    short = [i for i, buf in enumerate(bufs) if len(buf) < 4]
    stored = np.array([struct.unpack_from("<I", buf, len(buf) - 4)[0] if len(buf) >= 4 else 0 for buf in bufs],
                      np.uint32)
    bad = np.flatnonzero(lookup3_many([buf[:-4] for buf in bufs]) != stored).tolist() + short
    if bad:
        at = int(ats[min(bad)])
        raise HDF5ChecksumError(f"the {what} at byte {at} fails its checksum", at, at + len(bufs[min(bad)]))


def check_sum(data: bytes, what: str, at: int) -> None:
    """Raise :class:`HDF5LayoutError` unless the last 4 bytes of ``data`` are lookup3 of the rest."""
    check_sums([data], what, [at])


# --------------------------------------------------------------------------- superblock


@dataclass(frozen=True)
class Superblock:
    """What the superblock says ("III.A Disk Format: Level 0A - Format Signature and Superblock").

    Attributes
    ----------
    version : int
        0-3.
    eof : int
        End-of-file address: a file shorter than this is truncated.
    btree_k : int
        "Indexed storage internal node K" of version 1 chunk B-trees (32 unless stored).
    """

    version: int
    eof: int
    btree_k: int = 32


def read_superblock(read: Reader) -> Superblock:
    """Parse the superblock at byte 0 (8-byte offsets and lengths, base address 0 only).

    Versions 0 and 1 (III.A, "Superblock Version 0/1") hold K values; versions 2 and 3 a
    checksum, and K stays 32 unless a superblock extension (which may hold a "B-tree 'K' Values"
    message) exists, which is refused here.
    """
    sb = read(0, 96)
    if sb[:8] != SIGNATURE or len(sb) < 48:
        raise HDF5LayoutError("no HDF5 signature at byte 0 (a user block or not an HDF5 file)")
    version = sb[8]
    if version in (0, 1):
        if sb[13] != 8 or sb[14] != 8:
            raise HDF5LayoutError("offsets or lengths are not 8 bytes")
        k = struct.unpack_from("<H", sb, 24)[0] if version == 1 else 32
        at = 28 if version == 1 else 24
        base, _, eof = struct.unpack_from("<QQQ", sb, at)
    elif version in (2, 3):
        if sb[9] != 8 or sb[10] != 8:
            raise HDF5LayoutError("offsets or lengths are not 8 bytes")
        check_sum(sb[:48], "superblock", 0)
        base, ext, eof = struct.unpack_from("<QQQ", sb, 12)
        if ext != UNDEF:
            raise HDF5LayoutError("the superblock has an extension (it may change B-tree K values)")
        k = 32
    else:
        raise HDF5LayoutError(f"superblock version {version} is unknown")
    if base != 0:
        raise HDF5LayoutError(f"the base address is {base}, not 0")
    return Superblock(version=version, eof=eof, btree_k=k)


# --------------------------------------------------------------------------- object headers


def header_messages(read: Reader, address: int) -> list[tuple[int, int, bytes]]:
    """(type, flags, data) of every message of the object header at ``address``.

    Version 1 headers ("IV.A.1.a") and version 2 headers ("IV.A.1.b", signature ``OHDR``,
    continuation blocks ``OCHK``), following continuation messages ("IV.A.2.q").
    """
    head = read(address, 4096)
    if head[:4] == b"OHDR":
        return _v2_messages(read, address, head)
    if head[:1] == b"\x01":
        return _v1_messages(read, address, head)
    raise HDF5LayoutError(f"no object header at byte {address}")


def _v1_messages(read: Reader, address: int, head: bytes) -> list[tuple[int, int, bytes]]:
    n_messages, size = struct.unpack_from("<H", head, 2)[0], struct.unpack_from("<I", head, 8)[0]
    blocks, out = [(address + 16, size)], []
    for _ in range(1024):
        if not blocks or len(out) >= n_messages:
            return out
        start, length = blocks.pop(0)
        buf = read(start, length)
        pos = 0
        while pos + 8 <= len(buf) and len(out) < n_messages:
            mtype, msize, mflags = struct.unpack_from("<HHB", buf, pos)
            data = buf[pos + 8:pos + 8 + msize]
            out.append((mtype, mflags, data))
            if mtype == _CONTINUATION_MSG:
                blocks.append(struct.unpack_from("<QQ", data, 0))
            pos += 8 + msize
    raise HDF5LayoutError(f"the object header at byte {address} has more than 1024 continuation blocks")


def _v2_messages(read: Reader, address: int, head: bytes) -> list[tuple[int, int, bytes]]:
    if head[4] != 2:
        raise HDF5LayoutError(f"object header version {head[4]} at byte {address}")
    flags = head[5]
    pos = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
    width = 1 << (flags & 3)
    size = int.from_bytes(head[pos:pos + width], "little")
    pos += width
    chunk = read(address, pos + size + 4)
    check_sum(chunk, "object header", address)
    out: list[tuple[int, int, bytes]] = []
    blocks = _v2_block(chunk, pos, len(chunk) - 4, flags, out)
    for _ in range(1024):
        if not blocks:
            return out
        start, length = blocks.pop(0)
        buf = read(start, length)
        if buf[:4] != b"OCHK":
            raise HDF5LayoutError(f"no object header continuation block at byte {start}")
        check_sum(buf, "object header continuation block", start)
        blocks += _v2_block(buf, 4, len(buf) - 4, flags, out)
    raise HDF5LayoutError(f"the object header at byte {address} has more than 1024 continuation blocks")


def _v2_block(buf: bytes, pos: int, end: int, flags: int, out: list) -> list[tuple[int, int]]:
    """Append the messages of one version 2 header block; return its continuation targets."""
    step = 6 if flags & 0x04 else 4  # creation order field present
    more = []
    while pos + step <= end:
        mtype, msize, mflags = buf[pos], struct.unpack_from("<H", buf, pos + 1)[0], buf[pos + 3]
        data = buf[pos + step:pos + step + msize]
        if len(data) < msize:
            raise HDF5LayoutError("an object header message runs past its block")
        out.append((mtype, mflags, data))
        if mtype == _CONTINUATION_MSG:
            more.append(struct.unpack_from("<QQ", data, 0))
        pos += step + msize
    return more


# --------------------------------------------------------------------------- data layout message


@dataclass(frozen=True)
class Layout:
    """The data layout message of a dataset ("IV.A.2.i The Data Layout Message").

    Attributes
    ----------
    cls : int
        0 compact, 1 contiguous, 2 chunked, 3 virtual.
    address : int
        Contiguous: the data. Chunked: the chunk index (version 1 B-tree, fixed array header,
        extensible array header, version 2 B-tree header), the single chunk, or the implicit
        index's array of chunks. -1: nothing allocated.
    chunks : tuple of int
        Chunk shape in elements (the element-size dimension dropped).
    itemsize : int
        Bytes per element, as the layout message stores it.
    index : int
        0 for the version 1 B-tree (messages version 1-3), else the version 4 index type 1-5.
    flags : int
        Version 4 chunked flags: bit 0 DONT_FILTER_PARTIAL_BOUND_CHUNKS, bit 1
        SINGLE_INDEX_WITH_FILTER.
    params : tuple of int
        The index type's parameters (fixed array: page bits; extensible array: max bits, index
        elements, min pointers, min elements, page bits; version 2 B-tree: node size, split and
        merge percent; single chunk: filtered size and filter mask when filtered).
    """

    cls: int
    address: int
    chunks: tuple[int, ...] = ()
    itemsize: int = 0
    index: int = 0
    flags: int = 0
    params: tuple[int, ...] = field(default=())
    version: int = 3

    @property
    def chunk_bytes(self) -> int:
        return int(np.prod(self.chunks, dtype=np.int64)) * self.itemsize


def read_layout(read: Reader, header: int) -> Layout:
    """The data layout message of the object header at ``header``."""
    for mtype, mflags, data in header_messages(read, header):
        if mtype == _LAYOUT_MSG:
            if mflags & 0x02:
                raise HDF5LayoutError("the data layout message is shared")
            return parse_layout(data)
    raise HDF5LayoutError(f"the object header at byte {header} has no data layout message")


def _addr(value: int) -> int:
    return -1 if value == UNDEF else int(value)


def parse_layout(data: bytes) -> Layout:
    """Decode a data layout message, versions 1-5 (5 is 4 with 8-byte filtered chunk sizes)."""
    if not data:
        raise HDF5LayoutError("an empty data layout message")
    version = data[0]
    try:
        if version in (1, 2):
            return _layout_v1(data)
        if version == 3:
            return _layout_v3(data)
        if version in (4, 5):
            return _layout_v4(data)
    except struct.error as exc:
        raise HDF5LayoutError(f"a data layout message is cut short ({exc})") from exc
    raise HDF5LayoutError(f"data layout message version {version} is unknown")


def _layout_v1(data: bytes) -> Layout:
    ndims, cls = data[1], data[2]
    if cls == 0:
        return Layout(cls=0, address=-1, version=data[0])
    address = struct.unpack_from("<Q", data, 8)[0]
    dims = struct.unpack_from(f"<{ndims}I", data, 16)
    if cls == 1:
        return Layout(cls=1, address=_addr(address), version=data[0])
    item = struct.unpack_from("<I", data, 16 + 4 * ndims)[0]
    return Layout(cls=2, address=_addr(address), chunks=tuple(dims), itemsize=item, version=data[0])


def _layout_v3(data: bytes) -> Layout:
    cls = data[1]
    if cls == 2:
        ndims = data[2]
        address = struct.unpack_from("<Q", data, 3)[0]
        dims = struct.unpack_from(f"<{ndims}I", data, 11)
        return Layout(cls=2, address=_addr(address), chunks=tuple(dims[:-1]), itemsize=dims[-1])
    if cls == 1:
        return Layout(cls=1, address=_addr(struct.unpack_from("<Q", data, 2)[0]))
    return Layout(cls=cls, address=-1)


_INDEX_PARAMS = {1: "", 2: "", 3: "<B", 4: "<BBBBB", 5: "<IBB"}


def _layout_v4(data: bytes) -> Layout:
    cls = data[1]
    if cls == 1:
        return Layout(cls=1, address=_addr(struct.unpack_from("<Q", data, 2)[0]), version=data[0])
    if cls != 2:
        return Layout(cls=cls, address=-1, version=data[0])
    flags, ndims, width = data[2], data[3], data[4]
    pos = 5
    dims = [int.from_bytes(data[pos + i * width:pos + (i + 1) * width], "little") for i in range(ndims)]
    pos += ndims * width
    index = data[pos]
    pos += 1
    if index not in _INDEX_PARAMS:
        raise HDF5LayoutError(f"chunk index type {index} is unknown")
    fmt = _INDEX_PARAMS[index]
    params = struct.unpack_from(fmt, data, pos) if fmt else ()
    pos += struct.calcsize(fmt) if fmt else 0
    if index == 1 and flags & 0x02:  # a filtered single chunk: its size (L) and filter mask
        params = struct.unpack_from("<QI", data, pos)
        pos += 12
    address = struct.unpack_from("<Q", data, pos)[0]
    return Layout(cls=2, address=_addr(address), chunks=tuple(dims[:-1]), itemsize=dims[-1], index=index,
                  flags=flags, params=tuple(int(p) for p in params), version=data[0])
