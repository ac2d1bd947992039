"""Checks of the run configuration: TOML tables → dataclasses by name and type, then cross-field checks.

:func:`from_dict` builds a dataclass of :mod:`fmri2img.config.sections` from a table, refusing
unknown keys and wrong types by name; :func:`validate` runs the checks that types alone cannot
express (sessions, subjects, extractor options and kinds, cluster options, stages, decode), then
every check a stage declared with :func:`register_check`.

The configuration imports no stage: a stage whose options need its own knowledge (the regress
stage's ridge options, the reconstruct stage's runs) declares a check beside its code and
registers it when the stage module is imported (importing :mod:`fmri2img.pipeline` registers all
of them; the runner validates again before any stage runs, so a configuration is never run
unchecked).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Mapping

from fmri2img.config.errors import ConfigError
from fmri2img.config.sections import STAGES, Config, parse_sessions




#: name → check(config) declared by a stage (see the module docstring); each raises ConfigError
CHECKS: dict[str, Callable[[Config], None]] = {}


def register_check(name: str, check: Callable[[Config], None]) -> None:
    """Declare a stage's configuration check; :func:`validate` runs it after its own checks.

    Registering the same name again replaces the check (a module imported twice).
    """
    CHECKS[name] = check


_CHOICES = {
    "ingest.prefer": ("hdf5", "nii.gz"),
    "ingest.nan_policy": ("error", "zero"),
    "align.targets": ("encoding", "shared", "hybrid"),
    "ingest.experiment": ("nsd", "nsdimagery"),
    "glm.model": ("fithrf", "fithrf_glmdenoise", "fithrf_glmdenoise_rr"),
    "glm.onsets": ("round", "resample"),
    "reconstruct.device": ("auto", "cpu", "cuda", "mps"),
    "evaluate.device": ("auto", "cpu", "cuda", "mps"),
    "decode.calibration": ("loo", "none"),
    "decode.device": ("auto", "cpu", "cuda", "mps"),
}


def _check_type(value: Any, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    elif annotation is list or origin is list:
        ok = isinstance(value, list)
    elif annotation is dict or origin is dict:
        ok = isinstance(value, dict)
    elif isinstance(annotation, types.UnionType):
        ok = True
    else:
        ok = True
    if not ok:
        expected = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls, data: Mapping[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types by name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown key(s) {unknown} in {where}; valid keys are {sorted(fields)} (check the spelling)"
        )
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, name)
        else:
            value = _check_type(value, hint, name)
            if name in _CHOICES and value not in _CHOICES[name]:
                raise ConfigError(f"{name}: expected one of {list(_CHOICES[name])}, got {value!r}")
            kwargs[key] = value
    return cls(**kwargs)




def _check_decode(config: Config) -> None:
    """[decode]: an input to decode (betas, or the subject's NSD-Imagery betas), never both."""
    from fmri2img.storage.nsd.imagery import TASKS

    d = config.decode
    if d.imagery:
        given = [k for k in ("betas", "trials", "trials_file", "via") if getattr(d, k)]
        if given:
            raise ConfigError(f"decode.imagery = true decodes the subject's ingested NSD-Imagery betas, but "
                              f"decode.{given[0]} is set too; remove {', '.join('decode.' + g for g in given)} "
                              f"(decode.tasks selects vision, imagery, attention), or set imagery = false")
        unknown = [t for t in d.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"decode.tasks: {unknown} are not NSD-Imagery tasks; expected some of {list(TASKS)}")
    elif d.tasks:
        raise ConfigError(f"decode.tasks = {d.tasks} applies to NSD-Imagery only; set decode.imagery = true, or "
                          f"remove decode.tasks")
    elif "decode" in config.stages and not d.betas and not d.via:
        raise ConfigError("decode.betas: empty, but stages include \"decode\"; give the session file or masked "
                          "voxels to decode (or decode.imagery = true for the subject's NSD-Imagery betas, or "
                          "decode.via for a BIDS participant's own trials in the store)")


def _check_glm(config: Config) -> None:
    """[glm]: subjects to fit, a known preset and options, a positive block size (when the stage runs)."""
    if "glm" not in config.stages:
        return
    from fmri2img import glm

    g = config.glm
    if not g.subjects or any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 99 for s in g.subjects):
        raise ConfigError(f"glm.subjects: expected the store subjects to fit, like [1], got {g.subjects!r}")
    if g.block_size < 1:
        raise ConfigError(f"glm.block_size: expected a positive number of voxels per task, got {g.block_size}")
    if g.sessions not in ("all", ""):
        parse_sessions(g.sessions, field_name="glm.sessions")
    try:
        glm.resolve_options(g.preset, **dict(g.options))
    except glm.GlmInputError as exc:
        raise ConfigError(f"glm.preset / glm.options: {exc}") from None
    if g.bids:
        _check_glm_bids(g)


def _check_glm_bids(g) -> None:
    """[glm] with ``bids``: one participant into one store subject; NSD-only keys refused by name."""
    from fmri2img.storage.bids import BIDSError, parse_strategy

    if not g.participant:
        raise ConfigError("glm.participant: empty, but glm.bids is set; give the BIDS participant label (e.g. 01)")
    if len(g.subjects) != 1:
        raise ConfigError(f"glm.subjects = {g.subjects}: a BIDS participant goes to one store subject; give one "
                          f"number no NSD subject of the store uses (e.g. [9])")
    nsd_only = [k for k, v in (("export", g.export), ("mask", g.mask)) if v] + \
        (["sessions"] if g.sessions not in ("all", "") else [])
    if nsd_only:
        raise ConfigError(f"glm.{nsd_only[0]} applies to NSD's time series, not to glm.bids (a BIDS session is "
                          f"glm.session, the mask the runs' own); remove {', '.join('glm.' + k for k in nsd_only)}")
    try:
        parse_strategy(g.confounds)
    except BIDSError as exc:
        raise ConfigError(f"glm.confounds: {exc}") from None


def validate(config: Config) -> Config:
    """Cross-field checks that types alone cannot express."""
    config.ingest.session_list()
    scale = config.ingest.betas_scale
    if isinstance(scale, str) and scale != "nsd" or isinstance(scale, bool) or \
            not isinstance(scale, (str, int, float)) or not isinstance(scale, str) and not 0 < scale < float("inf"):
        raise ConfigError(f"ingest.betas_scale: expected \"nsd\" (NSD's int16 × 300) or a positive number the betas "
                          f"are divided by (1 for floats in percent signal change, 300 for floats × 300), "
                          f"got {scale!r}")
    for s in config.ingest.subjects:
        if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 99:
            raise ConfigError(f"ingest.subjects: expected subject numbers like [1, 2, 5, 7], got {s!r}")
    from fmri2img.models import extractors

    for name, options in config.features.extractors.items():
        if not isinstance(options, dict):
            raise ConfigError(f"features.extractors.{name}: expected a table of options, got {options!r}")
        try:
            extractors.check_options(name, options, where="features.extractors")
        except extractors.ExtractorError as exc:
            raise ConfigError(str(exc)) from None
    from fmri2img.cluster import ClusterError, section_options

    try:
        section_options(dataclasses.asdict(config.cluster))
    except ClusterError as exc:
        raise ConfigError(f"cluster: {exc}") from None
    for section in ("features", "reconstruct", "evaluate", "decode"):  # each is also the chunk size along 'image'
        count = getattr(config, section).images_per_task
        if count < 1:
            raise ConfigError(f"{section}.images_per_task: expected a positive number of images per task (each "
                              f"task's chunk along 'image'), got {count}; e.g. {section}.images_per_task = "
                              f"{getattr(type(getattr(config, section))(), 'images_per_task')}")
    known = set(STAGES)
    bad = [s for s in config.stages if s not in known]
    if bad:
        raise ConfigError(f"stages: unknown stage(s) {bad}; available: {list(STAGES)}")
    if "align" in config.stages and not (1 <= config.align.subject <= 99 and config.align.subject !=
                                         config.align.reference):
        raise ConfigError(f"align.subject: {config.align.subject!r} is not a new subject to align to align.reference "
                          f"{config.align.reference}; give the new subject's number (another than the reference)")
    _check_decode(config)
    _check_glm(config)
    if not config.store.url:
        raise ConfigError("store.url: empty; give the store's URL, e.g. './runs/x/store.zarr' or 's3://bucket/x.zarr'")
    for check in CHECKS.values():
        check(config)
    return config
