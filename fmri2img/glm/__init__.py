"""Single-trial GLM math: GLMsingle's algorithm (types A–D) as block functions and global steps.

Pure functions on NumPy arrays; nothing here knows about stores, Dask or configuration.
The shape is the chunked-array one: :func:`prepare` computes what depends only on the
design, the block functions (:mod:`.blocks`) fit one voxel block (all runs, a subset of
voxels), and the global steps (:mod:`.global_steps`) take small per-voxel vectors or
summed time × time Gram matrices. :func:`fit_session` composes them in memory; a
distributed driver must reproduce it.

Modules: :mod:`.options` (options and presets), :mod:`.hrf` (canonical HRF, library),
:mod:`.design` (trials, convolution, drift bases), :mod:`.plan` (:func:`prepare`),
:mod:`.linalg` (batched OLS, fractional ridge, R²), :mod:`.crossval` (repeat-based
cross-validation, pcnum rule), :mod:`.blocks`, :mod:`.global_steps`, :mod:`.session`,
:mod:`.simulate` (a seeded session simulator with ground truth), :mod:`.errors`.
"""

from .blocks import (
    DenoisedBlock,
    HrfBlock,
    OnOffBlock,
    fit_denoised_block,
    fit_hrf_block,
    fit_onoff_block,
    noise_gram_block,
    pcnum_xval_block,
)
from .errors import (
    DesignError,
    GlmInputError,
    GlmOptionError,
    HrfLibraryError,
    RepeatsError,
    RunTimingError,
    VoxelDataError,
)
from .global_steps import (
    Thresholds,
    choose_pcnum,
    noise_components,
    noise_pool,
    pc_voxels,
    tail_threshold,
    thresholds,
)
from .hrf import canonical_hrf, hrf_library
from .options import PRESETS, GlmOptions, get_preset, resolve_options
from .plan import GlmPlan, prepare
from .session import GlmResult, fit_session
from .simulate import SimulatedSession, simulate_session

__all__ = [
    "fit_session",
    "GlmResult",
    "prepare",
    "GlmPlan",
    "GlmOptions",
    "PRESETS",
    "get_preset",
    "resolve_options",
    "hrf_library",
    "canonical_hrf",
    "fit_onoff_block",
    "fit_hrf_block",
    "noise_gram_block",
    "pcnum_xval_block",
    "fit_denoised_block",
    "OnOffBlock",
    "HrfBlock",
    "DenoisedBlock",
    "Thresholds",
    "thresholds",
    "tail_threshold",
    "noise_pool",
    "pc_voxels",
    "noise_components",
    "choose_pcnum",
    "simulate_session",
    "SimulatedSession",
    "GlmInputError",
    "RunTimingError",
    "DesignError",
    "RepeatsError",
    "VoxelDataError",
    "HrfLibraryError",
    "GlmOptionError",
]
