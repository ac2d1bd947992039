"""Single-trial betas of one session: ``betas_sessionNN.hdf5`` by byte range, or ``.nii.gz`` through gzip.

Facts (NSD data manual, "Functional data (NSD)"; nsd_access ``read_betas``; Brain-Diffuser's
``prepare_nsddata.py``): ``betas_fithrf_GLMdenoise_RR/betas_sessionNN.{nii.gz,hdf5}`` hold 750
trials of int16 = percent signal change × 300. The ``.nii.gz`` is X×Y×Z×750; the ``.hdf5``
holds dataset ``betas`` of MATLAB size X×Y×Z×750 (h5py shape (750, Z, Y, X)), uncompressed,
chunked [1 1 1 750] (one voxel's trials per chunk). A chunked file is read by walking its chunk
index (NSD's version 1 B-tree, :mod:`.hdf5chunks`, or the newer indexes of
``libver="latest"`` files, :mod:`.hdf5index`) and fetching only the masked voxels' chunks; a
contiguous file is read by range over the voxels' z-range; a layout that cannot be planned is
fetched whole, once, and read with h5py (:mod:`.hdf5read`). No byte is fetched twice.

Units: NSD's int16 files are divided by 300. Float files (another pipeline, or NaN-carrying
exports) are refused unless the caller names their scale (``scale``), because dividing a
file already in percent signal change by 300 would make it silently 300× too small.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from fmri2img.storage.nsd import hdf5chunks, hdf5index, hdf5read
from fmri2img.storage.nsd._common import (BETA_SCALE, PUBLIC_SESSIONS, NSDError, NSDFileMissing, NSDFormatError,
                                          NSDLayout, _BLOCK_BYTES, _RANGE_BLOCK, _contiguous_offset,
                                          _fmt, _name, _open, _truncated)
from fmri2img.storage.nsd.volumes import _nifti_from_stream

logger = logging.getLogger(__name__)

_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
#: ``scale`` value meaning "NSD's own units": int16 files, divided by 300
NSD_SCALE = "nsd"
_HEADER_BLOCK = 64 * 2**10  # read-ahead of the HDF5 file object: superblock, group and dataset headers


def read_session_betas(fs: Any, layout: NSDLayout, subject: int, session: int, voxels: np.ndarray,
                       volume_shape: tuple[int, int, int], expected_trials: int, prefer: str = "hdf5",
                       *, scale: str | float = NSD_SCALE, block_bytes: int = _BLOCK_BYTES,
                       chunk_map: hdf5chunks.ChunkMap | None = None) -> np.ndarray:
    """Read one session's single-trial betas at the given voxels.

    Uses the uncompressed HDF5 twin when it exists and ``prefer == "hdf5"``. NSD's chunked
    layout (one voxel's trials per chunk) is read chunk by chunk: only the voxels' chunks and
    the B-tree nodes that locate them are fetched, by merged concurrent byte ranges. A
    contiguous file is read by range over the z-range of the voxels' bounding box. Otherwise
    the ``.nii.gz`` is streamed through gzip a block of trials at a time; memory stays near
    ``block_bytes`` plus the output. All give identical results.

    Parameters
    ----------
    fs : fsspec filesystem
    layout : NSDLayout
    subject, session : int
        1-based.
    voxels : array of shape (n_voxels,), int64
        Flat C-order indices into the (X, Y, Z) volume, e.g. ``np.flatnonzero(mask)``.
    volume_shape : tuple of 3 int
        (X, Y, Z) of the mask; the betas must match it.
    expected_trials : int
        Trials the session must hold (750 for NSD).
    prefer : {"hdf5", "nii.gz"}
    scale : "nsd" or float
        ``"nsd"``: the file must hold NSD's int16 (percent signal change × 300) and is divided
        by 300; a float file is refused. A number: values are divided by it, whatever the
        dtype (``1`` for floats already in percent signal change, ``300`` for float × 300).
    chunk_map : hdf5chunks.ChunkMap, optional
        From :func:`session_chunk_map` on another session file of the subject: when this file's
        B-tree is verified to be the same, its walk is skipped (one batch of requests instead of
        one per B-tree level and thousands of leaf reads).
    block_bytes : int
        Raw bytes of betas held in memory per block of trials (gzip, chunked HDF5); a contiguous
        HDF5 is read by ranges of up to ``2 × block_bytes``, two in flight at a time.

    Returns
    -------
    betas : array of shape (expected_trials, n_voxels), float32
        Percent signal change (file values / scale); NaN stays NaN in float files.
    """
    divisor = _divisor(scale)
    if prefer not in _BETA_READERS:
        raise NSDError(f"prefer={prefer!r} is not a betas format; expected one of {', '.join(_BETA_READERS)}")
    volume_shape = tuple(int(s) for s in volume_shape)
    voxels = _check_voxels(voxels, volume_shape)
    fmt = prefer
    if prefer == "hdf5" and not fs.exists(layout.betas(subject, session, "hdf5")):
        fmt = "nii.gz"
    path = layout.betas(subject, session, fmt)
    if fmt == "nii.gz" and not fs.exists(path):
        raise NSDFileMissing(_missing_betas_message(layout, subject, session, path))
    logger.debug("reading %s (%d voxels)", path, len(voxels))
    fix = _missing_betas_message(layout, subject, session, path)
    # HDF5: a 64 KiB read-ahead serves the header, the data is read by range; gzip is one
    # forward pass, so it is read in large blocks (few requests per GB on object stores)
    block = _HEADER_BLOCK if fmt == "hdf5" else _RANGE_BLOCK * 8
    with _open(fs, path, what="single-trial betas", fix=fix, ranged=True, block_size=block) as f:
        out = _BETA_READERS[fmt](f, path, voxels, volume_shape, int(expected_trials), block_bytes, fs=fs,
                                 scale=(scale, divisor), **({"chunk_map": chunk_map} if fmt == "hdf5" else {}))
    return out


def read_betas_file(fs: Any, path: str, voxels: np.ndarray, volume_shape: tuple[int, int, int],
                    expected_trials: int, *, scale: str | float = NSD_SCALE, block_bytes: int = _BLOCK_BYTES,
                    what: str = "single-trial betas", fix: str = "") -> np.ndarray:
    """Read a betas file at any path (``.hdf5`` or ``.nii.gz``, NSD's layouts and units) at the voxels.

    The same readers as :func:`read_session_betas` (chunked HDF5 by range, contiguous HDF5 by
    z-range, gzip streamed), for files that are not ``betas_sessionNN`` (e.g. NSD-Imagery's
    ``betas_nsdimagery.hdf5``). ``fix`` is appended to the error of a missing file.

    Returns
    -------
    betas : array of shape (expected_trials, n_voxels), float32
    """
    divisor = _divisor(scale)
    fmt = "hdf5" if str(path).endswith((".hdf5", ".h5")) else "nii.gz" if str(path).endswith((".nii.gz", ".nii")) \
        else None
    if fmt is None:
        raise NSDError(f"{_name(path)}: not a betas file this reader knows; expected .hdf5 or .nii.gz")
    volume_shape = tuple(int(s) for s in volume_shape)
    voxels = _check_voxels(voxels, volume_shape)
    block = _HEADER_BLOCK if fmt == "hdf5" else _RANGE_BLOCK * 8
    with _open(fs, path, what=what, fix=fix, ranged=True, block_size=block) as f:
        return _BETA_READERS[fmt](f, path, voxels, volume_shape, int(expected_trials), block_bytes, fs=fs,
                                  scale=(scale, divisor))


def _missing_betas_message(layout: NSDLayout, subject: int, session: int, path: str) -> str:
    name = _name(path)
    if session > PUBLIC_SESSIONS:
        why = (f"sessions {PUBLIC_SESSIONS + 1}–40 are not public in real NSD (withheld as held-out test data); "
               f"select sessions 1–{PUBLIC_SESSIONS} with --sessions")
    else:
        why = "check the dataset root and subject, or select the sessions you have with --sessions"
    return f"{name} (subject {subject}, session {session}) not found at {path}: {why}"


def _check_voxels(voxels: np.ndarray, volume_shape: tuple[int, ...]) -> np.ndarray:
    v = np.asarray(voxels)
    if len(volume_shape) != 3:
        raise NSDError(f"volume_shape {volume_shape} is not 3-D; expected (X, Y, Z) of the mask")
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise NSDError(f"voxels has shape {v.shape} and dtype {v.dtype}; expected a 1-D integer array of flat "
                       f"C-order indices (np.flatnonzero(mask))")
    if v.size and (v.min() < 0 or v.max() >= int(np.prod(volume_shape))):
        raise NSDError(f"voxels span {v.min()}..{v.max()}; expected flat indices into a {_fmt(volume_shape)} volume")
    return v.astype(np.int64)


def _trial_blocks(n_trials: int, bytes_per_trial: int, block_bytes: int) -> list[tuple[int, int]]:
    step = max(1, int(block_bytes) // max(1, bytes_per_trial))
    return [(t, min(t + step, n_trials)) for t in range(0, n_trials, step)]


def _check_betas_shape(path: str, vol: tuple[int, ...], trials: int, volume_shape: tuple[int, ...],
                       expected_trials: int) -> None:
    if tuple(vol) != tuple(volume_shape):
        raise NSDFormatError(f"{_name(path)} has {_fmt(vol)} voxels but the nsdgeneral mask is {_fmt(volume_shape)}: "
                             f"the mask and betas must come from the same space (func1pt8mm)")
    if trials != expected_trials:
        raise NSDFormatError(f"{_name(path)} holds {trials} trials but the experimental design has {expected_trials} "
                             f"per session: the file is incomplete or from another design; download it again")


def _divisor(scale: str | float) -> float:
    if isinstance(scale, str):
        if scale != NSD_SCALE:
            raise NSDError(f"betas scale {scale!r} is not understood; expected \"nsd\" (int16 × 300, NSD's own "
                           f"files) or a positive number that the file's values are divided by")
        return BETA_SCALE
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or \
            not np.isfinite(scale) or scale <= 0:
        raise NSDError(f"betas scale {scale!r} is not a positive number; expected \"nsd\" or e.g. 1 (floats in "
                       f"percent signal change) or 300 (percent signal change × 300)")
    return float(scale)


def _check_dtype(path: str, dtype: np.dtype, scale: tuple) -> None:
    """NSD's files are int16; a float file needs its scale named (never divided by 300 silently)."""
    if scale[0] == NSD_SCALE and not np.issubdtype(dtype, np.integer):
        raise NSDFormatError(
            f"{_name(path)} holds {np.dtype(dtype).name} betas, but NSD's betas are int16 (percent signal change "
            f"× 300): say what the values are with the betas scale option ([ingest] betas_scale, CLI "
            f"--betas-scale): 1 if they are already percent signal change, 300 if they are percent signal "
            f"change × 300")


def _to_psc(raw: np.ndarray, scale: tuple) -> np.ndarray:
    return (np.asarray(raw, dtype=np.float32) / np.float32(scale[1])).astype(np.float32, copy=False)


def _read_betas_nifti(f: Any, path: str, voxels: np.ndarray, volume_shape: tuple[int, ...], expected_trials: int,
                      block_bytes: int, fs: Any = None, scale: tuple = (NSD_SCALE, BETA_SCALE)) -> np.ndarray:
    """Stream a 4-D X×Y×Z×T NIfTI through gzip a block of trials at a time."""
    img = _nifti_from_stream(f, path)
    shape = img.shape
    if len(shape) != 4:
        raise NSDFormatError(f"{_name(path)} has shape {_fmt(shape)}; expected a 4-D X×Y×Z×trials volume")
    _check_betas_shape(path, shape[:3], shape[3], volume_shape, expected_trials)
    _check_dtype(path, img.get_data_dtype(), scale)
    coords = np.unravel_index(voxels, volume_shape)
    out = np.empty((expected_trials, len(voxels)), np.float32)
    itemsize = img.get_data_dtype().itemsize
    proxy = img.dataobj
    for t0, t1 in _trial_blocks(expected_trials, int(np.prod(volume_shape)) * itemsize, block_bytes):
        try:
            block = np.asarray(proxy[..., t0:t1])
        except (*_GZIP_ERRORS, OSError, ValueError) as exc:
            raise _truncated(path, exc) from exc
        out[t0:t1] = _to_psc(block[coords].T, scale)
    return out


def _betas_dataset(h5: h5py.File, path: str, volume_shape: tuple[int, ...], expected_trials: int) -> h5py.Dataset:
    if "betas" not in h5 or not isinstance(h5["betas"], h5py.Dataset):
        raise NSDFormatError(f"{_name(path)} has no dataset 'betas' (found {sorted(h5.keys())}); expected the "
                             f"NSD betas HDF5 with dataset 'betas' of shape (trials, Z, Y, X)")
    ds = h5["betas"]
    if ds.ndim != 4:
        raise NSDFormatError(f"{_name(path)}: dataset 'betas' has shape {_fmt(ds.shape)}; expected 4-D "
                             f"(trials, Z, Y, X)")
    _check_betas_shape(path, ds.shape[:0:-1], ds.shape[0], volume_shape, expected_trials)
    return ds


def _read_betas_hdf5(f: Any, path: str, voxels: np.ndarray, volume_shape: tuple[int, ...], expected_trials: int,
                     block_bytes: int, fs: Any = None, scale: tuple = (NSD_SCALE, BETA_SCALE),
                     chunk_map: hdf5chunks.ChunkMap | None = None) -> np.ndarray:
    """Read dataset ``betas`` of shape (T, Z, Y, X) at the voxels: by chunk, by z-range, or the file once.

    Every read goes through one :class:`~.hdf5read.ByteSource`, so no byte of the file is
    fetched twice and the whole read never exceeds the file's size.
    """
    if fs is None:
        fs = _OpenFile(f)
    source = hdf5read.ByteSource(fs, path, _file_size(f))
    try:
        return _read_betas_source(source, path, voxels, volume_shape, expected_trials, block_bytes, scale, chunk_map)
    except hdf5read.HDF5Truncated as exc:
        raise _truncated(path, exc) from exc
    finally:
        source.close()


def _read_betas_source(source: hdf5read.ByteSource, path: str, voxels: np.ndarray, volume_shape: tuple[int, ...],
                       expected_trials: int, block_bytes: int, scale: tuple,
                       chunk_map: hdf5chunks.ChunkMap | None) -> np.ndarray:
    try:
        h5 = h5py.File(source.file(), "r")
    except OSError as exc:
        raise _truncated(path, exc) from exc
    with h5:
        ds = _betas_dataset(h5, path, volume_shape, expected_trials)
        _check_dtype(path, ds.dtype, scale)
        x, y, z = np.unravel_index(voxels, volume_shape)
        out = np.empty((expected_trials, len(voxels)), np.float32)
        if not len(voxels):
            return out
        if ds.chunks is not None:
            _read_chunks_by_range(source, path, ds, (z, y, x), out, scale, chunk_map, block_bytes)
            return out
        # The bounding box's z-range is one contiguous byte run per trial: a few large reads
        # instead of one tiny read per x-row of the box (what an exact box hyperslab costs).
        z0, z1 = int(z.min()), int(z.max()) + 1
        slab_items = (z1 - z0) * volume_shape[1] * volume_shape[0]
        offset = _contiguous_offset(ds)
        if offset is not None:
            _read_slabs_by_range(source, ds.dtype, offset, int(np.prod(ds.shape[1:])), z0 * volume_shape[1] *
                                 volume_shape[0], (z1 - z0, volume_shape[1], volume_shape[0]),
                                 (z - z0, y, x), out, 4 * block_bytes, scale)
            return out
        source.fetch_all()  # compact, virtual or external storage: h5py reads the file, fetched once
        for t0, t1 in _trial_blocks(expected_trials, slab_items * ds.dtype.itemsize, block_bytes):
            try:
                slab = ds[t0:t1, z0:z1]
            except (OSError, ValueError) as exc:
                raise _truncated(path, exc) from exc
            out[t0:t1] = _to_psc(slab[:, z - z0, y, x], scale)
        return out


class _OpenFile:
    """``cat_ranges`` over an already open file object (readers called without a filesystem)."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def cat_ranges(self, paths: list, starts: list, ends: list) -> list[bytes]:
        out = []
        for a, b in zip(starts, ends):
            self.f.seek(a)
            out.append(self.f.read(b - a))
        return out


def _file_size(f: Any) -> int:
    size = getattr(f, "size", None)
    if size is None:
        pos = f.tell()
        size = f.seek(0, 2)
        f.seek(pos)
    return int(size)


def _wanted_chunks(shape: tuple[int, ...], chunks: tuple[int, ...],
                   zyx: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk coordinates holding the voxels (every trial chunk row), their spatial ids, and each voxel's.

    Returns
    -------
    scaled : array of shape (rows × n_spatial, 4), int64
        Chunk coordinates, row-major: all spatial chunks of trial row 0, then row 1, ...
    uniq : array of shape (n_spatial,)
        Linear ids of the spatial chunks (C order over the spatial chunk grid).
    inverse : array of shape (n_voxels,)
        Each voxel's spatial chunk, as an index into ``uniq``.
    """
    z, y, x = (np.asarray(a, np.int64) for a in zyx)
    _, cz, cy, cx = chunks
    grid = tuple(-(-int(s) // c) for s, c in zip(shape, chunks))
    spatial = np.ravel_multi_index((z // cz, y // cy, x // cx), grid[1:])
    uniq, inverse = np.unique(spatial, return_inverse=True)
    sz, sy, sx = np.unravel_index(uniq, grid[1:])
    rows = np.repeat(np.arange(grid[0], dtype=np.int64), len(uniq))
    scaled = np.stack([rows, np.tile(sz, grid[0]), np.tile(sy, grid[0]), np.tile(sx, grid[0])], axis=1)
    return scaled.astype(np.int64), uniq, inverse


def session_chunk_map(fs: Any, layout: NSDLayout, subject: int, session: int, voxels: np.ndarray,
                      volume_shape: tuple[int, int, int]) -> hdf5chunks.ChunkMap | None:
    """Walk one session file's chunk index for the voxels: a map other sessions of the subject can reuse.

    None when the session has no unfiltered, version 1 B-tree ``.hdf5`` file (NSD's layout); the
    other chunk indexes are read in one or two batches per session anyway.
    """
    path = layout.betas(subject, session, "hdf5")
    if not fs.exists(path):
        return None
    volume_shape = tuple(int(s) for s in volume_shape)
    voxels = _check_voxels(voxels, volume_shape)
    with _open(fs, path, what="single-trial betas", ranged=True, block_size=_HEADER_BLOCK) as f:
        source = hdf5read.ByteSource(fs, path, _file_size(f))
        try:
            h5 = h5py.File(source.file(), "r")
        except OSError as exc:
            raise _truncated(path, exc) from exc
        with h5:
            ds = h5.get("betas")
            index = hdf5chunks.chunk_index(source.file(), ds) if isinstance(ds, h5py.Dataset) and ds.ndim == 4 \
                else None
            if index is None or tuple(ds.shape[:0:-1]) != volume_shape:
                return None
            x, y, z = np.unravel_index(voxels, volume_shape)
            scaled, _, _ = _wanted_chunks(index.shape, index.chunks, (z, y, x))
            wanted = np.ravel_multi_index(tuple(scaled.T), index.grid)
            try:
                return hdf5chunks.build_map(index, wanted, _node_fetcher(source), source.size)
            except (hdf5chunks.ChunkIndexError, hdf5read.HDF5Truncated) as exc:
                raise _truncated(path, exc) from exc


def _node_fetcher(source: hdf5read.ByteSource, fresh: bool = False):
    def fetch(addresses: list[int], nbytes: int) -> list[bytes]:
        ranges = [(a, a + nbytes) for a in addresses]
        return source.fetch_fresh(ranges) if fresh else source.fetch(ranges)
    return fetch


def _mapped_chunks(source: hdf5read.ByteSource, ds: h5py.Dataset, scaled: np.ndarray,
                   chunk_map: hdf5chunks.ChunkMap) -> hdf5index.Locations | None:
    """The subject's chunk map for this file, when its B-tree is verified to be the map's."""
    index = hdf5chunks.chunk_index(source.file(), ds)
    if index is None:
        return None
    wanted = np.ravel_multi_index(tuple(scaled.T), index.grid)
    # the witnesses are fetched from the file itself, one request each (a few KiB)
    found = hdf5chunks.reuse_map(chunk_map, index, wanted, source.size, _node_fetcher(source, fresh=True))
    if found is None:
        return None
    address, size = found
    return hdf5index.Locations(address, size, np.zeros(len(address), np.uint32))


def _read_chunks_by_range(source: hdf5read.ByteSource, path: str, ds: h5py.Dataset, zyx: tuple, out: np.ndarray,
                          scale: tuple, chunk_map: hdf5chunks.ChunkMap | None, block_bytes: int) -> None:
    """``out[:, v] = betas[:, z_v, y_v, x_v] / scale`` from the voxels' chunks alone.

    The chunk index is walked one level per batch of range requests (or the subject's chunk map
    reused); then each block of trial-chunk rows is fetched in one batch, the smallest gaps
    between chunks read through (at most as many unwanted bytes as wanted ones, never past the
    file's size), and decoded. A chunk index that cannot be planned makes the file read whole,
    once, HDF5 finding the chunks in that copy.
    """
    z, y, x = (np.asarray(a, np.int64) for a in zyx)
    trials, chunks = out.shape[0], tuple(int(c) for c in ds.chunks)
    scaled, uniq, inverse = _wanted_chunks(tuple(ds.shape), chunks, zyx)
    loc = _mapped_chunks(source, ds, scaled, chunk_map) if chunk_map is not None else None
    logger.debug("%s: %d chunks located %s", path, len(scaled), "by the subject's chunk map" if loc else "by walk")
    if loc is None:
        loc = hdf5read.locate_chunks(source, ds, scaled)
    ct, cz, cy, cx = chunks
    row_bytes = len(uniq) * int(np.prod(chunks)) * ds.dtype.itemsize
    per_block = max(1, block_bytes // max(1, row_bytes))
    n_rows = len(scaled) // len(uniq)
    dz, dy, dx = z % cz, y % cy, x % cx
    for r0 in range(0, n_rows, per_block):
        which = np.arange(r0 * len(uniq), min(n_rows, r0 + per_block) * len(uniq))
        raws = hdf5read.fetch_planned(source, loc, which) if loc is not None else \
            hdf5read.whole_file_chunks(source, ds, scaled[which])
        decoded = hdf5read.decode_chunks(ds, raws).reshape(-1, len(uniq), *chunks)
        for k, row in enumerate(range(r0, r0 + len(decoded))):
            t0, t1 = row * ct, min(trials, (row + 1) * ct)
            values = decoded[k][inverse, :, dz, dy, dx]  # (n_voxels, ct)
            out[t0:t1] = _to_psc(values[:, :t1 - t0].T, scale)


def _read_slabs_by_range(source: hdf5read.ByteSource, dtype: np.dtype, offset: int, trial_items: int,
                         slab_start: int, slab_shape: tuple[int, int, int], index: tuple, out: np.ndarray,
                         block_bytes: int, scale: tuple) -> None:
    """``out[t] = volume_t[slab][index] / 300`` for every trial, the slabs read by concurrent byte ranges.

    Each trial's slab is one contiguous run.  When the gap between neighbouring slabs is under a
    quarter of a slab, runs of trials are read as one range (gaps included) of at most
    ``block_bytes / 2`` and cut up by a strided view, without copying; otherwise one range per
    trial.  A block of ranges (``block_bytes``) is fetched concurrently, then decoded.
    """
    item = dtype.itemsize
    trial_bytes, slab_bytes = trial_items * item, int(np.prod(slab_shape)) * item
    merge = trial_bytes - slab_bytes <= slab_bytes // 4
    per_part = max(1, (block_bytes // 2) // trial_bytes) if merge else 1
    trials = len(out)
    parts = [(t, min(t + per_part, trials)) for t in range(0, trials, per_part)]
    per_block = max(1, block_bytes // max(1, per_part * trial_bytes))
    for b in range(0, len(parts), per_block):
        group = parts[b:b + per_block]
        starts = [offset + ta * trial_bytes + slab_start * item for ta, _ in group]
        ends = [a + (tb - ta - 1) * trial_bytes + slab_bytes for a, (ta, tb) in zip(starts, group)]
        got = source.fetch(list(zip(starts, ends)), keep=False, gap=0)
        for raw, a, e, (ta, tb) in zip(got, starts, ends, group):
            if len(raw) != e - a:
                raise hdf5read.HDF5Truncated(f"expected {e - a} bytes at offset {a}, got {len(raw)}")
            flat = np.frombuffer(raw, dtype=dtype)
            nz, ny, nx = slab_shape
            slabs = np.lib.stride_tricks.as_strided(flat, shape=(tb - ta, nz, ny, nx), writeable=False,
                                                    strides=(trial_bytes, ny * nx * item, nx * item, item))
            out[ta:tb] = _to_psc(slabs[(slice(None), *index)], scale)


_BETA_READERS: dict[str, Callable[..., np.ndarray]] = {"hdf5": _read_betas_hdf5, "nii.gz": _read_betas_nifti}

