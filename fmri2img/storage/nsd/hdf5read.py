"""Reading chunks of one HDF5 dataset over fsspec: every byte fetched at most once.

:class:`ByteSource` is one remote file seen through batched range requests (``fs.cat_ranges``,
concurrent on object stores) with a memory of what it fetched: metadata is kept and never fetched
twice; bulk data is handed over as it arrives. h5py opens the file through :meth:`ByteSource.file`
(aligned 64 KiB read-ahead blocks), so its header reads are remembered too.

:func:`locate_chunks` plans a chunked dataset from its chunk index (:mod:`.hdf5chunks` for
version 1 B-trees, :mod:`.hdf5index`, :mod:`.hdf5earray`, :mod:`.hdf5btree2` for the rest). When
the layout cannot be planned (a structure this reader does not know, a failed checksum, 4-byte
addresses, a user block ...), :meth:`ByteSource.fetch_all` fetches the rest of the file in one
sequential pass (into memory, or a temporary file above :data:`WHOLE_FILE_MEMORY` bytes) and HDF5
itself finds the chunks, reading from that copy: the file is then read once, never more. The
h5py-over-fsspec reads that this replaces fetched NSD-sized files 16 times over (HDF5's small
random reads through a read-ahead cache that keeps one block).

:func:`read_chunks` fetches chunks by merged byte ranges and decodes them: unfiltered by
reinterpretation, filtered through HDF5's own filter pipeline (an in-memory file with the same
filters receives the raw chunks by ``write_direct_chunk``).
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import tempfile
from typing import Any

import h5py
import numpy as np

from fmri2img.storage.nsd import hdf5chunks, hdf5meta
from fmri2img.storage.nsd.hdf5btree2 import btree2
from fmri2img.storage.nsd.hdf5earray import extensible_array
from fmri2img.storage.nsd.hdf5index import Locations, Space, btree1, fixed_array, implicit, single_chunk
from fmri2img.storage.nsd.hdf5meta import HDF5ChecksumError, HDF5LayoutError

logger = logging.getLogger(__name__)

#: read-ahead block of the file object h5py reads headers through
HEADER_BLOCK = 64 * 2**10
#: a whole-file read (a layout that cannot be planned) stays in memory up to this size, else a temporary file
WHOLE_FILE_MEMORY = 2 * 2**30
_WHOLE_PIECE = 32 * 2**20  # bytes per range request of a whole-file read
_META_GAP = 4 * 2**10  # gaps up to this are read through between metadata ranges of one batch


class ByteSource:
    """One file on an fsspec filesystem, read by batched byte ranges, each byte fetched at most once.

    Parameters
    ----------
    fs : fsspec filesystem
        Anything with ``cat_ranges(paths, starts, ends)``.
    path : str
    size : int
        The file's size in bytes.

    Attributes
    ----------
    fetched, requests : int
        Bytes and range requests fetched so far.
    """

    def __init__(self, fs: Any, path: str, size: int) -> None:
        self.fs, self.path, self.size = fs, path, int(size)
        self._starts: list[int] = []
        self._pieces: list[bytes] = []
        self._spill: Any = None  # the temporary file of a whole-file read too large for memory
        self.fetched = self.requests = 0

    # ---------------------------------------------------------------- what is held
    def _covered(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) not held yet."""
        if self._spill is not None:
            return []
        gaps, pos = [], start
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while pos < end and i < len(self._starts):
            a, b = self._starts[i], self._starts[i] + len(self._pieces[i])
            if b <= pos:
                i += 1
                continue
            if a >= end:
                break
            if a > pos:
                gaps.append((pos, a))
            pos = max(pos, b)
            i += 1
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def _held(self, start: int, end: int) -> bytes:
        if self._spill is not None:
            return os.pread(self._spill.fileno(), end - start, start)
        out, pos = [], start
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while pos < end:
            a = self._starts[i]
            piece = self._pieces[i]
            out.append(piece[pos - a:end - a])
            pos = a + len(piece)
            i += 1
        return b"".join(out) if len(out) != 1 else bytes(out[0])

    def _keep(self, start: int, data: bytes) -> None:
        if data:
            i = bisect.bisect_left(self._starts, start)
            self._starts.insert(i, start)
            self._pieces.insert(i, data)

    # ---------------------------------------------------------------- fetching
    def _get(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """One batch of range requests; a short answer means the file ends early."""
        if not ranges:
            return []
        try:
            got = self.fs.cat_ranges([self.path] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges])
        except (OSError, ValueError) as exc:
            raise HDF5Truncated(f"reading byte ranges failed ({type(exc).__name__}: {exc})") from exc
        for part in got:
            if isinstance(part, Exception):
                raise HDF5Truncated(f"reading byte ranges failed ({type(part).__name__}: {part})")
        self.fetched += sum(len(p) for p in got)
        self.requests += len(got)
        return list(got)

    def fetch(self, ranges: list[tuple[int, int]], *, keep: bool = True, gap: int = _META_GAP) -> list[bytes]:
        """The bytes of each [start, end) range (clipped to the file), missing parts fetched in one batch.

        Missing parts closer than ``gap`` bytes are fetched as one range. ``keep=False`` hands bulk
        data over without holding it (the caller must not ask for those bytes again).
        """
        ranges = [(max(0, int(a)), min(self.size, int(b))) for a, b in ranges]
        missing = sorted({g for a, b in ranges if b > a for g in self._covered(a, b)})
        merged: list[list[int]] = []
        for a, b in missing:  # bridge short gaps that hold nothing yet (never fetch a byte twice)
            if merged and a - merged[-1][1] <= gap and self._covered(merged[-1][1], a) == \
                    ([(merged[-1][1], a)] if a > merged[-1][1] else []):
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        fresh = dict(zip([(a, b) for a, b in merged], self._get([(a, b) for a, b in merged])))
        for (a, b), data in fresh.items():
            if len(data) != b - a:
                raise HDF5Truncated(f"expected {b - a} bytes at byte {a}, got {len(data)}")
        if keep:
            for (a, _), data in fresh.items():
                self._keep(a, data)
            return [self._held(a, b) if b > a else b"" for a, b in ranges]
        pieces = {a: data for (a, _), data in fresh.items()}
        starts = sorted(pieces)
        return [_assemble(a, b, pieces, starts, self) if b > a else b"" for a, b in ranges]

    def fetch_fresh(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The ranges fetched from the file as they are now, one request each, nothing held consulted.

        For proofs about the file itself (a chunk map's witness nodes): a few KiB per file.
        """
        return self._get([(max(0, int(a)), min(self.size, int(b))) for a, b in ranges])

    def read(self, start: int, nbytes: int) -> bytes:
        """``nbytes`` bytes at ``start`` (fewer at the end of the file), kept."""
        return self.fetch([(start, start + nbytes)])[0]

    def fetch_all(self) -> None:
        """Fetch every byte not held yet, in one batch of large ranges: the file is then read once."""
        missing = self._covered(0, self.size)
        if not missing:
            return
        pieces = [(a, min(end, a + _WHOLE_PIECE)) for start, end in missing for a in range(start, end, _WHOLE_PIECE)]
        logger.info("%s: reading the whole file once (%d bytes not yet read)", self.path,
                    sum(b - a for a, b in pieces))
        if self.size <= WHOLE_FILE_MEMORY:
            for (a, _), data in zip(pieces, self._get(pieces)):
                self._keep(a, data)
            return
        spill = tempfile.TemporaryFile(prefix="fmri2img-hdf5-")
        for a, data in zip(self._starts, self._pieces):
            os.pwrite(spill.fileno(), data, a)
        for i in range(0, len(pieces), 4):  # 4 × 32 MiB in flight, written as they come
            for (a, _), data in zip(pieces[i:i + 4], self._get(pieces[i:i + 4])):
                os.pwrite(spill.fileno(), data, a)
        self._spill, self._starts, self._pieces = spill, [], []

    def forget(self, start: int, end: int) -> None:
        """Drop what is held of [start, end) (bytes that failed a checksum: fetch them again)."""
        keep = [(a, p) for a, p in zip(self._starts, self._pieces) if a + len(p) <= start or a >= end]
        self._starts, self._pieces = [a for a, _ in keep], [p for _, p in keep]

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
        self._starts, self._pieces = [], []

    def file(self) -> "CachedFile":
        """A read-only file object over this source, for h5py."""
        return CachedFile(self)


def _assemble(a: int, b: int, pieces: dict[int, bytes], starts: list[int], source: ByteSource) -> bytes:
    """[a, b) from freshly fetched ``pieces`` ({start: bytes}; ``starts`` sorted) and what the source holds."""
    parts, pos = [], a
    i = max(0, bisect.bisect_right(starts, a) - 1)
    while pos < b:
        if i < len(starts) and starts[i] + len(pieces[starts[i]]) <= pos:
            i += 1
        elif i < len(starts) and starts[i] <= pos:
            data = pieces[starts[i]]
            parts.append(data[pos - starts[i]:b - starts[i]])
            pos = min(b, starts[i] + len(data))
            i += 1
        else:
            nxt = min(b, starts[i]) if i < len(starts) else b
            parts.append(source._held(pos, nxt))
            pos = nxt
    return parts[0] if len(parts) == 1 else b"".join(parts)


class HDF5Truncated(OSError):
    """The file ended before a structure or chunk it says it has (a truncated download)."""


class CachedFile(io.RawIOBase):
    """A read-only, seekable file object over a :class:`ByteSource`, reading ahead by aligned blocks."""

    def __init__(self, source: ByteSource, block: int = HEADER_BLOCK) -> None:
        super().__init__()
        self.source, self.block, self.pos = source, block, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.source.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), max(0, self.source.size - self.pos))
        if n <= 0:
            return 0
        a = self.pos // self.block * self.block
        e = min(self.source.size, -(-(self.pos + n) // self.block) * self.block)
        self.source.fetch([(a, e)])
        data = self.source.fetch([(self.pos, self.pos + n)])[0]
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


# --------------------------------------------------------------------------- planning


def _walkers(btree_k: int) -> dict:
    return {0: lambda *a: btree1(*a, btree_k=btree_k), 1: single_chunk, 2: implicit, 3: fixed_array,
            4: extensible_array, 5: btree2}


def dataset_layout(source: ByteSource, ds: h5py.Dataset) -> tuple[hdf5meta.Superblock, hdf5meta.Layout]:
    """The superblock and data layout message of ``ds`` (its header read through ``source``).

    Raises
    ------
    HDF5LayoutError
        The file or dataset is laid out in a way this reader does not plan.
    HDF5Truncated
        The superblock's end-of-file address is past the file's end.
    """
    header = hdf5chunks._header_address(ds)
    if header is None:
        raise HDF5LayoutError("the dataset is not reached by a hard link")
    sb = hdf5meta.read_superblock(source.read)
    if sb.eof > source.size:
        raise HDF5Truncated(f"the file is {source.size} bytes but its superblock says {sb.eof}")
    return sb, hdf5meta.read_layout(source.read, header)


def locate_chunks(source: ByteSource, ds: h5py.Dataset, scaled: np.ndarray) -> Locations | None:
    """Plan the chunks at ``scaled`` (chunk coordinates) from the file's chunk index.

    Returns
    -------
    Locations or None
        None when the layout cannot be planned; then read the file whole (:func:`whole_file_chunks`).
    """
    try:
        sb, layout = dataset_layout(source, ds)
        if layout.cls != 2 or tuple(layout.chunks) != tuple(ds.chunks) or layout.itemsize != ds.dtype.itemsize:
            raise HDF5LayoutError("the layout message does not match the dataset h5py opened")
        space = Space(tuple(int(s) for s in ds.shape), tuple(ds.maxshape), tuple(int(c) for c in ds.chunks))
        filtered = ds.id.get_create_plist().get_nfilters() > 0
        if layout.address < 0:
            return Locations.empty(len(scaled))
        walker = _walkers(sb.btree_k)[layout.index]
        loc = walker(source.fetch, layout, space, np.asarray(scaled, np.int64), filtered)
    except HDF5LayoutError as exc:
        logger.warning("%s: the chunk index of %s cannot be planned (%s); reading the file whole, once",
                       source.path, ds.name, exc)
        if isinstance(exc, HDF5ChecksumError):  # damaged on the way? fetch those bytes again with the rest
            source.forget(exc.start, exc.end)
        return None
    present = loc.address >= 0
    if np.any(loc.address[present] + loc.size[present] > source.size):
        raise HDF5Truncated("a chunk lies past the end of the file")
    return loc


def whole_file_chunks(source: ByteSource, ds: h5py.Dataset, scaled: np.ndarray) -> list[tuple[int, bytes] | None]:
    """Fetch the rest of the file once, then let HDF5 find each chunk: (filter mask, raw bytes) or None."""
    source.fetch_all()
    try:
        if ds.id.get_storage_size() == 0:  # nothing ever written: every chunk reads as the fill value
            return [None] * len(scaled)
    except (RuntimeError, OSError) as exc:
        raise HDF5Truncated(f"HDF5 could not read the chunk index ({exc})") from exc
    out: list[tuple[int, bytes] | None] = []
    for coords in np.asarray(scaled, np.int64):
        offset = tuple(int(c) * k for c, k in zip(coords, ds.chunks))
        try:
            mask, raw = ds.id.read_direct_chunk(offset)
        except (RuntimeError, OSError, ValueError) as exc:
            if not isinstance(exc, RuntimeError) or "not allocated" not in str(exc):
                raise HDF5Truncated(f"HDF5 could not read chunk {offset} ({exc})") from exc
            out.append(None)
            continue
        out.append((int(mask), bytes(raw)))
    return out


# --------------------------------------------------------------------------- fetching and decoding


def fetch_planned(source: ByteSource, loc: Locations, which: np.ndarray,
                  max_block: int = 16 * 2**20) -> list[tuple[int, bytes] | None]:
    """(filter mask, raw bytes) of the planned chunks ``which`` (None: never written), one batch.

    Ranges are merged through the smallest gaps while the unwanted bytes stay under the wanted
    ones and the whole read stays within the file's size.
    """
    which = np.asarray(which, np.int64)
    address, size = loc.address[which], loc.size[which]
    present = address >= 0
    wanted = int(size[present].sum())
    budget = max(0, min(wanted, source.size - source.fetched - wanted))
    starts, ends = hdf5chunks.merge_ranges(address[present], size[present], extra=budget, max_block=max_block)
    blocks = source.fetch(list(zip(starts.tolist(), ends.tolist())), keep=False, gap=0)
    out: list[tuple[int, bytes] | None] = []
    for a, n, m in zip(address.tolist(), size.tolist(), loc.mask[which].tolist()):
        if a < 0:
            out.append(None)
            continue
        b = int(np.searchsorted(starts, a, side="right")) - 1
        piece = blocks[b][a - int(starts[b]):a - int(starts[b]) + n]
        if len(piece) != n:
            raise HDF5Truncated(f"expected {n} bytes of a chunk at byte {a}, got {len(piece)}")
        out.append((int(m), piece))
    return out


def decode_chunks(ds: h5py.Dataset, raws: list[tuple[int, bytes] | None]) -> np.ndarray:
    """Chunks as arrays of shape (n, *ds.chunks) in the file's dtype; never-written ones hold the fill value.

    Unfiltered chunks are reinterpreted; filtered ones go through HDF5's filter pipeline.
    """
    shape, dtype = tuple(ds.chunks), ds.dtype
    out = np.empty((len(raws), *shape), dtype)
    out[...] = np.asarray(ds.fillvalue, dtype)
    present = [i for i, r in enumerate(raws) if r is not None]
    if not present:
        return out
    if ds.id.get_create_plist().get_nfilters() == 0:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        for i in present:
            mask, raw = raws[i]  # type: ignore[misc]
            if len(raw) != nbytes:
                raise HDF5Truncated(f"an unfiltered chunk holds {len(raw)} bytes, expected {nbytes}")
            out[i] = np.frombuffer(raw, dtype).reshape(shape)
        return out
    out[present] = _unfilter(ds, [raws[i] for i in present])  # type: ignore[misc]
    return out


def _unfilter(ds: h5py.Dataset, raws: list[tuple[int, bytes]]) -> np.ndarray:
    """Decode filtered chunks with the dataset's own filter pipeline, in an in-memory HDF5 file.

    The chunks are written raw (``write_direct_chunk``, each with its filter mask) into a dataset
    of shape (n, *chunks) created with the same datatype and filters, then read back: HDF5
    undoes whatever filters (and plugins) it can read the original with.
    """
    src = ds.id.get_create_plist()
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((1, *ds.chunks))
    for i in range(src.get_nfilters()):
        code, flags, values, _ = src.get_filter(i)
        dcpl.set_filter(code, flags, values)
    name = f"fmri2img-unfilter-{os.getpid()}-{id(raws)}.h5"
    with h5py.File(name, "w", driver="core", backing_store=False) as mem:
        space = h5py.h5s.create_simple((len(raws), *ds.chunks))
        did = h5py.h5d.create(mem.id, b"chunks", ds.id.get_type(), space, dcpl=dcpl)
        zeros = (0,) * len(ds.chunks)
        for j, (mask, raw) in enumerate(raws):
            did.write_direct_chunk((j, *zeros), raw, mask)
        out = np.empty((len(raws), *ds.chunks), ds.dtype)
        try:
            did.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        except (OSError, RuntimeError) as exc:
            raise HDF5Truncated(f"a filtered chunk does not decode ({exc})") from exc
    return out
