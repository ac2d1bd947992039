"""Options of the single-trial GLM and the two presets, ``glmsingle`` and ``nsd``.

A preset is a frozen :class:`GlmOptions`; :func:`resolve_options` starts from one and
applies overrides by name, refusing unknown names and bad values with a
:class:`~fmri2img.glm.errors.GlmOptionError`.

Option names follow GLMsingle's (``glmsingle/defaults.py``, ``GLM_single.__init__``
docstring in ``glmsingle/glmsingle.py``), in snake case where GLMsingle mixes case:
``brainR2`` → ``brain_r2``, ``pcR2cutoff`` → ``pc_r2_cutoff``, ``xvalscheme`` →
``xval_scheme``. Three options have no GLMsingle name because they make explicit a
choice that GLMsingle's two implementations or NSD's own GLM make differently:
``pcnum_rule``, ``xval_zscore``/``xval_match`` and ``denoise_extra_regressors``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import GlmOptionError

__all__ = ["GlmOptions", "PRESETS", "get_preset", "resolve_options", "GLMSINGLE_FRACS", "NSD_FRACS"]

#: GLMsingle's default ridge fractions, ``np.linspace(1, 0.05, 20)`` (glmsingle/defaults.py).
GLMSINGLE_FRACS: tuple[float, ...] = tuple(float(f) for f in np.linspace(1, 0.05, 20))

#: NSD's ridge fractions, ``fliplr([.05:.05:.90 .91:.01:1])``: 28 values, finer near 1
#: (cvnlab/nsddatapaper main/glm_nsd.m, "define fractions").
NSD_FRACS: tuple[float, ...] = tuple(
    sorted(
        [round(0.05 * k, 2) for k in range(1, 19)] + [round(0.90 + 0.01 * k, 2) for k in range(1, 11)],
        reverse=True,
    )
)

_XVAL_SCHEMES = ("leave-one-run-out", "run-pairs")
_CHOICES = {
    "pcnum_rule": ("python", "matlab"),
    "xval_match": ("all", "first"),
    "denoise_extra_regressors": ("all", "python", "matlab"),
}


@dataclass(frozen=True)
class GlmOptions:
    """Every option of the single-trial GLM (GLMsingle's, with its defaults).

    Attributes
    ----------
    wantlibrary : bool
        Choose each voxel's HRF from the library (True) or assume the canonical HRF for
        types B–D (False). GLMsingle ``wantlibrary``, default 1.
    wantglmdenoise : bool
        Fit type C (noise-pool PCs as extra regressors). ``wantglmdenoise``, default 1.
    wantfracridge : bool
        Fit type D (fractional ridge per voxel). ``wantfracridge``, default 1.
    wantpercentbold : bool
        Betas in percent signal change: ``100 * beta / |meanvol|``. Default 1.
    wantautoscale : bool
        Rescale type-D betas by the per-voxel scale and offset that best match the
        unregularised betas (least squares, scale ≥ 0). Default 1.
    maxpolydeg : int, tuple of int, or None
        Degree of the per-run polynomial drift regressors (degrees 0..maxpolydeg).
        ``None``: ``round(L / 2)`` with ``L`` the run's duration in minutes, rounded half
        away from zero (glmsingle.py ``alt_round``).
    n_pcs : int
        Most noise-pool PCs tried for type C. GLMsingle ``n_pcs``, default 10.
    pcstop : float
        ≥ 1: stop adding PCs once the cross-validation gain is within this factor of the
        best gain (1.05). ≤ 0: use exactly ``-pcstop`` PCs, no cross-validation.
    pcnum_rule : {"python", "matlab"}
        Candidates of the pcnum choice. GLMsingle's Python package scans 1..n_pcs-1
        (``glmsingle/utils/select_noise_regressors.py``: ``range(1, numpcstotry)``), its
        MATLAB original and NSD scan 0..n_pcs (``GLMestimatesingletrial.m``,
        ``for p=0:opt.numpcstotry``).
    brainthresh : (float, float)
        Bright (brain) voxels have ``meanvol > percentile(meanvol, A) * B``. (99, 0.1).
    brain_r2 : float or None
        Noise-pool voxels have ON-OFF R² below this (percent). None: the tail threshold
        of the ON-OFF R² histogram (``findtailthreshold``).
    pc_r2_cutoff : float or None
        pcnum is judged on voxels with ON-OFF R² above this (percent). None: the same
        tail threshold. (GLMsingle reads 0 or [] in either as "unset"; here only None is.)
    fracs : tuple of float
        Ridge fractions, 0 < f ≤ 1; kept unique and descending. A single value means no
        cross-validation (that fraction for every voxel).
    xval_scheme : str or tuple of tuple of int
        Folds of held-out runs. "leave-one-run-out" (GLMsingle default), "run-pairs"
        ((0, 1), (2, 3), ...: NSD), or explicit 0-based run groups.
    xval_zscore : bool
        Express the cross-validation error in units of each voxel's unregularised beta
        standard deviation (GLMsingle ``calcbadness``: z-scoring per session). NSD: no.
    xval_match : {"all", "first"}
        Compare a held-out trial with every training trial of its condition (GLMsingle)
        or with the first one only (NSD, "ASSUME THE FIRST ONE ONLY").
    denoise_extra_regressors : {"all", "python", "matlab"}
        Whether user ``extra_regressors`` enter the type-C/D fits and the pcnum
        cross-validation: "all" (always; what GLMsingle's documentation promises),
        "python" (only where at least one PC is used, as GLMsingle's Python code does),
        "matlab" (never, as GLMsingle's MATLAB code does).
    tail_seed : int
        Seed of the two-Gaussian mixture fit behind the tail threshold (GLMsingle leaves
        it to the global NumPy state).
    """

    wantlibrary: bool = True
    wantglmdenoise: bool = True
    wantfracridge: bool = True
    wantpercentbold: bool = True
    wantautoscale: bool = True
    maxpolydeg: int | tuple[int, ...] | None = None
    n_pcs: int = 10
    pcstop: float = 1.05
    pcnum_rule: str = "python"
    brainthresh: tuple[float, float] = (99.0, 0.1)
    brain_r2: float | None = None
    pc_r2_cutoff: float | None = None
    fracs: tuple[float, ...] = field(default=GLMSINGLE_FRACS)
    xval_scheme: str | tuple[tuple[int, ...], ...] = "leave-one-run-out"
    xval_zscore: bool = True
    xval_match: str = "all"
    denoise_extra_regressors: str = "all"
    tail_seed: int = 0


#: The presets. ``glmsingle``: GLMsingle's defaults (glmsingle/defaults.py and
#: GLM_single.fit), its Python package's pcnum candidates. ``nsd``: what NSD's own GLM
#: used (Allen et al. 2022 Nat Neurosci, Methods "GLM analysis of the NSD experiment";
#: its code, cvnlab/nsddatapaper main/glm_nsd.m, type 3B), differing in:
#:
#: - ``fracs``: 28 fractions 0.05:0.05:0.90 and 0.91:0.01:1 (finer near no shrinkage);
#: - ``xval_scheme``: 6 folds of run pairs {1,2},{3,4},...,{11,12}, not leave-one-run-out;
#: - ``xval_zscore`` False and ``xval_match`` "first": the squared error of raw betas
#:   against the first training trial of the same image only (its own ``calcbadness``);
#: - ``pc_r2_cutoff`` 5: pcnum judged on voxels with ON-OFF R² > 5 %
#:   (``r2finalthresh = 5``), not the tail threshold;
#: - ``pcnum_rule`` "matlab": candidates 0..10 (the MATLAB loop; NSD ran in MATLAB).
#:
#: Shared by both: the 20-HRF library (derived from NSD itself: GLMsingle wiki, "Let's
#: talk about the HRF library"), per-session HRF choice by the best R², the noise pool
#: (bright voxels, ON-OFF R² below the tail threshold), 10 PCs with pcstop 1.05,
#: polynomial drift up to degree round(L/2) (3 for NSD's 5-min runs; NSD's noise pool used
#: 0:3), no extra regressors (NSD had none: its noise regressors are the PCs), autoscale.
PRESETS = MappingProxyType(
    {
        "glmsingle": GlmOptions(),
        "nsd": GlmOptions(
            fracs=NSD_FRACS,
            xval_scheme="run-pairs",
            xval_zscore=False,
            xval_match="first",
            pc_r2_cutoff=5.0,
            pcnum_rule="matlab",
        ),
    }
)


def get_preset(name: str) -> GlmOptions:
    """The preset called ``name``; an unknown name raises :class:`GlmOptionError`."""
    if name not in PRESETS:
        raise GlmOptionError(
            f"unknown GLM preset {name!r}: the known presets are {', '.join(sorted(PRESETS))}"
        )
    return PRESETS[name]


def resolve_options(preset: str | GlmOptions = "glmsingle", **overrides: Any) -> GlmOptions:
    """Options from a preset (name or :class:`GlmOptions`) with ``overrides`` applied, checked.

    Raises
    ------
    GlmOptionError
        An unknown preset or option name, or a bad value (the message names it).
    """
    base = get_preset(preset) if isinstance(preset, str) else preset
    if not isinstance(base, GlmOptions):
        raise GlmOptionError(f"preset must be a name or GlmOptions, got {type(base).__name__}")
    known = {f.name for f in dataclasses.fields(GlmOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise GlmOptionError(
            f"unknown GLM option(s) {', '.join(unknown)}: the options are {', '.join(sorted(known))}"
        )
    return check_options(dataclasses.replace(base, **overrides))


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise GlmOptionError(f"option {name} must be True or False, got {value!r}")


def _finite(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise GlmOptionError(f"option {name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise GlmOptionError(f"option {name} must be finite, got {value!r}")
    return out


def _check_fracs(fracs: Any) -> tuple[float, ...]:
    arr = np.atleast_1d(np.asarray(fracs, dtype=float)).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 1):
        raise GlmOptionError(
            f"option fracs must be one or more fractions with 0 < f <= 1, got {fracs!r} "
            "(GLMsingle default: np.linspace(1, 0.05, 20))"
        )
    return tuple(float(f) for f in np.unique(arr)[::-1])


def _check_counts(opts: GlmOptions) -> None:
    if not isinstance(opts.n_pcs, (int, np.integer)) or isinstance(opts.n_pcs, bool) or opts.n_pcs < 0:
        raise GlmOptionError(f"option n_pcs must be a non-negative integer, got {opts.n_pcs!r}")
    pcstop = _finite("pcstop", opts.pcstop)
    if pcstop <= 0:
        if pcstop != int(pcstop) or -pcstop > opts.n_pcs:
            raise GlmOptionError(
                f"option pcstop={opts.pcstop!r} asks for a fixed number of PCs (-pcstop), which "
                f"must be an integer between 0 and n_pcs={opts.n_pcs}"
            )
    elif pcstop < 1:
        raise GlmOptionError(
            f"option pcstop must be >= 1 (stop rule, e.g. 1.05) or <= 0 (-B: use B PCs), got {opts.pcstop!r}"
        )
    if opts.pcnum_rule == "python" and pcstop > 0 and opts.wantglmdenoise and opts.n_pcs < 2:
        raise GlmOptionError(
            f"pcnum_rule='python' scans 1..n_pcs-1 PCs, nothing for n_pcs={opts.n_pcs} (GLMsingle's Python "
            "code fails here): use pcnum_rule='matlab', n_pcs >= 2, or pcstop=-B for B PCs"
        )
    deg = opts.maxpolydeg
    degs = () if deg is None else (deg if isinstance(deg, tuple) else (deg,))
    for d in degs:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0:
            raise GlmOptionError(
                f"option maxpolydeg must be None, a non-negative integer or a tuple of them "
                f"(one per run), got {opts.maxpolydeg!r}"
            )


def _check_scheme(scheme: Any) -> str | tuple[tuple[int, ...], ...]:
    if isinstance(scheme, str):
        if scheme not in _XVAL_SCHEMES:
            raise GlmOptionError(
                f"option xval_scheme={scheme!r} is unknown: use one of {', '.join(_XVAL_SCHEMES)} "
                "or explicit groups of 0-based run indices, e.g. ((0, 1), (2, 3))"
            )
        return scheme
    try:
        folds = tuple(tuple(int(r) for r in np.atleast_1d(fold)) for fold in scheme)
    except (TypeError, ValueError):
        raise GlmOptionError(f"option xval_scheme must be a name or groups of run indices, got {scheme!r}") from None
    if not folds or any(len(f) == 0 for f in folds):
        raise GlmOptionError(f"option xval_scheme needs at least one non-empty fold, got {scheme!r}")
    return folds


def check_options(opts: GlmOptions) -> GlmOptions:
    """Check every option of ``opts`` and return it normalised (fracs sorted, schemes as tuples).

    Raises
    ------
    GlmOptionError
        The first bad option, named, with what is allowed.
    """
    if isinstance(opts.maxpolydeg, (list, np.ndarray)):
        opts = dataclasses.replace(opts, maxpolydeg=tuple(opts.maxpolydeg))
    for name in ("wantlibrary", "wantglmdenoise", "wantfracridge", "wantpercentbold",
                 "wantautoscale", "xval_zscore"):
        _bool(name, getattr(opts, name))
    _check_counts(opts)
    for name, allowed in _CHOICES.items():
        if getattr(opts, name) not in allowed:
            raise GlmOptionError(f"option {name}={getattr(opts, name)!r}: use one of {', '.join(allowed)}")
    thresh = tuple(opts.brainthresh) if np.ndim(opts.brainthresh) == 1 else ()
    if len(thresh) != 2 or not 0 <= _finite("brainthresh", thresh[0]) <= 100 or _finite("brainthresh", thresh[1]) < 0:
        raise GlmOptionError(
            f"option brainthresh must be (percentile in 0..100, fraction >= 0), got {opts.brainthresh!r}"
        )
    for name in ("brain_r2", "pc_r2_cutoff"):
        if getattr(opts, name) is not None:
            _finite(name, getattr(opts, name))
    if not isinstance(opts.tail_seed, (int, np.integer)) or isinstance(opts.tail_seed, bool):
        raise GlmOptionError(f"option tail_seed must be an integer, got {opts.tail_seed!r}")
    return dataclasses.replace(
        opts,
        fracs=_check_fracs(opts.fracs),
        xval_scheme=_check_scheme(opts.xval_scheme),
        brainthresh=(float(thresh[0]), float(thresh[1])),
        pcstop=float(opts.pcstop),
    )
