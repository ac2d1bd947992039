"""``fmri2img glm --export DIR``: the chosen model's betas as NSD-layout betas files.

Each fitted session becomes ``nsddata_betas/ppdata/subjNN/func1pt8mm/betas_fithrf_GLMdenoise_RR/
betas_sessionSS.nii.gz`` and its ``.hdf5`` twin under DIR, in NSD's format (int16 = percent signal
change × 300, X×Y×Z×trials, 0 outside the GLM's voxels; the HDF5 file's dataset ``betas`` of h5py
shape (trials, Z, Y, X) in NSD's chunks of one voxel's trials), so that ``fmri2img ingest`` and
``fmri2img decode --betas`` read them as they read NSD's own files.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fmri2img.mininsd.files import write_betas_hdf5, write_nifti_gz
from fmri2img.pipeline.glm.groups import glm_group
from fmri2img.storage import urls
from fmri2img.storage.nsd import BETA_SCALE, NSDLayout
from fmri2img.storage.store import Store

__all__ = ["export_betas", "session_volume"]


def session_volume(store: Store, subject: int, session: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """A session's betas of ``model`` as NSD stores them: int16 (trials, Z, Y, X) × 300, and the affine."""
    g = store.group(glm_group(subject, session))
    models = [str(m) for m in g["model"][:]]
    if model not in models:
        raise ValueError(f"{glm_group(subject, session)} has no model {model!r}; it has {models}")
    shape = tuple(json.loads(g.attrs["volume_shape"]))
    affine = np.asarray(json.loads(g.attrs["affine"]), dtype=float)
    betas = np.asarray(g["betas"][models.index(model)], np.float32)
    ijk = [np.asarray(g[f"voxel_{c}"][:], np.int64) for c in "ijk"]
    volume = np.zeros((betas.shape[0], shape[2], shape[1], shape[0]), np.int16)
    volume[:, ijk[2], ijk[1], ijk[0]] = np.clip(np.rint(betas * BETA_SCALE), -32768, 32767).astype(np.int16)
    return volume, affine


def export_betas(store: Store, subject: int, sessions: Sequence[int], model: str, url: str, *,
                 storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write each session's NSD-layout betas files under ``url``; returns label → written path.

    Memory: one session's volume (NSD: 750 × 81 × 104 × 83 int16, about 1 GB) at a time.
    """
    fs, root = urls.filesystem(url, dict(storage_options or {}) or None)
    layout = NSDLayout(root)
    out = {}
    for s in sessions:
        volume, affine = session_volume(store, subject, s, model)
        shape = (volume.shape[3], volume.shape[2], volume.shape[1], volume.shape[0])
        with tempfile.TemporaryDirectory(prefix="fmri2img-export-") as tmp:
            local_gz, local_h5 = Path(tmp) / "b.nii.gz", Path(tmp) / "b.hdf5"
            write_nifti_gz(local_gz, memoryview(volume).cast("B"), shape, volume.dtype, affine)
            write_betas_hdf5(local_h5, volume, "chunked")
            for local, fmt in ((local_gz, "nii.gz"), (local_h5, "hdf5")):
                target = layout.betas(subject, s, fmt)
                fs.makedirs(os.path.dirname(target), exist_ok=True)
                fs.put_file(str(local), target)
                out[f"session{s:02d}.{fmt}"] = target
    return out
