"""The in-memory driver: every block function and global step over a whole session.

:func:`fit_session` is the reference composition of :mod:`fmri2img.glm.blocks` and
:mod:`fmri2img.glm.global_steps`; a distributed driver (one task per voxel block) must
give the same result. ``block_size`` splits the voxels into consecutive blocks exactly
as such a driver would; the default is one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .blocks import (
    fit_denoised_block,
    fit_hrf_block,
    fit_onoff_block,
    noise_gram_block,
    pcnum_xval_block,
)
from .design import check_run_lengths
from .errors import GlmOptionError, VoxelDataError
from .global_steps import (
    Thresholds,
    choose_pcnum,
    noise_components,
    noise_pool,
    pc_voxels,
    thresholds,
)
from .options import GlmOptions, resolve_options
from .plan import GlmPlan, prepare

__all__ = ["GlmResult", "fit_session"]


@dataclass(frozen=True, eq=False)
class GlmResult:
    """Everything one session's single-trial GLM estimates.

    Attributes
    ----------
    models : tuple of str
        Names along ``betas``' first axis: "fithrf" (B), "fithrf_glmdenoise" (C),
        "fithrf_glmdenoise_rr" (D), those fitted.
    betas : array of shape (n_models, n_trials, n_voxels)
        Single-trial betas, chronological trials, percent signal change (if
        ``wantpercentbold``).
    r2 : array of shape (n_models, n_voxels)
        R² (percent) of each model.
    onoff_r2, onoff_beta, meanvol : arrays of shape (n_voxels,)
        Type A (ON-OFF) R², beta, and the mean of all volumes.
    hrf_index : array of shape (n_voxels,), int
        0-based library HRF of each voxel.
    hrf_r2 : array of shape (n_hrf, n_voxels)
        R² of type B with every library HRF.
    frac : array of shape (n_voxels,)
        Ridge fraction of type D (NaN without type D).
    scaleoffset : array of shape (n_voxels, 2) or None
        Type D's rescaling.
    pcnum : int
        Noise PCs in types C and D.
    xvaltrend : array of shape (n_pcs + 1,) or None
        Cross-validation trend behind ``pcnum``.
    pcs : tuple of arrays of shape (n_volumes_r, n_pcs + 1), or None
        Noise PCs per run.
    noise_pool, pc_voxels : arrays of shape (n_voxels,), bool, or None
        The noise pool and the voxels that judged pcnum.
    thresholds : Thresholds
    conditions, runs : arrays of shape (n_trials,)
        Condition and run of each trial.
    plan : GlmPlan
    """

    models: tuple[str, ...]
    betas: np.ndarray
    r2: np.ndarray
    onoff_r2: np.ndarray
    onoff_beta: np.ndarray
    meanvol: np.ndarray
    hrf_index: np.ndarray
    hrf_r2: np.ndarray
    frac: np.ndarray
    scaleoffset: np.ndarray | None
    pcnum: int
    xvaltrend: np.ndarray | None
    pcs: tuple[np.ndarray, ...] | None
    noise_pool: np.ndarray | None
    pc_voxels: np.ndarray | None
    thresholds: Thresholds
    conditions: np.ndarray
    runs: np.ndarray
    plan: GlmPlan

    def model(self, name: str) -> np.ndarray:
        """Betas of one model, shape (n_trials, n_voxels); a missing model raises KeyError."""
        if name not in self.models:
            raise KeyError(f"model {name!r} was not fitted: fitted are {', '.join(self.models)}")
        return self.betas[self.models.index(name)]


def _check_data(runs: Sequence[Any], plan: GlmPlan) -> list[np.ndarray]:
    arrays = [np.asarray(r) for r in runs]
    if any(a.ndim != 2 for a in arrays):
        shapes = [a.shape for a in arrays]
        raise VoxelDataError(f"each run must be a (volumes, voxels) array, got shapes {shapes}")
    check_run_lengths(plan.n_volumes, [a.shape[0] for a in arrays], what="runs")
    return arrays


def _blocks(n_voxels: int, block_size: int | None) -> list[slice]:
    if block_size is None:
        return [slice(0, n_voxels)]
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise GlmOptionError(f"block_size must be a positive integer or None, got {block_size!r}")
    return [slice(a, min(a + block_size, n_voxels)) for a in range(0, n_voxels, block_size)]


def _pcnum(data: list[np.ndarray], plan: GlmPlan, blocks: list[slice], hrf_index: np.ndarray,
           onoff_r2: np.ndarray, meanvol: np.ndarray, th: Thresholds, masks: dict) -> dict:
    """Noise pool → Grams (summed over blocks) → PCs → pcnum (cross-validated unless fixed)."""
    opts = plan.options
    pool = noise_pool(onoff_r2, meanvol, th, masks.get("brain_exclude"))
    grams = None
    for sl in blocks:
        part = noise_gram_block([d[:, sl] for d in data], plan, pool[sl])
        grams = part if grams is None else tuple(g + p for g, p in zip(grams, part))
    pcs = noise_components(grams, opts.n_pcs)
    out = {"pool": pool, "pcs": pcs, "pcnum": plan.fixed_pcnum, "trend": None, "judges": None}
    if plan.fixed_pcnum is None:
        judges = pc_voxels(onoff_r2, th, masks.get("pc_r2_cutoff_mask"))
        table = np.concatenate([
            pcnum_xval_block([d[:, sl] for d in data], plan, hrf_index[sl], pcs, judges[sl]) for sl in blocks
        ])
        out["pcnum"], out["trend"] = choose_pcnum(table, opts)
        out["judges"] = judges
    return out


def fit_session(
    runs: Sequence[np.ndarray],
    design: Sequence[np.ndarray],
    tr: float | Sequence[float],
    stimdur: float,
    *,
    preset: str | GlmOptions = "glmsingle",
    extra_regressors: Sequence[np.ndarray | None] | None = None,
    hrf_library: np.ndarray | None = None,
    hrf_to_assume: np.ndarray | None = None,
    brain_exclude: np.ndarray | None = None,
    pc_r2_cutoff_mask: np.ndarray | None = None,
    block_size: int | None = None,
    **options: Any,
) -> GlmResult:
    """GLMsingle's types A–D for one session, in memory.

    Parameters
    ----------
    runs : sequence of arrays of shape (n_volumes_r, n_voxels)
        Time series of each run (raw intensities; any float dtype).
    design : sequence of arrays of shape (n_volumes_r, n_conditions)
        Per-run 0/1 condition design; every 1 is one trial.
    tr : float or sequence of float
        TR in seconds (per run allowed; they must agree).
    stimdur : float
        Stimulus duration in seconds.
    preset : str or GlmOptions
        "glmsingle" (default) or "nsd", or explicit options.
    extra_regressors : sequence of arrays of shape (n_volumes_r, k_r) or None, optional
        Per-run nuisance regressors.
    hrf_library : array of shape (n_time, n_hrf), optional
        Candidate HRFs at the TR (default: GLMsingle's 20).
    hrf_to_assume : array of shape (n_time,), optional
        ON-OFF HRF (default: GLMsingle's canonical HRF).
    brain_exclude, pc_r2_cutoff_mask : arrays of shape (n_voxels,), bool, optional
        Voxels kept out of the noise pool; voxels allowed to judge pcnum.
    block_size : int, optional
        Voxels per block (default: all in one block); results do not depend on it.
    **options
        Overrides of the preset's :class:`~fmri2img.glm.options.GlmOptions` fields.

    Returns
    -------
    GlmResult

    Raises
    ------
    GlmInputError
        (a subclass per problem) for bad options, design, timing, HRFs or data.
    """
    opts = resolve_options(preset, **options)
    plan = prepare(design, tr, stimdur, opts, extra_regressors=extra_regressors,
                   hrf_library=hrf_library, hrf_to_assume=hrf_to_assume)
    data = _check_data(runs, plan)
    n_vox = data[0].shape[1]
    blocks = _blocks(n_vox, block_size)
    parts_a = [fit_onoff_block([d[:, sl] for d in data], plan) for sl in blocks]
    parts_b = [fit_hrf_block([d[:, sl] for d in data], plan) for sl in blocks]
    onoff_r2 = np.concatenate([p.onoff_r2 for p in parts_a])
    meanvol = np.concatenate([p.meanvol for p in parts_a])
    hrf_index = np.concatenate([p.hrf_index for p in parts_b])
    th = thresholds(onoff_r2, meanvol, opts)
    dn = {"pool": None, "pcs": None, "pcnum": 0, "trend": None, "judges": None}
    if opts.wantglmdenoise:
        masks = {"brain_exclude": brain_exclude, "pc_r2_cutoff_mask": pc_r2_cutoff_mask}
        dn = _pcnum(data, plan, blocks, hrf_index, onoff_r2, meanvol, th, masks)
    betas = [np.concatenate([p.betas for p in parts_b], axis=1)]
    r2 = [np.concatenate([p.r2 for p in parts_b])]
    frac, scaleoffset = np.full(n_vox, np.nan), None
    if opts.wantglmdenoise or opts.wantfracridge:
        parts = [fit_denoised_block([d[:, sl] for d in data], plan, hrf_index[sl], dn["pcs"], dn["pcnum"])
                 for sl in blocks]
        for key in ("c", "d"):
            if getattr(parts[0], f"betas_{key}") is not None:
                betas.append(np.concatenate([getattr(p, f"betas_{key}") for p in parts], axis=1))
                r2.append(np.concatenate([getattr(p, f"r2_{key}") for p in parts]))
        if opts.wantfracridge:
            frac = np.concatenate([p.frac for p in parts])
            if parts[0].scaleoffset is not None:
                scaleoffset = np.concatenate([p.scaleoffset for p in parts])
    return GlmResult(
        models=plan.models, betas=np.stack(betas), r2=np.stack(r2), onoff_r2=onoff_r2,
        onoff_beta=np.concatenate([p.onoff_beta for p in parts_a]), meanvol=meanvol, hrf_index=hrf_index,
        hrf_r2=np.concatenate([p.hrf_r2 for p in parts_b], axis=1), frac=frac, scaleoffset=scaleoffset,
        pcnum=int(dn["pcnum"]), xvaltrend=dn["trend"], pcs=dn["pcs"], noise_pool=dn["pool"],
        pc_voxels=dn["judges"], thresholds=th, conditions=plan.trials.conditions, runs=plan.trials.runs,
        plan=plan,
    )
