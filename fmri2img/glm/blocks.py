"""Block functions: per-voxel fits of one voxel block, all runs of the session.

Every function takes ``data``, a list with one float array of shape
(n_volumes_r, n_voxels_block) per run, and the :class:`~fmri2img.glm.plan.GlmPlan`;
global quantities (noise PCs, pcnum) come in explicitly. Results are per voxel, so they
do not depend on how the voxels are split into blocks. Within a block the voxels that
share an HRF share one factorisation per run (:class:`~fmri2img.glm.linalg.SessionSystem`)
and are fitted by one batched product; there is no loop over voxels or, per voxel,
over ridge fractions.

Order of use (the global steps in :mod:`fmri2img.glm.global_steps`)::

    fit_onoff_block, fit_hrf_block          → onoff_r2, meanvol  → thresholds, masks
    noise_gram_block (noise-pool voxels)    → Σ_blocks Grams     → noise_components
    pcnum_xval_block (judging voxels)       → gathered table     → choose_pcnum
    fit_denoised_block (pcs, pcnum)         → types C and D
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .crossval import xval_badness, xval_scale
from .design import convolve_onsets, orthonormal_complement_basis
from .errors import VoxelDataError
from .linalg import Rotated, RunSystem, SessionSystem, autoscale, fracridge_alphas, shrink
from .plan import GlmPlan

__all__ = [
    "OnOffBlock",
    "HrfBlock",
    "DenoisedBlock",
    "fit_onoff_block",
    "fit_hrf_block",
    "noise_gram_block",
    "pcnum_xval_block",
    "fit_denoised_block",
]

#: Drift-free energy below this fraction of the raw energy marks a constant voxel.
_CONSTANT_TOL = 1e-20


@dataclass(frozen=True, eq=False)
class OnOffBlock:
    """Type A (ON-OFF) of a block: arrays of shape (n_voxels,)."""

    onoff_r2: np.ndarray
    onoff_beta: np.ndarray
    meanvol: np.ndarray


@dataclass(frozen=True, eq=False)
class HrfBlock:
    """Type B (FITHRF) of a block.

    Attributes
    ----------
    hrf_index : array of shape (n_voxels,), int
        0-based index of the library HRF with the best R².
    betas : array of shape (n_trials, n_voxels)
        Single-trial betas with that HRF (percent signal change if ``wantpercentbold``).
    r2 : array of shape (n_voxels,)
        R² (percent) with that HRF.
    hrf_r2 : array of shape (n_hrf, n_voxels)
        R² with every HRF of the library (GLMsingle ``FitHRFR2``).
    """

    hrf_index: np.ndarray
    betas: np.ndarray
    r2: np.ndarray
    hrf_r2: np.ndarray


@dataclass(frozen=True, eq=False)
class DenoisedBlock:
    """Types C and D of a block (``None`` for a model not fitted).

    Attributes
    ----------
    betas_c, betas_d : arrays of shape (n_trials, n_voxels) or None
    r2_c, r2_d : arrays of shape (n_voxels,) or None
    frac : array of shape (n_voxels,) or None
        Chosen ridge fraction (GLMsingle ``FRACvalue``).
    scaleoffset : array of shape (n_voxels, 2) or None
        Scale and offset of the rescaling (None when not rescaled).
    frac_badness : array of shape (n_choosable_fracs, n_voxels) or None
        Cross-validation error per choosable fraction (GLMsingle ``rrbadness``).
    """

    betas_c: np.ndarray | None
    r2_c: np.ndarray | None
    betas_d: np.ndarray | None
    r2_d: np.ndarray | None
    frac: np.ndarray | None
    scaleoffset: np.ndarray | None
    frac_badness: np.ndarray | None


def _as_runs(data: Sequence[np.ndarray], plan: GlmPlan) -> list[np.ndarray]:
    if len(data) != plan.n_runs:
        raise VoxelDataError(f"data has {len(data)} runs but the design has {plan.n_runs}: pass one array per run")
    runs = [np.asarray(d, dtype=float) for d in data]
    widths = {r.shape[1] if r.ndim == 2 else -1 for r in runs}
    for i, (r, n) in enumerate(zip(runs, plan.n_volumes)):
        if r.ndim != 2 or r.shape[0] != n:
            raise VoxelDataError(
                f"data run {i} has shape {r.shape} but must be (volumes={n}, voxels): time first, one column per voxel"
            )
        if not np.all(np.isfinite(r)):
            bad = np.flatnonzero(~np.all(np.isfinite(r), axis=0))
            raise VoxelDataError(
                f"data run {i} has NaN or inf in {bad.size} voxel(s) (block columns {bad[:10].tolist()}): "
                "mask them out or fill them before fitting"
            )
    if len(widths) != 1:
        raise VoxelDataError(f"data runs have different voxel counts {sorted(widths)}: every run needs the same voxels")
    return runs


def _drift_free(data: Sequence[np.ndarray], plan: GlmPlan) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-run data without polynomial drift, its energy Σ_r ||Q_r y||², and the mean volume."""
    runs = _as_runs(data, plan)
    yp = [y - q @ (q.T @ y) for y, q in zip(runs, plan.poly)]
    energy = sum(np.einsum("ij,ij->j", y, y) for y in yp)
    meanvol = sum(y.sum(axis=0) for y in runs) / sum(plan.n_volumes)
    raw = sum(np.einsum("ij,ij->j", y, y) for y in runs)
    flat = energy <= _CONSTANT_TOL * raw
    if np.any(flat):
        bad = np.flatnonzero(flat)
        raise VoxelDataError(
            f"{bad.size} voxel(s) (block columns {bad[:10].tolist()}) are constant or have no variance left after "
            "removing each run's polynomial drift: leave them out (e.g. with the brain mask); their R² is undefined"
        )
    if plan.options.wantpercentbold and np.any(meanvol == 0):
        bad = np.flatnonzero(meanvol == 0)
        raise VoxelDataError(
            f"{bad.size} voxel(s) (block columns {bad[:10].tolist()}) have mean 0, so percent signal change is "
            "undefined: pass raw intensities, or set wantpercentbold=False"
        )
    return yp, energy, meanvol


def _psc(betas: np.ndarray, meanvol: np.ndarray, plan: GlmPlan) -> np.ndarray:
    return betas * (100 / np.abs(meanvol)) if plan.options.wantpercentbold else betas


def _designs(plan: GlmPlan, hrf: np.ndarray) -> list[np.ndarray]:
    """Per run, the trials' onsets convolved with ``hrf``: (n_volumes_r, n_trials_r)."""
    return [convolve_onsets(onsets, n, hrf) for onsets, n in zip(plan.trials.onsets, plan.n_volumes)]


def _system(plan: GlmPlan, designs: Sequence[np.ndarray], nuisance: Sequence[np.ndarray]) -> SessionSystem:
    return SessionSystem([RunSystem.build(x, q, e) for x, q, e in zip(designs, plan.poly, nuisance)])


def fit_onoff_block(data: Sequence[np.ndarray], plan: GlmPlan) -> OnOffBlock:
    """Type A: one regressor for all trials (assumed HRF) → ON-OFF R², beta and mean volume.

    Objective per voxel: ``min_β Σ_r ||P_r (y_r − x_r β)||²`` with ``x_r`` the run's
    onsets convolved with the assumed HRF and ``P_r`` projecting out drift and extra
    regressors (GLM_single.fit, "FIT TYPE-A MODEL [ON-OFF]").

    Parameters
    ----------
    data : list of arrays of shape (n_volumes_r, n_voxels)
    plan : GlmPlan

    Returns
    -------
    OnOffBlock
    """
    yp, energy, meanvol = _drift_free(data, plan)
    num, den, cross, xx = 0.0, 0.0, 0.0, 0.0
    for onsets, n, q, e, y in zip(plan.trials.onsets, plan.n_volumes, plan.poly, plan.extra, yp):
        x = convolve_onsets(onsets, n, plan.assumed_hrf).sum(axis=1)
        xp = x - q @ (q.T @ x)
        xt = xp - e @ (e.T @ xp)
        num, den = num + xt @ y, den + xt @ xt
        cross, xx = cross + xp @ y, xx + xp @ xp
    beta = num / den
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 100 * (1 - (energy - 2 * beta * cross + beta**2 * xx) / energy)
    return OnOffBlock(onoff_r2=r2, onoff_beta=_psc(beta, meanvol, plan), meanvol=meanvol)


def fit_hrf_block(data: Sequence[np.ndarray], plan: GlmPlan) -> HrfBlock:
    """Type B: per voxel, the library HRF with the best R² and its single-trial OLS betas.

    Objective per voxel and HRF ``h``: ``min_β Σ_r ||P_r (y_r − X_{h,r} β_r)||²``
    (drift and extra regressors projected out); the voxel keeps the first ``h`` of
    maximal R² (GLM_single.fit, "FIT TYPE-B MODEL [FITHRF]").

    Parameters
    ----------
    data : list of arrays of shape (n_volumes_r, n_voxels)
    plan : GlmPlan

    Returns
    -------
    HrfBlock
    """
    yp, energy, meanvol = _drift_free(data, plan)
    n_vox = energy.size
    best = np.full(n_vox, -np.inf)
    index = np.zeros(n_vox, dtype=np.int64)
    betas = np.zeros((plan.n_trials, n_vox))
    hrf_r2 = np.empty((plan.n_hrf, n_vox))
    for h in range(plan.n_hrf):
        system = _system(plan, _designs(plan, plan.library[:, h]), plan.extra)
        rot = system.rotate(yp, energy)
        c = system.ols(rot)
        hrf_r2[h] = system.r2(c, rot)
        better = hrf_r2[h] > best
        if better.any():
            betas[:, better] = system.betas(c[:, better])
            best[better], index[better] = hrf_r2[h, better], h
    return HrfBlock(hrf_index=index, betas=_psc(betas, meanvol, plan), r2=hrf_r2[index, np.arange(n_vox)],
                    hrf_r2=hrf_r2)


def noise_gram_block(data: Sequence[np.ndarray], plan: GlmPlan, pool: np.ndarray) -> tuple[np.ndarray, ...]:
    """This block's part of each run's noise-pool Gram matrix (sum these over blocks).

    ``G_r = Σ_{v in pool} ŷ_v ŷ_vᵀ`` with ``ŷ_v`` the run's time course without polynomial
    drift, scaled to unit length (GLM_single.fit: ``normalize(polymatrix @ data)``).

    Parameters
    ----------
    data : list of arrays of shape (n_volumes_r, n_voxels)
    plan : GlmPlan
    pool : array of shape (n_voxels,), bool
        This block's noise-pool voxels (:func:`~fmri2img.glm.global_steps.noise_pool`).

    Returns
    -------
    tuple of arrays of shape (n_volumes_r, n_volumes_r)
    """
    pool = np.asarray(pool, dtype=bool)
    yp, _, _ = _drift_free([np.asarray(d)[:, pool] for d in data], plan)
    grams = []
    for y in yp:
        norm = np.linalg.norm(y, axis=0)
        unit = y / np.where(norm > 0, norm, 1.0)
        grams.append(unit @ unit.T)
    return tuple(grams)


def _denoise_nuisance(plan: GlmPlan, pcs: Sequence[np.ndarray] | None, n_pc: int) -> list[np.ndarray]:
    """Per run: orthonormal nuisance beyond polynomials for types C/D with ``n_pc`` PCs."""
    out = []
    for run, (q, e) in enumerate(zip(plan.poly, plan.extra)):
        e = e if plan.denoise_uses_extra(n_pc) else e[:, :0]
        if n_pc > 0:
            e = np.hstack([e, orthonormal_complement_basis(pcs[run][:, :n_pc], np.hstack([q, e]))])
        out.append(e)
    return out


def pcnum_xval_block(data: Sequence[np.ndarray], plan: GlmPlan, hrf_index: np.ndarray,
                     pcs: Sequence[np.ndarray], voxels: np.ndarray) -> np.ndarray:
    """Cross-validation error of 0..n_pcs noise PCs for this block's judging voxels.

    Per voxel and ``n``: OLS single-trial betas with the voxel's HRF and the first ``n``
    PCs as extra regressors, scored by :func:`~fmri2img.glm.crossval.xval_badness`
    against the 0-PC betas (GLM_single.fit, "CROSS-VALIDATE TO FIGURE OUT NUMBER OF
    GLMDENOISE REGRESSORS"; raw units, not percent signal change).

    Parameters
    ----------
    data : list of arrays of shape (n_volumes_r, n_voxels)
    plan : GlmPlan
    hrf_index : array of shape (n_voxels,), int
    pcs : sequence of arrays of shape (n_volumes_r, n_pcs + 1)
        From :func:`~fmri2img.glm.global_steps.noise_components`.
    voxels : array of shape (n_voxels,), bool
        This block's judging voxels (:func:`~fmri2img.glm.global_steps.pc_voxels`).

    Returns
    -------
    table : array of shape (n_selected, n_pcs + 1)
        Rows in block order of the selected voxels.
    """
    voxels = np.asarray(voxels, dtype=bool)
    yp, energy, _ = _drift_free([np.asarray(d)[:, voxels] for d in data], plan)
    index = np.asarray(hrf_index)[voxels]
    n_pcs = plan.options.n_pcs
    nuisance = [_denoise_nuisance(plan, pcs, n) for n in range(n_pcs + 1)]
    table = np.empty((index.size, n_pcs + 1))
    for h in np.unique(index):
        cols = index == h
        yh = [y[:, cols] for y in yp]
        designs = _designs(plan, plan.library[:, h])
        for n in range(n_pcs + 1):
            system = _system(plan, designs, nuisance[n])
            betas = system.betas(system.ols(system.rotate(yh, energy[cols])))
            if n == 0:
                reference, scale = betas, xval_scale(betas, plan)
            table[cols, n] = xval_badness(betas, reference, plan, scale)
    return table


def _ridge_group(system: SessionSystem, rot: Rotated, c: np.ndarray, plan: GlmPlan) -> dict:
    """Type D for one HRF group: fraction per voxel by cross-validation, betas, R², rescaling."""
    fracs = plan.fracs_to_use
    alphas = fracridge_alphas(system.s, c, fracs)
    reference = system.betas(c)  # fraction 1: alpha 0
    n_vox = c.shape[1]
    badness = None
    if plan.fixed_frac is None:
        scale = xval_scale(reference, plan)
        badness = np.empty((fracs.size - plan.frac_start, n_vox))
        for i in range(plan.frac_start, fracs.size):
            betas_f = system.betas(shrink(system.s, c, alphas[i]))
            badness[i - plan.frac_start] = xval_badness(betas_f, reference, plan, scale)
        choice = plan.frac_start + np.argmin(badness, axis=0)
    else:
        choice = np.full(n_vox, plan.fixed_frac)
    b = shrink(system.s, c, alphas[choice, np.arange(n_vox)])
    betas = system.betas(b)
    scaleoffset = None
    if plan.options.wantautoscale and fracs.size > 1:
        betas, scaleoffset = autoscale(betas, reference)
    return {"betas": betas, "r2": system.r2(b, rot), "frac": fracs[choice], "scaleoffset": scaleoffset,
            "badness": badness}


def fit_denoised_block(data: Sequence[np.ndarray], plan: GlmPlan, hrf_index: np.ndarray,
                       pcs: Sequence[np.ndarray] | None, pcnum: int) -> DenoisedBlock:
    """Types C and D: single-trial fits with the voxel's HRF and ``pcnum`` noise PCs.

    Type C objective per voxel: ``min_β Σ_r ||P_r (y_r − X_r β_r)||²`` with ``P_r``
    projecting out drift, the first ``pcnum`` PCs (and extra regressors by policy).
    Type D: ``min_β Σ_r ||P_r (y_r − X_r β_r)||² + α ||β||²`` with the voxel's ``α``
    giving the cross-validated fraction ``||β_α|| / ||β_OLS||``, then rescaled
    (GLM_single.fit, "FIT TYPE-C + TYPE-D MODELS").

    Parameters
    ----------
    data : list of arrays of shape (n_volumes_r, n_voxels)
    plan : GlmPlan
    hrf_index : array of shape (n_voxels,), int
    pcs : sequence of arrays of shape (n_volumes_r, n_pcs + 1), or None when ``pcnum`` is 0
    pcnum : int

    Returns
    -------
    DenoisedBlock
    """
    opts = plan.options
    yp, energy, meanvol = _drift_free(data, plan)
    n_vox = energy.size
    nuisance = _denoise_nuisance(plan, pcs, pcnum)
    out = {key: None for key in ("betas_c", "r2_c", "betas_d", "r2_d", "frac", "scaleoffset", "frac_badness")}
    if opts.wantglmdenoise:
        out.update(betas_c=np.empty((plan.n_trials, n_vox)), r2_c=np.empty(n_vox))
    if opts.wantfracridge:
        out.update(betas_d=np.empty((plan.n_trials, n_vox)), r2_d=np.empty(n_vox), frac=np.empty(n_vox))
        if plan.fixed_frac is None:
            out["frac_badness"] = np.empty((plan.fracs_to_use.size - plan.frac_start, n_vox))
        if opts.wantautoscale and plan.fracs_to_use.size > 1:
            out["scaleoffset"] = np.empty((n_vox, 2))
    index = np.asarray(hrf_index)
    for h in np.unique(index):
        cols = index == h
        system = _system(plan, _designs(plan, plan.library[:, h]), nuisance)
        rot = system.rotate([y[:, cols] for y in yp], energy[cols])
        c = system.ols(rot)
        if opts.wantglmdenoise:
            out["betas_c"][:, cols], out["r2_c"][cols] = system.betas(c), system.r2(c, rot)
        if opts.wantfracridge:
            d = _ridge_group(system, rot, c, plan)
            out["betas_d"][:, cols], out["r2_d"][cols], out["frac"][cols] = d["betas"], d["r2"], d["frac"]
            if d["scaleoffset"] is not None:
                out["scaleoffset"][cols] = d["scaleoffset"]
            if d["badness"] is not None:
                out["frac_badness"][:, cols] = d["badness"]
    for key in ("betas_c", "betas_d"):
        if out[key] is not None:
            out[key] = _psc(out[key], meanvol, plan)
    return DenoisedBlock(**out)
