"""Single-trial betas of one session: ``betas_sessionNN.hdf5`` by byte range, or ``.nii.gz`` through gzip.

Facts (NSD data manual, "Functional data (NSD)"; nsd_access ``read_betas``; Brain-Diffuser's
``prepare_nsddata.py``): ``betas_fithrf_GLMdenoise_RR/betas_sessionNN.{nii.gz,hdf5}`` hold 750
trials of int16 = percent signal change × 300. The ``.nii.gz`` is X×Y×Z×750; the ``.hdf5``
holds dataset ``betas`` of MATLAB size X×Y×Z×750 (h5py shape (750, Z, Y, X)), uncompressed,
chunked [1 1 1 750] (one voxel's trials per chunk). The chunked layout is read by walking
its chunk index (:mod:`fmri2img.storage.nsd.hdf5chunks`) and fetching only the masked
voxels' chunks; a contiguous file is read by range over the voxels' z-range; anything else
through h5py.

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

from fmri2img.storage.nsd import hdf5chunks
from fmri2img.storage.nsd._common import (BETA_SCALE, PUBLIC_SESSIONS, NSDError, NSDFileMissing, NSDFormatError,
                                          NSDLayout, _BLOCK_BYTES, _RANGE_BLOCK, _contiguous_offset,
                                          _fmt, _name, _open, _truncated)
from fmri2img.storage.nsd.volumes import _nifti_from_stream

logger = logging.getLogger(__name__)

_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
#: ``scale`` value meaning "NSD's own units": int16 files, divided by 300
NSD_SCALE = "nsd"
_CHUNK_BLOCK = 16 * 2**20  # most bytes merged into one range request for chunked reads
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
    """Read dataset ``betas`` of shape (T, Z, Y, X) at the voxels: by chunk, by z-range, or through h5py."""
    try:
        h5 = h5py.File(f, "r")
    except OSError as exc:
        raise _truncated(path, exc) from exc
    with h5:
        ds = _betas_dataset(h5, path, volume_shape, expected_trials)
        _check_dtype(path, ds.dtype, scale)
        x, y, z = np.unravel_index(voxels, volume_shape)
        out = np.empty((expected_trials, len(voxels)), np.float32)
        if not len(voxels):
            return out
        index = hdf5chunks.chunk_index(f, ds) if fs is not None else None
        if index is not None:
            _read_chunks_by_range(fs, path, index, np.asarray(ds.fillvalue, ds.dtype), (z, y, x), out, scale,
                                  chunk_map, _file_size(f))
            return out
        # The bounding box's z-range is one contiguous byte run per trial: a few large reads
        # instead of one tiny read per x-row of the box (what an exact box hyperslab costs).
        z0, z1 = int(z.min()), int(z.max()) + 1
        slab_items = (z1 - z0) * volume_shape[1] * volume_shape[0]
        offset = _contiguous_offset(ds)
        if offset is not None and fs is not None:
            _read_slabs_by_range(fs, path, ds.dtype, offset, int(np.prod(ds.shape[1:])), z0 * volume_shape[1] *
                                 volume_shape[0], (z1 - z0, volume_shape[1], volume_shape[0]),
                                 (z - z0, y, x), out, 4 * block_bytes, scale)
            return out
        for t0, t1 in _trial_blocks(expected_trials, slab_items * ds.dtype.itemsize, block_bytes):
            try:
                slab = ds[t0:t1, z0:z1]
            except (OSError, ValueError) as exc:
                raise _truncated(path, exc) from exc
            out[t0:t1] = _to_psc(slab[:, z - z0, y, x], scale)
        return out


def _fetch_ranges(fs: Any, path: str, starts: list[int], ends: list[int]) -> list[bytes]:
    """Bytes of each [start, end) range, fetched concurrently (on object stores) in one batch."""
    if not starts:
        return []
    try:
        got = fs.cat_ranges([path] * len(starts), list(starts), list(ends))
    except (OSError, ValueError) as exc:
        raise _truncated(path, exc) from exc
    for part in got:
        if isinstance(part, Exception):
            raise _truncated(path, part)
    return got


def _file_size(f: Any) -> int:
    size = getattr(f, "size", None)
    if size is None:
        pos = f.tell()
        size = f.seek(0, 2)
        f.seek(pos)
    return int(size)


def _wanted_chunks(index: hdf5chunks.ChunkIndex, zyx: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear numbers of the chunks holding the voxels (all trial chunks), their spatial ids, and each voxel's."""
    z, y, x = (np.asarray(a, np.int64) for a in zyx)
    _, cz, cy, cx = index.chunks
    grid = index.grid
    spatial = np.ravel_multi_index((z // cz, y // cy, x // cx), grid[1:])
    uniq, inverse = np.unique(spatial, return_inverse=True)
    n_spatial = int(np.prod(grid[1:]))
    wanted = (np.arange(grid[0], dtype=np.int64)[:, None] * n_spatial + uniq[None, :]).ravel()
    return wanted, uniq, inverse


def session_chunk_map(fs: Any, layout: NSDLayout, subject: int, session: int, voxels: np.ndarray,
                      volume_shape: tuple[int, int, int]) -> hdf5chunks.ChunkMap | None:
    """Walk one session file's chunk index for the voxels: a map other sessions of the subject can reuse.

    None when the session has no chunked ``.hdf5`` file this reader walks itself.
    """
    path = layout.betas(subject, session, "hdf5")
    if not fs.exists(path):
        return None
    volume_shape = tuple(int(s) for s in volume_shape)
    voxels = _check_voxels(voxels, volume_shape)
    with _open(fs, path, what="single-trial betas", ranged=True, block_size=_HEADER_BLOCK) as f:
        try:
            h5 = h5py.File(f, "r")
        except OSError as exc:
            raise _truncated(path, exc) from exc
        with h5:
            ds = h5.get("betas")
            index = hdf5chunks.chunk_index(f, ds) if isinstance(ds, h5py.Dataset) and ds.ndim == 4 else None
            if index is None or tuple(ds.shape[:0:-1]) != volume_shape:
                return None
            x, y, z = np.unravel_index(voxels, volume_shape)
            wanted, _, _ = _wanted_chunks(index, (z, y, x))
            try:
                return hdf5chunks.build_map(index, wanted, _node_fetcher(fs, path), _file_size(f))
            except hdf5chunks.ChunkIndexError as exc:
                raise _truncated(path, exc) from exc


def _node_fetcher(fs: Any, path: str):
    def fetch(addresses: list[int], nbytes: int) -> list[bytes]:
        return _fetch_ranges(fs, path, addresses, [a + nbytes for a in addresses])
    return fetch


def _read_chunks_by_range(fs: Any, path: str, index: hdf5chunks.ChunkIndex, fill: np.ndarray, zyx: tuple,
                          out: np.ndarray, scale: tuple, chunk_map: hdf5chunks.ChunkMap | None = None,
                          file_size: int = -1) -> None:
    """``out[:, v] = betas[:, z_v, y_v, x_v] / scale`` from the voxels' chunks alone.

    The B-tree is walked one level per batch of range requests; then the chunks are fetched
    in one batch, the smallest gaps between them read through (at most as many unwanted bytes
    as wanted ones) to cut the number of requests.
    """
    z, y, x = (np.asarray(a, np.int64) for a in zyx)
    trials = out.shape[0]
    ct, cz, cy, cx = index.chunks
    grid = index.grid
    wanted, uniq, inverse = _wanted_chunks(index, zyx)
    fetch = _node_fetcher(fs, path)
    found = hdf5chunks.reuse_map(chunk_map, index, wanted, file_size, fetch) if chunk_map is not None else None
    try:
        address, size = found if found is not None else hdf5chunks.locate_chunks(index, wanted, fetch)
    except hdf5chunks.ChunkIndexError as exc:
        raise _truncated(path, exc) from exc
    logger.debug("%s: %d chunks located %s", path, len(wanted), "by the subject's chunk map" if found else "by walk")
    cb = index.chunk_bytes
    present = address >= 0
    if np.any(size[present] != cb):
        raise _truncated(path, ValueError(f"a chunk holds {int(size[present][size[present] != cb][0])} bytes, "
                                          f"expected {cb} (uncompressed)"))
    # read through the smallest gaps until as many unwanted bytes as wanted ones: at most 2× the
    # chunks' bytes, in the fewest requests that allows
    m_starts, m_ends = hdf5chunks.merge_ranges(address[present], cb, extra=int(present.sum()) * cb,
                                               max_block=_CHUNK_BLOCK)
    m_starts, m_ends = m_starts.tolist(), m_ends.tolist()
    blocks = _fetch_ranges(fs, path, m_starts, m_ends)
    base = np.asarray(m_starts, np.int64)
    raw = bytearray(len(wanted) * cb)
    empty = np.broadcast_to(fill, index.chunks).tobytes()
    for j, a in enumerate(address.tolist()):
        if a < 0:
            raw[j * cb:(j + 1) * cb] = empty
            continue
        b = int(np.searchsorted(base, a, side="right")) - 1
        piece = blocks[b][a - m_starts[b]:a - m_starts[b] + cb]
        if len(piece) != cb:
            raise _truncated(path, EOFError(f"expected {cb} bytes of a chunk at byte {a}, got {len(piece)}"))
        raw[j * cb:(j + 1) * cb] = piece
    chunks = np.frombuffer(raw, dtype=fill.dtype).reshape(grid[0], len(uniq), *index.chunks)
    dz, dy, dx = z % cz, y % cy, x % cx
    for a in range(grid[0]):
        t0, t1 = a * ct, min(trials, (a + 1) * ct)
        values = chunks[a][inverse, :, dz, dy, dx]  # (n_voxels, ct)
        out[t0:t1] = _to_psc(values[:, :t1 - t0].T, scale)


def _read_slabs_by_range(fs: Any, path: str, dtype: np.dtype, offset: int, trial_items: int, slab_start: int,
                         slab_shape: tuple[int, int, int], index: tuple, out: np.ndarray, block_bytes: int,
                         scale: tuple) -> None:
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
        try:
            got = fs.cat_ranges([path] * len(group), starts, ends)
        except (OSError, ValueError) as exc:
            raise _truncated(path, exc) from exc
        for raw, a, e, (ta, tb) in zip(got, starts, ends, group):
            if isinstance(raw, Exception):
                raise _truncated(path, raw)
            if len(raw) != e - a:
                raise _truncated(path, EOFError(f"expected {e - a} bytes at offset {a}, got {len(raw)}"))
            flat = np.frombuffer(raw, dtype=dtype)
            nz, ny, nx = slab_shape
            slabs = np.lib.stride_tricks.as_strided(flat, shape=(tb - ta, nz, ny, nx), writeable=False,
                                                    strides=(trial_bytes, ny * nx * item, nx * item, item))
            out[ta:tb] = _to_psc(slabs[(slice(None), *index)], scale)


_BETA_READERS: dict[str, Callable[..., np.ndarray]] = {"hdf5": _read_betas_hdf5, "nii.gz": _read_betas_nifti}

