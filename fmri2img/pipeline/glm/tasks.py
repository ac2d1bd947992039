"""The glm stage's tasks: each wires one run or one voxel block of the store to :mod:`fmri2img.glm`.

Every function here runs on a worker and touches only its own region: a run's time series
(:func:`stage_run`), or a voxel block's time series and first-pass results (the others). A
block's memory is its voxels × every volume of the session (float64 in the fits), never the
session's whole brain.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from fmri2img import glm
from fmri2img.storage.store import Region, Store

__all__ = ["stage_run", "block_runs", "fit_first", "gram_part", "xval_part", "fit_last", "add_grams"]


def stage_run(store: Store, group: str, inputs: Any, run: int, region: Region) -> dict:
    """Read run ``run`` of ``inputs`` (volume by volume, masked) into its rows of the staged time series."""
    t0 = time.perf_counter()
    data = np.asarray(inputs.read_run(run), dtype=np.float32)
    store.write_region(group, region, {"data": data})
    return {"run": int(run), "volumes": int(data.shape[0]), "seconds": round(time.perf_counter() - t0, 3)}


def block_runs(store: Store, ts_group: str, plan: glm.GlmPlan, region: Region) -> list[np.ndarray]:
    """A voxel block's time series, one array (n_volumes_r, n_block) per run."""
    data = np.asarray(store.group(ts_group)["data"][:, region.slice], dtype=np.float64)
    bounds = np.concatenate([[0], np.cumsum(plan.n_volumes)])
    return [data[bounds[r]:bounds[r + 1]] for r in range(plan.n_runs)]


def fit_first(store: Store, ts_group: str, fit_group: str, plan: glm.GlmPlan, region: Region) -> dict:
    """Types A (ON-OFF) and B (an HRF per voxel, single-trial betas) of one voxel block."""
    t0 = time.perf_counter()
    runs = block_runs(store, ts_group, plan, region)
    onoff = glm.fit_onoff_block(runs, plan)
    hrf = glm.fit_hrf_block(runs, plan)
    store.write_region(fit_group, region, {
        "onoff_r2": onoff.onoff_r2, "onoff_beta": onoff.onoff_beta, "meanvol": onoff.meanvol,
        "hrf_index": hrf.hrf_index, "hrf_r2": hrf.hrf_r2, "betas_b": hrf.betas, "r2_b": hrf.r2})
    return {"block": region.label, "seconds": round(time.perf_counter() - t0, 3)}


def gram_part(store: Store, ts_group: str, plan: glm.GlmPlan, region: Region, pool: np.ndarray
              ) -> tuple[np.ndarray, ...]:
    """This block's share of every run's noise-pool Gram matrix (time × time), for the tree sum."""
    runs = block_runs(store, ts_group, plan, region) if pool.any() else None
    if runs is None:
        return tuple(np.zeros((n, n)) for n in plan.n_volumes)
    return glm.noise_gram_block(runs, plan, pool)


def add_grams(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Two partial sums of the per-run Gram matrices, added (a node of the tree reduction)."""
    return tuple(x + y for x, y in zip(a, b))


def xval_part(store: Store, ts_group: str, fit_group: str, plan: glm.GlmPlan, region: Region,
              pcs: Sequence[np.ndarray], judges: np.ndarray) -> np.ndarray:
    """Cross-validated R² of this block's judging voxels for every candidate pcnum, shape (n_judges, n_pcs + 1)."""
    n_pcs = pcs[0].shape[1] if len(pcs) else 0
    if not judges.any():
        return np.zeros((0, n_pcs))
    runs = block_runs(store, ts_group, plan, region)
    hrf_index = np.asarray(store.group(fit_group)["hrf_index"][region.slice])
    return glm.pcnum_xval_block(runs, plan, hrf_index, pcs, judges)


def fit_last(store: Store, ts_group: str, fit_group: str, out_group: str, plan: glm.GlmPlan, region: Region,
             pcs: Sequence[np.ndarray] | None, pcnum: int, pool: np.ndarray | None) -> dict:
    """Types C and D of one voxel block; writes every output of the session group for it."""
    t0 = time.perf_counter()
    fit = store.group(fit_group)
    first = {name: np.asarray(fit[name][region.slice]) for name in
             ("onoff_r2", "onoff_beta", "meanvol", "hrf_index", "r2_b")}
    betas, r2 = [np.asarray(fit["betas_b"][:, region.slice])], [first["r2_b"]]
    frac = np.full(region.stop - region.start, np.nan)
    if len(plan.models) > 1:
        runs = block_runs(store, ts_group, plan, region)
        out = glm.fit_denoised_block(runs, plan, first["hrf_index"], pcs, int(pcnum))
        for key in ("c", "d"):
            if getattr(out, f"betas_{key}") is not None:
                betas.append(getattr(out, f"betas_{key}"))
                r2.append(getattr(out, f"r2_{key}"))
        if out.frac is not None:
            frac = out.frac
    n = region.stop - region.start
    store.write_region(out_group, region, {
        "betas": np.stack(betas), "r2": np.stack(r2), "onoff_r2": first["onoff_r2"],
        "onoff_beta": first["onoff_beta"], "meanvol": first["meanvol"], "hrf_index": first["hrf_index"],
        "frac": frac, "noise_pool": pool if pool is not None else np.zeros(n, bool)})
    return {"block": region.label, "seconds": round(time.perf_counter() - t0, 3)}
