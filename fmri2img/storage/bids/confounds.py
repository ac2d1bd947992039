"""fMRIPrep confounds as nuisance regressors, chosen by named strategies as nilearn defines them.

fMRIPrep writes one ``*_desc-confounds_timeseries.tsv`` per run (fMRIPrep documentation, "Confounds"):
``trans_x``..``rot_z`` with ``_derivative1``, ``_power2`` and ``_derivative1_power2`` expansions,
``csf``, ``white_matter``, ``global_signal`` (expanded likewise), ``framewise_displacement``,
``dvars``, ``std_dvars``, ``cosine_XX``/``cosineXX`` (DCT high-pass basis), ``a_comp_cor_XX``,
``t_comp_cor_XX`` (CompCor; the ``.json`` beside the table says each component's ``Mask``:
``combined``, ``CSF`` or ``WM``), ``non_steady_state_outlier_XX`` and ``motion_outlier_XX``.
Derivative columns start with ``n/a``.

Which columns a strategy takes follows nilearn's ``load_confounds`` (nilearn 0.14,
``nilearn.interfaces.fmriprep``), the field's reference:

================  ===============================================================================
component         columns
================  ===============================================================================
motion            6 motion parameters; ``motion=basic`` 6, ``derivatives`` or ``power2`` 12,
                  ``full`` 24 (+ ``_derivative1``, ``_power2``, ``_derivative1_power2``)
wm_csf            ``csf``, ``white_matter``, expanded by ``wm_csf=`` as motion (2/4/4/8)
global_signal     ``global_signal``, expanded by ``global_signal=`` (1/2/2/4)
high_pass         every column containing ``cosine`` (none is not an error, as in nilearn)
compcor           ``compcor=anat_combined`` (``a_comp_cor`` with Mask ``combined``),
                  ``anat_separated`` (Mask ``WM`` then ``CSF``), ``temporal`` (``t_comp_cor``),
                  ``temporal_anat_combined``, ``temporal_anat_separated``; ``n_compcor=N`` keeps
                  the first N per mask (default ``all``); candidates come from the ``.json``
non_steady_state  always, as in nilearn: ``non_steady_state_outlier_XX`` volumes are censored
scrub             volumes with ``framewise_displacement > fd_threshold`` (0.5 mm) or
                  ``std_dvars > std_dvars_threshold`` (1.5), then segments shorter than
                  ``scrub`` (5) volumes, are censored
================  ===============================================================================

Presets are nilearn's ``load_confounds_strategy``: ``simple`` (high_pass + motion=full +
wm_csf=basic), ``scrubbing`` (+ wm_csf=full + scrub), ``compcor`` (high_pass + motion=full +
compcor=anat_combined), plus ``none``. (``ica_aroma`` is not offered: it needs fMRIPrep's AROMA
outputs.) A strategy is written as ``+``-joined tokens: a preset, a component, ``component=model``,
or an option (``n_compcor=5``, ``fd_threshold=0.2``, ``std_dvars_threshold=3``, ``demean=false``),
e.g. ``"motion=basic+high_pass+compcor+n_compcor=5"``.

The output differs from nilearn's in one way, because GLMsingle takes no sample mask: a censored
volume (non-steady-state or scrubbed) becomes a one-hot regressor ``censor_NNNN`` (which in a GLM
equals dropping the volume) instead of an entry missing from a sample mask. As nilearn does, a
first row of ``n/a`` takes the second row's value, and with ``demean`` (default) the continuous
regressors are centred on the volumes kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.storage.bids.errors import ConfoundsError, listing

__all__ = ["ConfoundStrategy", "COMPONENTS", "PRESETS", "parse_strategy", "strategy_columns", "censored_volumes",
           "confound_regressors"]

_MODELS = ("basic", "derivatives", "power2", "full")
_SUFFIXES = {"basic": (), "derivatives": ("derivative1",), "power2": ("power2",),
             "full": ("derivative1", "power2", "derivative1_power2")}
_COMPCOR = {"anat_combined": (("a", ("combined",)),), "anat_separated": (("a", ("WM", "CSF")),),
            "temporal": (("t", None),), "temporal_anat_combined": (("t", None), ("a", ("combined",))),
            "temporal_anat_separated": (("t", None), ("a", ("WM", "CSF")))}


@dataclass(frozen=True)
class ConfoundStrategy:
    """Which fMRIPrep confounds become regressors; fields and defaults are nilearn's ``load_confounds``.

    Attributes
    ----------
    components : tuple of str
        Among :data:`COMPONENTS` (``non_steady_state`` is added unless the strategy is ``none``).
    motion, wm_csf, global_signal : {"basic", "derivatives", "power2", "full"}
    compcor : str
        One of ``anat_combined``, ``anat_separated``, ``temporal``, ``temporal_anat_combined``,
        ``temporal_anat_separated``.
    n_compcor : int or "all"
    scrub : int
        Shortest segment of kept volumes; 0 censors only the volumes over a threshold.
    fd_threshold, std_dvars_threshold : float
    demean : bool
    text : str
        The text the strategy was parsed from (recorded with results).
    """

    components: tuple[str, ...] = ()
    motion: str = "full"
    wm_csf: str = "basic"
    global_signal: str = "basic"
    compcor: str = "anat_combined"
    n_compcor: int | str = "all"
    scrub: int = 5
    fd_threshold: float = 0.5
    std_dvars_threshold: float = 1.5
    demean: bool = True
    text: str = "none"


PRESETS: dict[str, dict[str, Any]] = {
    "none": dict(components=()),
    "simple": dict(components=("high_pass", "motion", "wm_csf", "non_steady_state"), motion="full",
                   wm_csf="basic"),
    "scrubbing": dict(components=("high_pass", "motion", "wm_csf", "scrub", "non_steady_state"), motion="full",
                      wm_csf="full", scrub=5, fd_threshold=0.5, std_dvars_threshold=1.5),
    "compcor": dict(components=("high_pass", "motion", "compcor", "non_steady_state"), motion="full",
                    compcor="anat_combined", n_compcor="all"),
}


def _int_or_all(value: str) -> int | str:
    return "all" if value == "all" else int(value)


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(value)
    return value.lower() in ("true", "1", "yes")


#: Options a token may set: name -> (field, parser).
_OPTIONS: dict[str, Callable[[str], Any]] = {"n_compcor": _int_or_all, "fd_threshold": float,
                                              "std_dvars_threshold": float, "demean": _bool}


def parse_strategy(text: str | ConfoundStrategy | None) -> ConfoundStrategy:
    """Parse a strategy such as ``"compcor"``, ``"motion=basic+high_pass"`` or ``"simple+global_signal"``.

    Raises
    ------
    ConfoundsError
        An unknown token or value (the message lists the known ones).
    """
    if isinstance(text, ConfoundStrategy):
        return text
    text = "none" if text is None or not str(text).strip() else str(text).strip()
    fields: dict[str, Any] = {"components": []}
    for k, token in enumerate(t.strip() for t in text.split("+")):
        name, _, value = token.partition("=")
        try:
            if name in PRESETS and k == 0 and not value:
                preset = PRESETS[name]
                fields.update({**preset, "components": list(preset["components"])})
            elif name in COMPONENTS:
                _add_component(fields, name, value)
            elif name in _OPTIONS and value:
                fields[name] = _OPTIONS[name](value)
            else:
                raise KeyError(name)
        except (KeyError, ValueError) as exc:
            raise ConfoundsError(
                f"confound strategy {text!r}: cannot use {token!r} ({type(exc).__name__}: {exc}); a strategy is "
                f"'+'-joined tokens: a preset first ({listing(PRESETS)}), components ({listing(COMPONENTS)}), "
                f"component=model (motion, wm_csf, global_signal: {listing(_MODELS)}; compcor: "
                f"{listing(_COMPCOR)}; scrub=<min segment>), options ({listing(f'{o}=...' for o in _OPTIONS)}). "
                f"Fix: e.g. 'motion=basic+high_pass+compcor+n_compcor=5'") from None
    if "compcor" in fields["components"] and "high_pass" not in fields["components"]:
        raise ConfoundsError(f"confound strategy {text!r}: compcor without high_pass; fMRIPrep high-pass filters "
                             f"before CompCor, so its cosine regressors must enter the model too (fMRIPrep's "
                             f"'Confounds' documentation; nilearn refuses the same). Fix: add +high_pass")
    if fields["components"] and "non_steady_state" not in fields["components"]:
        fields["components"].append("non_steady_state")
    fields["components"] = tuple(dict.fromkeys(fields["components"]))
    return ConfoundStrategy(**fields, text=text)


def _add_component(fields: dict[str, Any], name: str, value: str) -> None:
    fields["components"].append(name)
    if not value:
        return
    if name in ("motion", "wm_csf", "global_signal") and value in _MODELS:
        fields[name] = value
    elif name == "compcor" and value in _COMPCOR:
        fields[name] = value
    elif name == "scrub" and value.isdigit():
        fields[name] = int(value)
    else:
        raise ValueError(f"{name} takes no value {value!r}")


# --------------------------------------------------------------------------- column choice


def _expanded(bases: tuple[str, ...], model: str) -> list[str]:
    return [*bases] + [f"{b}_{s}" for s in _SUFFIXES[model] for b in bases]


def _motion(s: ConfoundStrategy, columns: list[str], meta: Mapping | None) -> list[str]:
    return _expanded(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"), s.motion)


def _wm_csf(s: ConfoundStrategy, columns: list[str], meta: Mapping | None) -> list[str]:
    return _expanded(("csf", "white_matter"), s.wm_csf)


def _global(s: ConfoundStrategy, columns: list[str], meta: Mapping | None) -> list[str]:
    return _expanded(("global_signal",), s.global_signal)


def _high_pass(s: ConfoundStrategy, columns: list[str], meta: Mapping | None) -> list[str]:
    return [c for c in columns if "cosine" in c]


def _non_steady(s: ConfoundStrategy, columns: list[str], meta: Mapping | None) -> list[str]:
    return [c for c in columns if "non_steady_state" in c]


def _censoring(s: ConfoundStrategy, columns: list[str], meta: Mapping | None) -> list[str]:
    return []  # non_steady_state and scrub censor volumes (censored_volumes) rather than take columns


def _compcor(s: ConfoundStrategy, columns: list[str], meta: Mapping | None) -> list[str]:
    if meta is None:
        raise ConfoundsError("compcor needs the confounds' .json (each component's Mask), which is missing. "
                             "Fix: copy fMRIPrep's *_desc-confounds_timeseries.json beside the table, or choose "
                             "a strategy without compcor")
    chosen: list[str] = []
    for prefix, masks in _COMPCOR[s.compcor]:
        count = sum(f"{prefix}_comp_cor" in key for key in meta)
        names = [f"{prefix}_comp_cor_{k:02d}" for k in range(count)]
        groups = [names] if masks is None else [[n for n in names if n in meta and isinstance(meta[n], Mapping)
                                                 and str(meta[n].get("Mask", "")) in m] for m in masks]
        for group in groups:
            chosen += group if s.n_compcor == "all" else group[:int(s.n_compcor)]
    return chosen


#: Component name -> its column choice ``(strategy, tsv columns, json metadata) -> columns``; ``non_steady_state``
#: and ``scrub`` take no column: they censor volumes (:func:`censored_volumes`).
COMPONENTS: dict[str, Callable[[ConfoundStrategy, list[str], Mapping | None], list[str]]] = {
    "motion": _motion, "wm_csf": _wm_csf, "global_signal": _global, "high_pass": _high_pass,
    "compcor": _compcor, "non_steady_state": _censoring, "scrub": _censoring,
}


def strategy_columns(strategy: ConfoundStrategy | str, columns: list[str], meta: Mapping | None = None,
                     *, where: str = "confounds") -> list[str]:
    """The columns of a confounds table a strategy takes (before censoring), in strategy order.

    Raises
    ------
    ConfoundsError
        Columns the strategy names are not in the table (lists what is missing and what exists).
    """
    strategy = parse_strategy(strategy)
    chosen: list[str] = []
    missing: dict[str, list[str]] = {}
    for name in strategy.components:
        try:
            wanted = COMPONENTS[name](strategy, columns, meta)
        except ConfoundsError as exc:
            raise ConfoundsError(f"{where}: {exc}") from None
        lacking = [c for c in wanted if c not in columns]
        if lacking:
            missing[name] = lacking
        chosen += [c for c in wanted if c not in chosen and c in columns]
    if missing:
        lacking = [c for cols in missing.values() for c in cols]
        raise ConfoundsError(
            f"{where}: confound strategy {strategy.text!r} ({', '.join(missing)}) needs columns the file lacks: "
            f"{listing(lacking)}; it has {listing(columns, limit=40)}. Fix: choose a strategy that uses the "
            f"columns present (e.g. motion=basic), or rerun fMRIPrep to produce them")
    return chosen


def censored_volumes(strategy: ConfoundStrategy | str, table: pd.DataFrame, *, where: str = "confounds"
                     ) -> np.ndarray:
    """Volumes the strategy censors (non-steady-state and scrubbed), sorted, int64."""
    strategy = parse_strategy(strategy)
    n = len(table)
    out: set[int] = set()
    if "non_steady_state" in strategy.components:
        for c in _non_steady(strategy, list(table.columns), None):
            out |= set(np.flatnonzero(np.nan_to_num(table[c].to_numpy(float)) > 0).tolist())
    if "scrub" in strategy.components:
        need = [c for c in ("framewise_displacement", "std_dvars") if c not in table.columns]
        if need:
            raise ConfoundsError(f"{where}: scrub needs the columns {listing(need)}, which the file lacks; it has "
                                 f"{listing(table.columns, limit=40)}. Fix: drop scrub from the strategy")
        fd = table["framewise_displacement"].to_numpy(float)
        dv = table["std_dvars"].to_numpy(float)
        over = np.flatnonzero((fd > strategy.fd_threshold) | (dv > strategy.std_dvars_threshold))
        out |= set(_short_segments(over, n, strategy.scrub).tolist())
    return np.array(sorted(out), dtype=np.int64)


def _short_segments(over: np.ndarray, n: int, scrub: int) -> np.ndarray:
    """Outlier volumes plus the kept segments shorter than ``scrub`` volumes (Power et al. 2014, as nilearn)."""
    if scrub <= 0 or len(over) == 0:
        return over
    bad = np.zeros(n, bool)
    bad[over] = True
    kept = np.flatnonzero(~bad)
    if len(kept):
        starts = np.concatenate([[kept[0]], kept[1:][np.diff(kept) > 1]])
        ends = np.concatenate([kept[:-1][np.diff(kept) > 1], [kept[-1]]]) + 1
        for a, b in zip(starts, ends):
            if b - a < scrub:
                bad[a:b] = True
    return np.flatnonzero(bad)


def confound_regressors(table: pd.DataFrame, strategy: ConfoundStrategy | str, meta: Mapping | None = None,
                        *, where: str = "confounds") -> tuple[np.ndarray, list[str]]:
    """A run's nuisance regressors: the strategy's columns (first-row n/a filled, demeaned) and censoring spikes.

    Parameters
    ----------
    table : DataFrame of shape (n_volumes, n_columns)
        fMRIPrep's confounds table.
    strategy : ConfoundStrategy or str
    meta : dict, optional
        The confounds' ``.json`` (needed by compcor).
    where : str
        The file's name, for messages.

    Returns
    -------
    regressors : array of shape (n_volumes, n_regressors), float64
    names : list of str
        The columns' names, then ``censor_NNNN`` for each censored volume.

    Raises
    ------
    ConfoundsError
        Missing columns, or n/a values beyond the first row.
    """
    strategy = parse_strategy(strategy)
    columns = strategy_columns(strategy, list(table.columns), meta, where=where)
    values = table[columns].to_numpy(dtype=np.float64, copy=True) if columns else np.zeros((len(table), 0))
    if len(values) > 1:
        first = np.isnan(values[0])
        values[0, first] = values[1, first]
    bad = np.argwhere(np.isnan(values))
    if len(bad):
        rows = sorted({int(r) for r, _ in bad})
        names = sorted({columns[c] for _, c in bad})
        raise ConfoundsError(f"{where}: columns {listing(names)} hold n/a in rows {listing(rows)} (only the first "
                             f"row of a derivative may be n/a). Fix: repair the table, or choose a strategy "
                             f"without those columns")
    censored = censored_volumes(strategy, table, where=where)
    if strategy.demean and values.shape[1]:
        keep = np.setdiff1d(np.arange(len(values)), censored)
        values -= values[keep].mean(axis=0) if len(keep) else 0.0
    spikes = np.zeros((len(values), len(censored)))
    spikes[censored, np.arange(len(censored))] = 1.0
    return np.hstack([values, spikes]), columns + [f"censor_{v:04d}" for v in censored]


def strategy_record(strategy: ConfoundStrategy | str) -> dict[str, Any]:
    """The strategy as a plain dict (for attrs and provenance)."""
    return dataclasses.asdict(parse_strategy(strategy))
