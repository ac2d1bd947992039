"""HDF5 files laid out unlike NSD's: every chunk index planned by range, or the file read once.

Each writer's file is read through a byte-counting filesystem and checked against h5py's own read
of the same voxels; the bytes fetched never exceed the file and, where the layout is planned, stay
near the masked voxels' bytes (the issue: ``libver="latest"`` files were fetched 16× over).
"""

from __future__ import annotations

import importlib.util
import itertools
import pickle
import subprocess
import sys
import textwrap

import fsspec
import h5py
import numpy as np
import pytest

from fmri2img.storage.nsd import NSDFormatError, hdf5chunks, hdf5meta, hdf5read
from fmri2img.storage.nsd.betas import read_betas_file

TRIALS = 750  # NSD's: one voxel's trials per chunk is 1,500 bytes
VOLUME = (24, 20, 16)  # X, Y, Z
HEADER_ALLOWANCE = 2 * hdf5read.HEADER_BLOCK  # superblock, groups, dataset header: read ahead by 64 KiB blocks


# --------------------------------------------------------------------------- counting


class CountingFS:
    """A local filesystem that counts every byte fetched (by range or through an opened file)."""

    def __init__(self, corrupt: tuple[int, int] | None = None) -> None:
        self.fs = fsspec.filesystem("file")
        self.bytes = self.requests = 0
        self.corrupt = corrupt  # (absolute byte, how many times) to flip in range answers

    def exists(self, path):
        return self.fs.exists(path)

    def cat_ranges(self, paths, starts, ends, **kw):
        parts = self.fs.cat_ranges(paths, starts, ends, **kw)
        self.bytes += sum(len(p) for p in parts)
        self.requests += len(parts)
        return [self._damage(a, p) for a, p in zip(starts, parts)]

    def _damage(self, start: int, part: bytes) -> bytes:
        if self.corrupt is None or self.corrupt[1] <= 0 or not start <= self.corrupt[0] < start + len(part):
            return part
        at, times = self.corrupt
        self.corrupt = (at, times - 1)
        raw = bytearray(part)
        raw[at - start] ^= 0xFF
        return bytes(raw)

    def open(self, path, mode="rb", **kw):
        inner, outer = self.fs.open(path, mode), self

        class Counted:
            size = inner.size

            def read(self, n=-1):
                got = inner.read(n)
                outer.bytes += len(got)
                return got

            def __getattr__(self, name):
                return getattr(inner, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                inner.close()

        return Counted()


# --------------------------------------------------------------------------- files


def _data(seed: int = 3) -> np.ndarray:
    """Betas in h5py order (trials, Z, Y, X), int16."""
    rng = np.random.default_rng(seed)
    return rng.integers(-3000, 3000, (TRIALS, *VOLUME[::-1])).astype(np.int16)


def _mask() -> np.ndarray:
    """An nsdgeneral-like blob: about 2 % of the volume, spatially clustered."""
    rng = np.random.default_rng(7)
    mask = np.zeros(VOLUME, bool)
    mask[6:15, 5:12, 4:9] = rng.random((9, 7, 5)) < 0.5
    return mask


def _create(path, data: np.ndarray, *, libver: str = "earliest", maxshape=None, chunks=None, early: bool = False,
            **filters) -> None:
    chunks = chunks or (TRIALS, 1, 1, 1)
    with h5py.File(path, "w", libver=libver) as h5:
        if early:  # the implicit index: early allocation, no filters, fixed size
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk(chunks)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            space = h5py.h5s.create_simple(data.shape)
            h5py.h5d.create(h5.id, b"betas", h5py.h5t.STD_I16LE, space, dcpl=dcpl)
            h5["betas"][...] = data
            return
        ds = h5.create_dataset("betas", shape=data.shape, dtype=data.dtype, chunks=chunks, maxshape=maxshape,
                               **filters)
        for z in range(data.shape[1]):  # one z-slab at a time, as a writer streaming volumes would
            ds[:, z] = data[:, z]


T, Z, Y, X = TRIALS, VOLUME[2], VOLUME[1], VOLUME[0]
#: writer -> (h5py options, chunk index the file must get)
WRITERS = {
    "nsd-default": (dict(), 0),
    "latest-fixed-array": (dict(libver="latest"), 3),
    "latest-extensible-array": (dict(libver="latest", maxshape=(None, Z, Y, X)), 4),
    "latest-extensible-array-x-unlimited": (dict(libver="latest", maxshape=(T, Z, Y, None)), 4),
    "latest-btree2": (dict(libver="latest", maxshape=(None, None, Y, X)), 5),
    "latest-implicit": (dict(libver="latest", early=True), 2),
    "latest-single-chunk": (dict(libver="latest", chunks=(T, Z, Y, X)), 1),
    "v108-btree1": (dict(libver="v108", maxshape=(None, Z, Y, X)), 0),
    "latest-fixed-array-gzip": (dict(libver="latest", compression="gzip", shuffle=True), 3),
    "latest-extensible-array-lzf": (dict(libver="latest", maxshape=(None, Z, Y, X), compression="lzf"), 4),
    "latest-btree2-gzip-fletcher32": (dict(libver="latest", maxshape=(None, None, Y, X), compression="gzip",
                                           fletcher32=True), 5),
    "default-gzip": (dict(compression="gzip"), 0),
    "latest-trial-volume-chunks": (dict(libver="latest", chunks=(1, Z, Y, X)), 3),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hdf5-writers")
    data = _data()
    out = {}
    for name, (opts, _) in WRITERS.items():
        out[name] = root / f"{name}.hdf5"
        _create(out[name], data, **opts)
    return out


def _reference(path, voxels: np.ndarray) -> np.ndarray:
    """h5py's own read of the voxels, ÷ 300."""
    with h5py.File(path, "r") as h5:
        full = h5["betas"][...]
    z, y, x = np.unravel_index(voxels, VOLUME)[::-1]
    return (full[:, z, y, x].astype(np.float64) / 300).astype(np.float32)


def _masked_stored_bytes(path, voxels: np.ndarray) -> int:
    """Bytes the chunks holding the voxels occupy in the file (compressed where filtered)."""
    with h5py.File(path, "r") as h5:
        ds = h5["betas"]
        x, y, z = np.unravel_index(voxels, VOLUME)
        seen = set()
        for t0 in range(0, TRIALS, ds.chunks[0]):
            for zi, yi, xi in zip(z, y, x):
                off = (t0, zi // ds.chunks[1] * ds.chunks[1], yi // ds.chunks[2] * ds.chunks[2],
                       xi // ds.chunks[3] * ds.chunks[3])
                seen.add(off)
        # read_direct_chunk: HDF5 2.0's get_chunk_info_by_coord misses chunks when the unlimited
        # dimension is not the first
        return sum(len(ds.id.read_direct_chunk(o)[1]) for o in seen)


def _read(fs, path, voxels):
    return read_betas_file(fs, str(path), voxels, VOLUME, TRIALS)


# --------------------------------------------------------------------------- every writer


@pytest.mark.parametrize("writer", list(WRITERS))
def test_each_writer_reads_like_h5py_and_fetches_about_the_masked_bytes(files, writer):
    path = files[writer]
    voxels = np.flatnonzero(_mask())
    raw = path.read_bytes()
    with h5py.File(path, "r") as h5:  # the writer really produced the index the test is about
        layout = hdf5meta.read_layout(lambda a, n: raw[a:a + n], hdf5chunks._header_address(h5["betas"]))
    assert layout.index == WRITERS[writer][1], (writer, layout)
    fs = CountingFS()
    out = _read(fs, path, voxels)
    np.testing.assert_array_equal(out, _reference(path, voxels))
    size = path.stat().st_size
    assert fs.bytes <= size, (fs.bytes, size)
    if writer in ("latest-trial-volume-chunks", "latest-single-chunk"):  # every chunk holds masked voxels
        assert fs.bytes == size
        return
    stored = _masked_stored_bytes(path, voxels)
    # the chunks, at most as many bytes again read through gaps, the index (its nodes or pages on the
    # chunks' paths: about a third of the chunks' bytes for 147 voxels, far less at NSD's 15,724) and
    # the header read-ahead
    assert fs.bytes <= 2.5 * stored + HEADER_ALLOWANCE, (fs.bytes, stored, size)
    assert fs.bytes < 0.1 * size, (fs.bytes, size)


def test_a_libver_latest_file_is_planned_in_few_batches(files):
    """A fixed array costs its header and pages in two batches, then one batch of chunks."""
    fs = CountingFS()
    _read(fs, files["latest-fixed-array"], np.flatnonzero(_mask()))
    assert fs.requests <= 40, fs.requests


# --------------------------------------------------------------------------- every chunk, every index


def _locations_match_hdf5(path, name: str = "data", sample: int = 3000) -> int:
    """Planned chunk locations hold exactly what HDF5's ``read_direct_chunk`` returns.

    All chunks are located; a sample of them, and every one written, is checked.
    """
    raw = open(path, "rb").read()
    source = hdf5read.ByteSource(fsspec.filesystem("file"), str(path), len(raw))
    with h5py.File(source.file(), "r") as h5:
        ds = h5[name]
        grid = [-(-s // c) for s, c in zip(ds.shape, ds.chunks)]
        scaled = np.array(list(itertools.product(*map(range, grid))), np.int64)
        loc = hdf5read.locate_chunks(source, ds, scaled)
    assert loc is not None
    with h5py.File(path, "r") as h5:
        ds = h5[name]
        if ds.id.get_storage_size() == 0:  # nothing written (HDF5 cannot read_direct_chunk then)
            assert np.all(loc.address == -1)
            return 0
        rng = np.random.default_rng(0)
        check = np.union1d(rng.choice(len(scaled), min(sample, len(scaled)), replace=False),
                           np.flatnonzero(loc.address >= 0)[:sample])
        present = 0
        for i in check:
            try:
                mask, data = ds.id.read_direct_chunk(tuple(int(k) * n for k, n in zip(scaled[i], ds.chunks)))
            except RuntimeError:  # not allocated
                assert loc.address[i] == -1, scaled[i]
                continue
            present += 1
            a = int(loc.address[i])
            assert raw[a:a + int(loc.size[i])] == data and loc.mask[i] == mask, scaled[i]
    return present


@pytest.mark.parametrize("case", ["fixed-array-paged", "fixed-array-one-page-written", "extensible-array-paged",
                                  "extensible-array-sparse", "extensible-array-unlimited-middle", "btree2-deep",
                                  "btree2-sparse", "fixed-array-edge-chunks", "fixed-array-larger-maxshape",
                                  "implicit-larger-maxshape", "nothing-written"])
def test_every_chunk_location_equals_hdf5s(tmp_path, case):
    rng = np.random.default_rng(0)
    path = tmp_path / f"{case}.h5"
    with h5py.File(path, "w", libver="latest") as h5:
        if case == "fixed-array-paged":
            h5.create_dataset("data", data=rng.integers(0, 9, 5000).astype("i1"), chunks=(1,))
        elif case == "fixed-array-one-page-written":  # the page bitmap: only pages 3 and 17 exist
            ds = h5.create_dataset("data", shape=(20000,), dtype="i1", chunks=(1,))
            ds[3 * 1024 + 5:3 * 1024 + 9] = 5
            ds[17 * 1024] = 3
        elif case == "extensible-array-paged":  # past 131,060 elements: paged data blocks
            h5.create_dataset("data", data=rng.integers(0, 9, 140_000).astype("i1"), chunks=(1,), maxshape=(None,))
        elif case == "extensible-array-sparse":
            ds = h5.create_dataset("data", shape=(400_000,), dtype="i1", chunks=(1,), maxshape=(None,))
            ds[203_077:203_081] = 5
            ds[390_000] = 3
        elif case == "extensible-array-unlimited-middle":  # HDF5 swizzles the unlimited dimension first
            h5.create_dataset("data", data=rng.integers(0, 9, (6, 50, 7)).astype("i1"), chunks=(2, 1, 3),
                              maxshape=(6, None, 9))
        elif case == "btree2-deep":  # depth 2: internal nodes with records and child counts
            h5.create_dataset("data", data=rng.integers(0, 9, (80, 80)).astype("i1"), chunks=(1, 1),
                              maxshape=(None, None))
        elif case == "btree2-sparse":
            ds = h5.create_dataset("data", shape=(300, 40), dtype="i1", chunks=(1, 1), maxshape=(None, None))
            ds[::37, ::3] = 1
        elif case == "fixed-array-edge-chunks":
            h5.create_dataset("data", data=rng.integers(0, 9, (11, 13, 7)).astype("i2"), chunks=(4, 5, 3))
        elif case == "fixed-array-larger-maxshape":
            h5.create_dataset("data", data=rng.integers(0, 9, (10, 12)).astype("i2"), chunks=(3, 5),
                              maxshape=(20, 30))
        elif case == "implicit-larger-maxshape":
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((3, 5))
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            h5py.h5d.create(h5.id, b"data", h5py.h5t.STD_I16LE, h5py.h5s.create_simple((10, 12), (20, 30)), dcpl=dcpl)
            h5["data"][...] = np.arange(120).reshape(10, 12)
        else:
            h5.create_dataset("data", shape=(2000,), dtype="i1", chunks=(1,))
    present = _locations_match_hdf5(path)
    assert present > 0 or case == "nothing-written"


# --------------------------------------------------------------------------- fetched once


def test_a_layout_that_cannot_be_planned_is_fetched_once(tmp_path):
    """A user block moves the superblock off byte 0: the file is read whole, exactly once."""
    path = tmp_path / "userblock.hdf5"
    data = _data(5)
    with h5py.File(path, "w", libver="latest", userblock_size=512) as h5:
        h5.create_dataset("betas", data=data, chunks=(TRIALS, 1, 1, 1))
    voxels = np.flatnonzero(_mask())
    fs = CountingFS()
    np.testing.assert_array_equal(_read(fs, path, voxels), _reference(path, voxels))
    assert fs.bytes == path.stat().st_size


def test_a_whole_file_read_above_the_memory_limit_goes_through_a_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "userblock.hdf5"
    with h5py.File(path, "w", userblock_size=512) as h5:
        h5.create_dataset("betas", data=_data(6), chunks=(TRIALS, 1, 1, 1), compression="gzip")
    monkeypatch.setattr(hdf5read, "WHOLE_FILE_MEMORY", 0)
    voxels = np.flatnonzero(_mask())
    fs = CountingFS()
    np.testing.assert_array_equal(_read(fs, path, voxels), _reference(path, voxels))
    assert fs.bytes == path.stat().st_size


@pytest.mark.parametrize("layout", ["compact", "contiguous"])
def test_unchunked_layouts_never_fetch_more_than_the_file(tmp_path, layout):
    path = tmp_path / f"{layout}.hdf5"
    data = _data(4)[:2]  # compact data must fit an object header (64 KiB)
    with h5py.File(path, "w", libver="latest") as h5:
        if layout == "compact":
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            h5py.h5d.create(h5.id, b"betas", h5py.h5t.STD_I16LE, h5py.h5s.create_simple(data.shape), dcpl=dcpl)
            h5["betas"][...] = data
        else:
            h5.create_dataset("betas", data=data)
    voxels = np.flatnonzero(_mask())
    fs = CountingFS()
    out = read_betas_file(fs, str(path), voxels, VOLUME, 2)
    z, y, x = np.unravel_index(voxels, VOLUME)[::-1]
    np.testing.assert_array_equal(out, (data[:, z, y, x] / 300).astype(np.float32))
    assert fs.bytes <= path.stat().st_size


def test_a_file_smaller_than_its_header_is_fetched_once(files, tmp_path):
    """The header read-ahead already holds a small file: nothing is fetched twice."""
    path = tmp_path / "small.hdf5"
    small = _data(2)[:20]
    with h5py.File(path, "w", libver="latest") as h5:
        h5.create_dataset("betas", data=small, chunks=(20, 1, 1, 1))
    fs = CountingFS()
    voxels = np.flatnonzero(_mask())
    out = read_betas_file(fs, str(path), voxels, VOLUME, 20)
    z, y, x = np.unravel_index(voxels, VOLUME)[::-1]
    np.testing.assert_array_equal(out, (small[:, z, y, x] / 300).astype(np.float32))
    assert fs.bytes <= path.stat().st_size


def _fixed_array_page_checksum(path) -> int:
    """Absolute offset of the checksum of the fixed array page that holds the first masked voxel's chunk."""
    raw = open(path, "rb").read()
    with h5py.File(path, "r") as h5:
        layout = hdf5meta.read_layout(lambda a, n: raw[a:a + n], hdf5chunks._header_address(h5["betas"]))
    hdr = layout.address
    dblk = int.from_bytes(raw[hdr + 16:hdr + 24], "little")
    page_n, nelmts = 1 << raw[hdr + 7], int.from_bytes(raw[hdr + 8:hdr + 16], "little")
    first_page = dblk + 18 + (-(-nelmts // page_n) + 7) // 8
    x, y, z = np.unravel_index(np.flatnonzero(_mask())[0], VOLUME)
    page = int(np.ravel_multi_index((z, y, x), VOLUME[::-1])) // page_n
    return first_page + page * (page_n * 8 + 4) + page_n * 8


def test_a_checksum_damaged_on_the_way_falls_back_and_reads_right(files, caplog):
    path = files["latest-fixed-array"]
    voxels = np.flatnonzero(_mask())
    fs = CountingFS(corrupt=(_fixed_array_page_checksum(path), 1))
    with caplog.at_level("WARNING", logger="fmri2img.storage.nsd.hdf5read"):
        np.testing.assert_array_equal(_read(fs, path, voxels), _reference(path, voxels))
    assert fs.corrupt[1] == 0  # the damage was served ...
    assert "fails its checksum" in caplog.text and "reading the file whole, once" in caplog.text  # ... and seen
    assert fs.bytes <= path.stat().st_size + hdf5read.HEADER_BLOCK  # the file once, plus the damaged block again


def test_a_checksum_damaged_in_the_file_is_one_clear_error(files, tmp_path):
    path = tmp_path / "damaged.hdf5"
    raw = bytearray(files["latest-fixed-array"].read_bytes())
    raw[_fixed_array_page_checksum(files["latest-fixed-array"])] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(NSDFormatError, match=r"damaged\.hdf5 .*truncated or corrupt.*download"):
        _read(CountingFS(), path, np.flatnonzero(_mask()))


def test_a_truncated_libver_latest_file_is_one_clear_error(files, tmp_path):
    path = tmp_path / "cut.hdf5"
    path.write_bytes(files["latest-extensible-array"].read_bytes()[: 3 * 2**20])
    with pytest.raises(NSDFormatError, match=r"cut\.hdf5 .*truncated or corrupt.*download"):
        _read(CountingFS(), path, np.flatnonzero(_mask()))


# --------------------------------------------------------------------------- PyTables


_PYTABLES = importlib.util.find_spec("tables") is not None


@pytest.mark.skipif(not _PYTABLES, reason="PyTables is not installed (pip install tables) to write its layouts")
@pytest.mark.parametrize("complevel", [0, 4])
def test_pytables_carray_reads_like_h5py(tmp_path, complevel):
    """PyTables' CArray (its own HDF5, attributes, zlib filters), written in a separate process."""
    path = tmp_path / f"pytables-{complevel}.h5"
    np.save(tmp_path / "data.npy", _data(9))
    script = textwrap.dedent(f"""
        import numpy as np, tables
        data = np.load({str(tmp_path / 'data.npy')!r})
        with tables.open_file({str(path)!r}, "w") as f:
            filters = tables.Filters(complevel={complevel}, complib="zlib") if {complevel} else None
            a = f.create_carray("/", "betas", atom=tables.Int16Atom(), shape=data.shape,
                                chunkshape=(data.shape[0], 1, 1, 1), filters=filters)
            for z in range(data.shape[1]):
                a[:, z] = data[:, z]
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    voxels = np.flatnonzero(_mask())
    fs = CountingFS()
    np.testing.assert_array_equal(_read(fs, path, voxels), _reference(path, voxels))
    assert fs.bytes <= 2 * _masked_stored_bytes(path, voxels) + 0.25 * path.stat().st_size


# --------------------------------------------------------------------------- pieces


def _lookup3_reference(k: bytes) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (initval 0), one integer at a time."""
    m = 0xFFFFFFFF

    def rot(x, r):
        return ((x << r) | (x >> (32 - r))) & m

    n, i = len(k), 0
    a = b = c = (0xDEADBEEF + n) & m
    while n > 12:
        a, b, c = ((a + int.from_bytes(k[i:i + 4], "little")) & m, (b + int.from_bytes(k[i + 4:i + 8], "little")) & m,
                   (c + int.from_bytes(k[i + 8:i + 12], "little")) & m)
        for x, y, z, r in ((0, 2, 1, 4), (1, 0, 2, 6), (2, 1, 0, 8), (0, 2, 1, 16), (1, 0, 2, 19), (2, 1, 0, 4)):
            v = [a, b, c]
            v[x] = ((v[x] - v[y]) & m) ^ rot(v[y], r)
            v[y] = (v[y] + v[z]) & m
            a, b, c = v
        n, i = n - 12, i + 12
    if n == 0:
        return c
    tail = k[i:] + bytes(12 - n)
    a, b, c = ((a + int.from_bytes(tail[:4], "little")) & m, (b + int.from_bytes(tail[4:8], "little")) & m,
               (c + int.from_bytes(tail[8:], "little")) & m)
    for x, y, r in ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24)):
        v = [a, b, c]
        v[x] = ((v[x] ^ v[y]) - rot(v[y], r)) & m
        a, b, c = v
    return c


def test_lookup3_matches_a_plain_implementation():
    rng = np.random.default_rng(1)
    bufs = [rng.integers(0, 256, n).astype(np.uint8).tobytes() for n in (0, 1, 11, 12, 13, 24, 25, 100, 2048, 8196)]
    assert list(hdf5meta.lookup3_many(bufs)) == [_lookup3_reference(b) for b in bufs]
    assert hdf5meta.lookup3(b"Four score and seven years ago") == 0x17770551  # lookup3.c's own test value


@pytest.mark.parametrize("error", [hdf5meta.HDF5LayoutError("a structure"),
                                   hdf5meta.HDF5ChecksumError("the fixed array header fails", 10, 38),
                                   hdf5read.HDF5Truncated("a chunk past the end"),
                                   hdf5chunks.ChunkIndexError("no chunk B-tree node")])
def test_errors_survive_pickle(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    if isinstance(error, hdf5meta.HDF5ChecksumError):
        assert (back.start, back.end) == (10, 38)
