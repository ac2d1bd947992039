"""The clinical stages from a configuration: ``[decode]`` (and overrides) → the function and its arguments.

:func:`decode_config` turns a :class:`~fmri2img.config.Config` into keyword arguments of
:func:`fmri2img.pipeline.clinical.decode.decode` (or of
:func:`fmri2img.pipeline.clinical.imagery.decode_imagery`), and :func:`decoder` picks the function.
The command line and the runner call these two; the configuration passes down into the stage and
nothing in the stage reads the configuration back.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from fmri2img.config import Config
from fmri2img.pipeline.clinical.common import DecodeError, stored_run
from fmri2img.pipeline.reconstruct import run_specs
from fmri2img.storage import schema
from fmri2img.storage.store import Store


def decode_config(config, store_url: str | None = None, **overrides: Any) -> dict:
    """Keyword arguments of :func:`decode` from a :class:`fmri2img.config.Config` (``[decode]``), with overrides.

    Runs come from ``[reconstruct.runs]`` (named by ``decode.runs``, default all); without a
    configuration file (``config=None``) from what the reconstruct stage recorded in the store.
    With ``imagery`` (``[decode] imagery = true`` or the override), those of
    :func:`fmri2img.pipeline.clinical.imagery.decode_imagery` instead, plus ``imagery=True``:
    :func:`decoder` picks the function.
    """
    given = config is not None
    config = config or Config()
    section = dataclasses.asdict(config.decode)
    section.update({k: v for k, v in overrides.items() if v not in (None, "", [], ())})
    store = Store(store_url or config.store.url, dict(config.store.storage_options))
    subject, names = int(section["subject"]), list(section["runs"])
    via = section.get("via") or None
    if via:  # a new subject aligned to a reference: the reference's runs
        from fmri2img.pipeline.clinical.align import reference_of
    runs_of = reference_of(via) if via else subject
    if given:
        specs = {s.name: s for s in run_specs(config)}
        unknown = sorted(set(names) - set(specs))
        if unknown:
            raise DecodeError(f"decode.runs: {unknown} are not [reconstruct.runs] of the configuration; it has "
                              f"{sorted(specs)}")
        runs = [specs[n] for n in (names or specs)]
    else:
        prefix = f"recon/{schema.subject_key(runs_of)}/"
        names = names or sorted({g[len(prefix):].rsplit("/", 1)[0] for g in store.list_groups(prefix)})
        runs = [stored_run(store, runs_of, n) for n in names]
    imagery, tasks = bool(section["imagery"]), list(section["tasks"] or ())
    if imagery:
        clash = [k for k in ("betas", "trials", "trials_file", "via") if section.get(k)]
        if clash:
            raise DecodeError(f"decode.imagery / --imagery decodes the subject's ingested NSD-Imagery betas "
                              f"(subjects/subjNN/imagery), but {', '.join(clash)} given too: remove them (tasks / "
                              f"--tasks selects vision, imagery, attention)")
    elif tasks:
        raise DecodeError(f"tasks {tasks} apply to NSD-Imagery only: add --imagery (or [decode] imagery = true)")
    elif not section["betas"] and not via:
        raise DecodeError("no betas to decode: give --betas URL (or [decode] betas in the configuration), or "
                          "--imagery for the subject's NSD-Imagery betas (or --via align-to-subjMM for a BIDS "
                          "participant's own trials in the store)")
    options = dict(section["storage_options"])
    if imagery:  # the keyword arguments of decode_imagery.decode_imagery, marked for decode_imagery.decoder
        return {"store": store, "subject": subject, "runs": runs, "name": section["name"] or None,
                "calibration": section["calibration"], "nets": section["nets"] or None,
                "weights": dataclasses.asdict(config.weights), "device": section["device"],
                "images_per_task": int(section["images_per_task"]),
                "config": config.redacted() if given else None, "tasks": tasks or None, "imagery": True}
    return {"store": store, "subject": subject, "betas": section["betas"] or None, "runs": runs,
            "name": section["name"] or None, "trials": section["trials"] or None,
            "trials_file": section["trials_file"] or None, "betas_scale": section["betas_scale"],
            "storage_options": options, "mask": section["mask"] or None, "mask_options": options,
            "calibration": section["calibration"], "nets": section["nets"] or None,
            "weights": dataclasses.asdict(config.weights), "device": section["device"],
            "images_per_task": int(section["images_per_task"]), "config": config.redacted() if given else None,
            "via": via}


def decoder(kwargs: Mapping[str, Any]):
    """``(function, its keyword arguments)`` for :func:`~fmri2img.pipeline.clinical.configured.decode_config`'s result.

    :func:`decode_imagery` when the configuration asked for NSD-Imagery (``imagery=True``, which
    is removed), else :func:`fmri2img.pipeline.clinical.decode.decode`.
    """
    from fmri2img.pipeline.clinical.decode import decode
    from fmri2img.pipeline.clinical.imagery import decode_imagery

    kwargs = dict(kwargs)
    return (decode_imagery if kwargs.pop("imagery", False) else decode), kwargs
