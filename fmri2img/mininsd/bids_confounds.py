"""fMRIPrep's confounds of the generated BIDS dataset's runs (:mod:`fmri2img.mininsd.bids`).

The columns and their definitions follow fMRIPrep's documentation ("Confounds estimated from the
BOLD series"): global_signal, csf, white_matter with derivatives and powers; std_dvars, dvars,
framewise_displacement (Power et al. 2012: 50 mm head radius); tCompCor and aCompCor components
(combined, CSF, WM; high-passed by the cosines, variance-normalised) with their JSON metadata and
the dropped components; cosineNN (128-s high-pass); non_steady_state_outlierNN; the six motion
parameters with derivatives and powers; motion_outlierNN (FD > 0.5 mm or std DVARS > 1.5).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["confounds"]


def _expand(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    d = np.concatenate([[np.nan], np.diff(x)])
    return {name: x, f"{name}_derivative1": d, f"{name}_power2": x**2, f"{name}_derivative1_power2": d**2}


def _cosines(n: int, tr: float, cutoff: float = 128.0) -> np.ndarray:
    order = int(np.floor(2 * n * tr / cutoff))
    k = np.arange(1, order)
    return np.sqrt(2.0 / n) * np.cos(np.pi / n * (np.arange(n)[:, None] + 0.5) * k[None, :])


def _compcor(series: np.ndarray, cosines: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n`` principal components (time, n) of high-passed, variance-normalised series, and the spectrum."""
    drift = np.column_stack([np.ones(len(series)), cosines])
    resid = series - drift @ np.linalg.lstsq(drift, series, rcond=None)[0]
    resid /= resid.std(axis=0, keepdims=True) + 1e-12
    u, s, _ = np.linalg.svd(resid, full_matrices=False)
    return u[:, :n], s


def confounds(data: np.ndarray, motion: np.ndarray, regions: dict[str, np.ndarray], *, tr: float,
              n_compcor: int, non_steady: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """fMRIPrep's confounds table of one simulated run, and the components' JSON metadata.

    Parameters
    ----------
    data : array of shape (X, Y, Z, n_volumes)
    motion : array of shape (n_volumes, 6)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad).
    regions : dict of str to bool arrays of shape (X, Y, Z)
        "brain", "csf", "wm".
    tr : float
    n_compcor : int
        Combined aCompCor components kept.
    non_steady : int
        Leading non-steady-state volumes.
    """
    n = data.shape[-1]
    series = data.reshape(-1, n).T.astype(np.float64)
    cols: dict[str, np.ndarray] = {}
    for name, region in (("global_signal", "brain"), ("csf", "csf"), ("white_matter", "wm")):
        cols.update(_expand(name, series[:, regions[region].reshape(-1)].mean(axis=1)))
    brain = series[:, regions["brain"].reshape(-1)]
    dvars = np.concatenate([[np.nan], np.sqrt(np.mean(np.diff(brain, axis=0) ** 2, axis=1))])
    d_motion = np.abs(np.diff(motion, axis=0))
    fd = np.concatenate([[np.nan], d_motion[:, :3].sum(axis=1) + 50.0 * d_motion[:, 3:].sum(axis=1)])
    cols.update(std_dvars=dvars / np.nanmedian(dvars), dvars=dvars, framewise_displacement=fd)
    cosines = _cosines(n, tr)
    meta: dict[str, Any] = {}
    variance = brain.var(axis=0)
    csf, wm = regions["csf"].reshape(-1), regions["wm"].reshape(-1)
    decompositions = (("t", "tCompCor", None, brain[:, variance >= np.quantile(variance, 0.98)], 3),
                      ("a", "aCompCor", "combined", series[:, csf | wm], n_compcor),
                      ("a", "aCompCor", "CSF", series[:, csf], 3), ("a", "aCompCor", "WM", series[:, wm], 3))
    count = {"t": 0, "a": 0, "dropped": 0}
    for prefix, method, mask, values, n_keep in decompositions:
        comps, sv = _compcor(values, cosines, n_keep)
        for k in range(comps.shape[1]):
            name = f"{prefix}_comp_cor_{count[prefix]:02d}"
            cols[name], meta[name] = comps[:, k], _component_meta(method, mask, sv, k)
            count[prefix] += 1
        if mask and len(sv) > comps.shape[1]:  # fMRIPrep lists the components it did not keep as dropped_N
            meta[f"dropped_{count['dropped']}"] = {**_component_meta(method, mask, sv, comps.shape[1]),
                                                   "Retained": False}
            count["dropped"] += 1
    for k in range(cosines.shape[1]):
        cols[f"cosine{k:02d}"] = cosines[:, k]
    for k in range(non_steady):
        cols[f"non_steady_state_outlier{k:02d}"] = (np.arange(n) == k).astype(float)
    for k, name in enumerate(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")):
        cols.update(_expand(name, motion[:, k]))
    outliers = np.flatnonzero(np.nan_to_num((fd > 0.5) | (cols["std_dvars"] > 1.5)))
    for k, t in enumerate(outliers):
        cols[f"motion_outlier{k:02d}"] = (np.arange(n) == t).astype(float)
    return pd.DataFrame(cols), meta


def _component_meta(method: str, mask: str | None, sv: np.ndarray, k: int) -> dict[str, Any]:
    var = sv**2 / np.sum(sv**2)
    out = {"Method": method, "SingularValue": float(sv[k]), "VarianceExplained": float(var[k]),
           "CumulativeVarianceExplained": float(var[:k + 1].sum()), "Retained": True}
    return out if mask is None else {**out, "Mask": mask}
