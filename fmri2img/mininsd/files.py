"""NSD's file formats as mini-NSD writes them: MATLAB v5 design, stimulus CSV, NIfTI-1 and HDF5 betas.

Split from :mod:`fmri2img.mininsd.generate` (which decides *what* to write); the facts behind
each format are in that module's docstring. Every writer gives byte-identical output for the
same input.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import scipy.io

_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by fmri2img mini-NSD"
_N_DESIGN_SUBJECTS = 8


def smallest_uint(a: np.ndarray) -> np.ndarray:
    """Integer-valued doubles as MATLAB stores them: the smallest unsigned type of 16 or 32 bits."""
    return a.astype(np.uint16 if a.max() < 2**16 else np.uint32)


STIM_INFO_COLUMNS: tuple[str, ...] = (
    ("", "cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000", "shared1000")
    + tuple(f"subject{s}" for s in range(1, _N_DESIGN_SUBJECTS + 1))
    + tuple(f"subject{s}_rep{k}" for s in range(1, _N_DESIGN_SUBJECTS + 1) for k in range(3)))


def stim_info_csv(spec: Any, design: dict[str, np.ndarray]) -> bytes:
    """``nsd_stim_info_merged.csv`` with NSD's columns for the images of ``imgBrick``."""
    n = spec.n_images
    master = design["masterordering"][0].astype(np.int64)
    shared = np.zeros(n, bool)
    shared[design["sharedix"][0].astype(np.int64) - 1] = True
    member = np.zeros((_N_DESIGN_SUBJECTS, n), np.int64)
    reps = np.zeros((_N_DESIGN_SUBJECTS, n, 3), np.int64)
    for s in range(_N_DESIGN_SUBJECTS):
        row = design["subjectim"][s].astype(np.int64) - 1
        member[s, row] = 1
        seen = np.zeros(n, np.int64)
        for t, image in enumerate(row[master - 1]):  # trial t (0-based) shows 73k id `image`
            reps[s, image, seen[image]] = t + 1
            seen[image] += 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(STIM_INFO_COLUMNS)
    for i in range(n):
        w.writerow([i, -1, "mini-nsd", "(0, 0, 0, 0)", 0.0, i, False, False, bool(shared[i]),
                    *member[:, i].tolist(), *reps[:, i].reshape(-1).tolist()])
    return buf.getvalue().encode()


def make_stimpattern(n_sessions: int, trials_per_session: int) -> np.ndarray:
    """(n_sessions, runs, slots) with 1 at stimulus trials; blanks spread through every run."""
    runs = max([r for r in range(1, 13) if trials_per_session % r == 0 and trials_per_session // r >= 5])
    per_run = trials_per_session // runs
    slots = per_run + max(1, per_run // 6)
    keep = np.round(np.linspace(0, slots - 1, per_run)).astype(int)
    row = np.zeros(slots, np.uint8)
    row[keep] = 1
    return np.broadcast_to(row, (n_sessions, runs, slots)).astype(np.uint8)


def mat_bytes(fields: dict[str, np.ndarray]) -> bytes:
    """A MATLAB v5 file of ``fields`` as bytes, with a fixed header (no creation time): deterministic."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, fields, format="5", do_compression=False, oned_as="row")
    raw = bytearray(buf.getvalue())
    raw[:116] = _MAT_HEADER.ljust(116)  # savemat stamps the creation time here
    return bytes(raw)


_TR_SECONDS = 4 / 3  # NSD's func1pt8mm time step (1.333 s)


def _nifti_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray) -> bytes:
    """A single-file NIfTI-1 header (348 bytes + empty extension flag) as NSD's func1pt8mm files have."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    zooms = (1.8, 1.8, 1.8, _TR_SECONDS)[:len(shape)]
    hdr.set_zooms(tuple(abs(float(affine[k, k])) if k < 3 else z for k, z in enumerate(zooms)))
    hdr.set_data_offset(352)
    return hdr.binaryblock + b"\x00" * 4


def write_nifti_gz(path: Path, data_f_bytes: Any, shape: tuple[int, ...], dtype: np.dtype,
                   affine: np.ndarray) -> None:
    """Write header + data (already in NIfTI's Fortran order) through gzip, deterministic bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(_nifti_header(shape, np.dtype(dtype), affine))
        gz.write(data_f_bytes)


def nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped single-file NIfTI-1 of ``data`` (C-order array, written in NIfTI's Fortran order) as bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(_nifti_header(data.shape, data.dtype, affine))
        gz.write(np.asfortranarray(data).tobytes(order="F"))
    return buf.getvalue()


def write_betas_hdf5(path: Path, betas: np.ndarray, layout: str) -> None:
    """Dataset ``betas`` (trials, Z, Y, X): NSD's chunks of one voxel's trials, written a z-slab at a time."""
    chunks = (betas.shape[0], 1, 1, 1) if layout == "chunked" else None
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("betas", shape=betas.shape, dtype=betas.dtype, chunks=chunks, track_times=False)
        for z in range(betas.shape[1]):
            ds[:, z] = betas[:, z]
