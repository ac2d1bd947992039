"""Readers for the decode stage's inputs: new betas of a fitted subject, trial lists.

New scans come as

* a session file in the subject's func1pt8mm space, in NSD's layout (``.nii.gz`` / ``.nii``
  X×Y×Z×trials, or ``.hdf5`` / ``.h5`` with dataset ``betas`` of shape (trials, Z, Y, X)),
  masked with the subject's nsdgeneral mask by the NSD readers of :mod:`fmri2img.storage.nsd`
  (NSD's int16 × 300 by default; floats need their ``scale``);
* or the subject's masked voxels already, trials × voxels: a NumPy ``.npy`` file or a Zarr
  array (``.zarr``; an array, or a group holding one array ``betas``), in percent signal
  change unless ``scale`` says otherwise.

A trials CSV has a column ``trial`` (1-based row of the input) and optionally ``image``
(0-based NSD-73k id of the image shown, the store's ``image`` coordinate).

Every check raises :class:`DecodeInputError` naming the input, what was expected and the fix.
Only this module (and the rest of ``storage/``) turns URLs into files.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from fmri2img.storage import secrets
from fmri2img.storage import nsd, urls

#: input kinds by file ending (checked in this order)
SESSION_SUFFIXES = {".nii.gz": "nii.gz", ".nii": "nii.gz", ".hdf5": "hdf5", ".h5": "hdf5"}
ARRAY_SUFFIXES = (".npy", ".zarr")
_SESSION = re.compile(r"betas_session(\d+)")


class DecodeInputError(ValueError):
    """New betas (or their trial list) cannot be decoded; the message names the input and the fix."""


@dataclass(frozen=True)
class SubjectSpace:
    """What the fitted subject's voxels are: positions in its func1pt8mm volume.

    Attributes
    ----------
    subject : int
    ijk : int array of shape (3, n_voxels)
        ``voxel_i/j/k`` of the store's betas (nsdgeneral voxels in C order).
    trials_per_session : int
        Trials a session file must hold (750 in NSD).
    mask_url : str
        The subject's ``nsdgeneral.nii.gz`` (to place the voxels in a session file's volume).
    """

    subject: int
    ijk: np.ndarray
    trials_per_session: int
    mask_url: str

    @property
    def n_voxels(self) -> int:
        return int(self.ijk.shape[1])


def input_kind(url: str) -> str:
    """``"nii.gz"``, ``"hdf5"``, ``"npy"`` or ``"zarr"`` from the name of ``url``."""
    name = str(url).rstrip("/").lower()
    for suffix, kind in SESSION_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    for suffix in ARRAY_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise DecodeInputError(
        f"--betas {secrets.redact(url)}: cannot tell what it holds from its name; expected a session file "
        f"({', '.join(SESSION_SUFFIXES)}) in the subject's func1pt8mm space, or the subject's masked voxels "
        f"(trials × voxels) as .npy or .zarr")


def input_name(url: str) -> str:
    """The name of the decoded group for an input: its file name without the ending."""
    name = str(url).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (*SESSION_SUFFIXES, *ARRAY_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if not name:
        raise DecodeInputError(f"--betas {secrets.redact(url)}: no usable name in the URL; give one with --name")
    return name


def check_subject(url: str, subject: int) -> None:
    """A path in NSD's layout names its subject (``.../subj02/...``): it must be the fitted one."""
    found = re.findall(r"(?:^|/)subj(\d{2})(?=/)", str(url))
    if found and int(found[-1]) != int(subject):
        raise DecodeInputError(
            f"--betas {secrets.redact(url)} is subject {int(found[-1])}'s (subj{found[-1]} in its path) but the models "
            f"are subject {subject}'s: decode it with --subject {int(found[-1])}, or give that subject's own scans")


def session_of(url: str) -> int | None:
    """The session number of an NSD-named session file (``betas_session07.hdf5`` → 7), else None."""
    m = _SESSION.search(str(url).rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


class _OneFile:
    """An :class:`~fmri2img.storage.nsd.NSDLayout` stand-in whose only betas file is ``path``."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path, self.fmt = path, fmt

    def betas(self, subject: int, session: int, fmt: str = "nii.gz") -> str:
        return self.path if fmt == self.fmt else f"{self.path}.not-{fmt}"


def subject_voxels(space: SubjectSpace, storage_options: Mapping[str, Any] | None) -> tuple[np.ndarray, tuple]:
    """Flat C-order voxel indices and the volume shape, from the subject's nsdgeneral mask.

    The mask must select exactly the voxels the subject was fitted on (same positions).
    """
    fs, path = urls.filesystem(space.mask_url, dict(storage_options or {}) or None)
    mask = nsd.read_mask(fs, path)
    voxels = np.flatnonzero(mask.ravel(order="C")).astype(np.int64)
    fitted = np.ravel_multi_index(tuple(space.ijk), mask.shape, mode="clip") if space.n_voxels else voxels[:0]
    inside = bool(np.all(space.ijk < np.asarray(mask.shape)[:, None])) if space.n_voxels else True
    if not inside or len(voxels) != space.n_voxels or not np.array_equal(voxels, fitted):
        raise DecodeInputError(
            f"mask {secrets.redact(space.mask_url)} ({_fmt(mask.shape)}) selects {len(voxels)} voxels, but subject "
            f"{space.subject} was fitted on {space.n_voxels} other voxel positions: the mask must be that subject's "
            f"func1pt8mm nsdgeneral.nii.gz (give it with --mask)")
    return voxels, tuple(int(s) for s in mask.shape)


def read_session(url: str, storage_options: Mapping[str, Any] | None, space: SubjectSpace, *,
                 scale: str | float = nsd.NSD_SCALE, mask_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Masked single-trial betas of a session file: array of shape (trials, n_voxels), float32.

    The file's volume must be the mask's (the NSD readers say so otherwise) and hold
    ``space.trials_per_session`` trials; values are divided by ``scale`` (see
    :func:`fmri2img.storage.nsd.read_session_betas`).
    """
    voxels, shape = subject_voxels(space, mask_options if mask_options is not None else storage_options)
    fmt = input_kind(url)
    fs, path = urls.filesystem(url, dict(storage_options or {}) or None)
    if not fs.exists(path):
        raise DecodeInputError(f"--betas {secrets.redact(url)} does not exist: check the path")
    return nsd.read_session_betas(fs, _OneFile(path, fmt), space.subject, session_of(url) or 1, voxels, shape,
                                  space.trials_per_session, prefer=fmt, scale=scale)


def read_array(url: str, storage_options: Mapping[str, Any] | None, space: SubjectSpace, *,
               scale: float = 1.0) -> np.ndarray:
    """The subject's masked voxels from a ``.npy`` or Zarr array: shape (trials, n_voxels), float32."""
    kind = input_kind(url)
    opts = dict(storage_options or {}) or None
    if kind == "npy":
        fs, path = urls.filesystem(url, opts)
        if not fs.exists(path):
            raise DecodeInputError(f"--betas {secrets.redact(url)} does not exist: check the path")
        with fs.open(path, "rb") as f:
            try:
                values = np.load(io.BytesIO(f.read()), allow_pickle=False)
            except ValueError as exc:
                raise DecodeInputError(f"--betas {secrets.redact(url)} is not a plain numeric .npy array ({exc}); "
                                       f"save it with np.save(path, betas.astype(np.float32))") from None
    elif kind == "zarr":
        values = _read_zarr(url, opts)
    else:
        raise DecodeInputError(f"--betas {secrets.redact(url)} is a session file, not an array of masked voxels")
    values = np.asarray(values)
    if values.ndim != 2 or values.dtype.kind not in "iuf":
        raise DecodeInputError(
            f"--betas {secrets.redact(url)} holds a {values.dtype} array of shape {values.shape}; expected numbers of "
            f"shape (trials, {space.n_voxels}): subject {space.subject}'s nsdgeneral voxels in C order")
    if values.shape[1] != space.n_voxels:
        raise DecodeInputError(
            f"--betas {secrets.redact(url)} has {values.shape[1]} voxels per trial but subject {space.subject} was "
            f"fitted on {space.n_voxels}: give that subject's nsdgeneral voxels (C order, as "
            f"subjects/subj{space.subject:02d}/betas), or its session file")
    return (values.astype(np.float32) / np.float32(_divisor(scale))).astype(np.float32)


def _read_zarr(url: str, opts: dict | None) -> np.ndarray:
    import zarr

    try:
        node = zarr.open(urls.zarr_store(url, opts, read_only=True), mode="r")
    except Exception as exc:  # zarr raises several types for a missing or foreign path
        raise DecodeInputError(f"--betas {secrets.redact(url)} is not a readable Zarr array ({type(exc).__name__}: "
                               f"{exc}): check the path") from None
    if isinstance(node, zarr.Group):
        if "betas" not in node:
            raise DecodeInputError(f"--betas {secrets.redact(url)} is a Zarr group without an array 'betas' (found "
                                   f"{sorted(node.keys())}): point --betas at the array")
        node = node["betas"]
    return np.asarray(node[...])


def _divisor(scale: str | float) -> float:
    if isinstance(scale, str):
        raise DecodeInputError(f"betas scale {scale!r} applies to session files in NSD's units; arrays of masked "
                               f"voxels take a number (1: percent signal change, the default)")
    if isinstance(scale, bool) or not 0 < float(scale) < float("inf"):
        raise DecodeInputError(f"betas scale {scale!r}: expected a positive number")
    return float(scale)


def check_finite(betas: np.ndarray, url: str, trials: np.ndarray) -> None:
    """NaN/inf in the selected trials is refused, naming how many and where."""
    bad = ~np.isfinite(betas)
    if bad.any():
        rows, cols = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        raise DecodeInputError(
            f"--betas {secrets.redact(url)}: {int(bad.sum())} NaN/inf values in {len(cols)} voxels of {len(rows)} "
            f"trials (first trial {int(trials[rows[0]]) + 1}, voxel {int(cols[0])}); the decoder needs every voxel: "
            f"fix the data, or leave those trials out with --trials / --trials-file")


def parse_trials(text: str, n_rows: int) -> np.ndarray:
    """``"1-750"``, ``"1,3,5-7"`` (1-based) → 0-based row positions, checked against ``n_rows``."""
    rows: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            rows.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise DecodeInputError(f"--trials {text!r}: expected 1-based trial numbers like 1-750 or 1,3,5-7") from None
    return _check_rows(np.asarray(rows, dtype=np.int64), n_rows, f"--trials {text!r}")


def _check_rows(rows: np.ndarray, n_rows: int, what: str) -> np.ndarray:
    if rows.size == 0:
        raise DecodeInputError(f"{what}: selects no trial; give at least one 1-based trial number")
    if rows.min() < 1 or rows.max() > n_rows:
        raise DecodeInputError(f"{what}: trials {int(rows.min())}..{int(rows.max())} are outside the input's "
                               f"1..{n_rows}")
    if len(np.unique(rows)) != len(rows):
        raise DecodeInputError(f"{what}: a trial is listed twice; list each trial once")
    return rows - 1


def read_trials_csv(url: str, storage_options: Mapping[str, Any] | None, n_rows: int
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """A trials CSV → (0-based row positions, 0-based NSD-73k ids or None when it has no ``image`` column)."""
    fs, path = urls.filesystem(url, dict(storage_options or {}) or None)
    if not fs.exists(path):
        raise DecodeInputError(f"--trials-file {secrets.redact(url)} does not exist: check the path")
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "trial" not in columns:
        raise DecodeInputError(f"--trials-file {secrets.redact(url)} has columns {columns}; expected 'trial' (1-based row "
                               f"of --betas) and optionally 'image' (0-based NSD-73k id of the image shown)")
    trials, images = [], []
    for line, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            trials.append(int(row["trial"]))
            if "image" in columns:
                images.append(int(row["image"]))
        except ValueError:
            raise DecodeInputError(f"--trials-file {secrets.redact(url)} line {line}: {row}; expected integers in "
                                   f"'trial' and 'image'") from None
    rows = _check_rows(np.asarray(trials, np.int64), n_rows, f"--trials-file {secrets.redact(url)}")
    ids = np.asarray(images, np.int64) if "image" in columns else None
    if ids is not None and ids.size and ids.min() < 0:
        raise DecodeInputError(f"--trials-file {secrets.redact(url)}: image ids must be 0-based NSD-73k ids (≥ 0)")
    return rows, ids


def _fmt(shape) -> str:
    return "×".join(str(int(s)) for s in shape)
