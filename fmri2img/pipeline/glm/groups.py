"""Where the glm stage writes, and the templates of its groups.

- ``subjects/subjNN/glm/sessionSS``: what the GLM estimated for a session (GLMsingle's outputs):
  ``betas (model, trial, voxel)`` float32 in percent signal change for the models fitted
  (``fithrf``, ``fithrf_glmdenoise``, ``fithrf_glmdenoise_rr``: GLMsingle's types B, C, D), trials
  in time order with ``image`` (0-based 73k id, -1 when unknown) and ``run`` coordinates;
  ``onoff_r2``, ``onoff_beta`` and ``meanvol`` (type A), ``r2 (model, voxel)``, ``hrf_index``
  (0-based into the library), ``frac``, ``noise_pool`` and the scalar ``pcnum``; voxel
  coordinates ``voxel_i, voxel_j, voxel_k`` (0-based NIfTI indices). Regions: voxel blocks.
- ``subjects/subjNN/glm/_work/sessionSS/timeseries``: the session's time series staged as
  ``data (time, voxel)`` float32, one chunk a run × a voxel block, so that a block task reads
  every run of its voxels and no task holds a whole session (the rechunk from volumes to voxel
  blocks). Regions: runs. Deleted once the session's group is complete.
- ``subjects/subjNN/glm/_work/sessionSS/fit``: types A and B per voxel block (the first pass),
  read again by the last pass. Regions: voxel blocks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from fmri2img.storage import schema
from fmri2img.storage.store import Region, regular_regions

__all__ = ["glm_group", "work_group", "block_regions", "run_regions", "timeseries_template", "fit_template",
           "session_template"]


def glm_group(subject: int, session: int) -> str:
    """``subjects/subjNN/glm/sessionSS``."""
    return schema.subject_group(subject, f"glm/session{int(session):02d}")


def work_group(subject: int, session: int, part: str) -> str:
    """``subjects/subjNN/glm/_work/sessionSS/<part>`` (intermediate; ``timeseries`` or ``fit``)."""
    return schema.subject_group(subject, f"glm/_work/session{int(session):02d}/{part}")


def block_regions(n_voxels: int, block_size: int) -> list[Region]:
    """Voxel blocks of ``block_size`` voxels (the last one shorter)."""
    return regular_regions("voxel", n_voxels, block_size, "voxels")


def run_regions(n_volumes: Sequence[int]) -> list[Region]:
    """One region a run along the staged time axis."""
    bounds = np.concatenate([[0], np.cumsum(n_volumes)]).astype(int)
    return [Region(r, "time", int(bounds[r]), int(bounds[r + 1]), f"run-{r + 1:02d}") for r in range(len(n_volumes))]


def _voxel_coords(voxels: np.ndarray) -> dict:
    ijk = np.asarray(voxels, dtype=np.int64)
    return {f"voxel_{c}": ("voxel", ijk[:, k].astype(np.int32)) for k, c in enumerate("ijk")}


def timeseries_template(n_volumes: Sequence[int], voxels: np.ndarray, block_size: int) -> xr.Dataset:
    """The staged time series: ``data (time, voxel)`` float32, chunks of one run × one voxel block."""
    n_vol = np.asarray(n_volumes, dtype=int)
    if len(set(n_vol.tolist())) != 1:  # chunks must align with the run regions
        chunk_t = int(np.gcd.reduce(n_vol))
    else:
        chunk_t = int(n_vol[0])
    total, n = int(n_vol.sum()), len(voxels)
    run = np.repeat(np.arange(len(n_vol), dtype=np.int16), n_vol)
    volume = np.concatenate([np.arange(k, dtype=np.int32) for k in n_vol])
    ds = xr.Dataset({"data": (("time", "voxel"), schema.lazy_zeros((total, n), (chunk_t, block_size), np.float32))},
                    coords={"run": ("time", run), "volume": ("time", volume), **_voxel_coords(voxels)})
    ds["data"].attrs["long_name"] = "time series staged for the GLM (raw intensities)"
    return ds


def fit_template(n_trials: int, n_hrf: int, voxels: np.ndarray, block_size: int) -> xr.Dataset:
    """Types A and B of every voxel (the first pass)."""
    n = len(voxels)

    def vec(dtype):
        return ("voxel",), schema.lazy_zeros((n,), (block_size,), dtype)

    data = {name: vec(np.float64) for name in ("onoff_r2", "onoff_beta", "meanvol", "r2_b")}
    data["hrf_index"] = vec(np.int16)
    data["hrf_r2"] = (("hrf", "voxel"), schema.lazy_zeros((n_hrf, n), (n_hrf, block_size), np.float32))
    data["betas_b"] = (("trial", "voxel"), schema.lazy_zeros((n_trials, n), (n_trials, block_size), np.float32))
    return xr.Dataset(data, coords=_voxel_coords(voxels))


def session_template(models: Sequence[str], images: np.ndarray, runs: np.ndarray, voxels: np.ndarray,
                     block_size: int, pcnum: int) -> xr.Dataset:
    """``subjects/subjNN/glm/sessionSS`` (see the module docstring)."""
    n_m, n_t, n = len(models), len(images), len(voxels)

    def lazy(shape, chunks, dtype):
        return schema.lazy_zeros(shape, chunks, dtype)

    ds = xr.Dataset(
        {
            "betas": (("model", "trial", "voxel"), lazy((n_m, n_t, n), (n_m, n_t, block_size), np.float32)),
            "r2": (("model", "voxel"), lazy((n_m, n), (n_m, block_size), np.float32)),
            "onoff_r2": (("voxel",), lazy((n,), (block_size,), np.float32)),
            "onoff_beta": (("voxel",), lazy((n,), (block_size,), np.float32)),
            "meanvol": (("voxel",), lazy((n,), (block_size,), np.float32)),
            "hrf_index": (("voxel",), lazy((n,), (block_size,), np.int16)),
            "frac": (("voxel",), lazy((n,), (block_size,), np.float32)),
            "noise_pool": (("voxel",), lazy((n,), (block_size,), bool)),
            "pcnum": ((), np.asarray(int(pcnum), dtype=np.int16)),
        },
        coords={"model": ("model", np.asarray(list(models), dtype=object)),
                "trial": ("trial", np.arange(n_t, dtype=np.int64)),
                "image": ("trial", np.asarray(images, dtype=np.int64)),
                "run": ("trial", np.asarray(runs, dtype=np.int16)),
                **_voxel_coords(voxels)},
    )
    ds["betas"].attrs.update(units="percent signal change", long_name="single-trial betas per model")
    ds["r2"].attrs.update(units="percent", long_name="variance explained by each model")
    ds["onoff_r2"].attrs.update(units="percent", long_name="variance explained by the ON-OFF model (type A)")
    ds["meanvol"].attrs["long_name"] = "mean of all volumes (raw intensity)"
    ds["hrf_index"].attrs["long_name"] = "0-based index of the voxel's HRF in the library"
    ds["frac"].attrs["long_name"] = "fractional-ridge fraction of type D (NaN without it)"
    ds["noise_pool"].attrs["long_name"] = "voxel in GLMdenoise's noise pool"
    ds["pcnum"].attrs["long_name"] = "noise components in types C and D"
    return ds
