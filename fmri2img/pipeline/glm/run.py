"""``fmri2img glm``: a subject's sessions of NSD-layout time series → the glm groups → ``subjects/subjNN/betas``.

For each subject: every session's inputs are opened and checked, and every session's design is
planned, before anything is written (a bad file, design or option stops the command with one
error and an untouched store); then each session is fitted (:func:`~.stage.glm_session`); then
the ingest stage writes ``subjects/subjNN/betas`` (and train/test, ROI masks, stimuli) from the
chosen model (:mod:`fmri2img.pipeline.ingest.glm_betas`), so regress, decode and align run on
them unchanged; ``export`` also writes NSD-layout betas files (:mod:`.export`).
"""
from __future__ import annotations

import io
import logging
import re
import time
from typing import Any, Mapping, Sequence

import numpy as np

from fmri2img import glm
from fmri2img.config import parse_sessions
from fmri2img.pipeline.glm.inputs import NSDInputs
from fmri2img.pipeline.glm.stage import glm_session, plan_session
from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.storage import urls
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

__all__ = ["GlmRunError", "read_hrf_library", "nsd_sessions", "prepare_nsd_subject", "glm_nsd_subject"]


class GlmRunError(ValueError):
    """The glm command cannot run as asked; the message says why and the fix."""


def read_hrf_library(url: str, tr: float, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """An HRF library from a TSV: one column an HRF, one row a time step from the onset.

    Lines starting with ``#`` are comments; ``# step: SECONDS`` gives the time step (default:
    the data's TR). The step must be the TR (GLMsingle's ``hrflibrary`` option is sampled at
    the TR too): a library at another step is refused with the fix.

    Returns
    -------
    array of shape (n_time, n_hrf), float64
    """
    fs, path = urls.filesystem(url, dict(storage_options or {}) or None)
    try:
        with fs.open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise GlmRunError(f"HRF library {url} not found: give a TSV with one column an HRF (--hrf-library)") from None
    step = None
    for line in text.splitlines():
        m = re.match(r"\s*#\s*step\s*[:=]\s*([0-9.eE+-]+)", line)
        if m:
            step = float(m.group(1))
    try:
        hrfs = np.loadtxt(io.StringIO(text), delimiter="\t", comments="#", ndmin=2)
    except ValueError as exc:
        raise GlmRunError(f"HRF library {url} is not a table of numbers ({exc}); expected tab-separated columns, "
                          f"one HRF a column, one time step a row") from None
    if step is not None and abs(step - tr) > 1e-3 * tr:
        raise GlmRunError(f"HRF library {url} is sampled every {step} s but the data's TR is {tr:.4f} s; resample "
                          f"it to the TR (one row every {tr:.4f} s from the onset) and set '# step: {tr:.4f}'")
    return hrfs


def nsd_sessions(source: Source, subject: int, sessions: str | Sequence[int], space: str) -> list[int]:
    """The sessions to fit: ``"all"`` (every session with time series) or numbers like ``"1-3"``."""
    from fmri2img.storage.nsd import timeseries as ts

    fs, root = source.filesystem()
    found = ts.list_sessions(fs, ts.TimeseriesLayout(root, space or "func1pt8mm"), subject)
    if sessions in ("all", "", None):
        if not found:
            raise GlmRunError(f"no time series of subject {subject} under {source.safe_url} (expected "
                              f"nsddata_timeseries/ppdata/subj{subject:02d}/{space or 'func1pt8mm'}/timeseries/"
                              f"timeseries_sessionSS_runRR.nii.gz): check --source and --subject")
        return found
    wanted = list(parse_sessions(sessions, field_name="glm.sessions") or found) \
        if isinstance(sessions, str) else [int(s) for s in sessions]
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise GlmRunError(f"subject {subject} has no time series for session(s) {missing} under {source.safe_url}; "
                          f"sessions found: {found or 'none'}")
    return wanted


def prepare_nsd_subject(source: Source, subject: int, *, sessions: str | Sequence[int] = "all",
                        preset: str = "glmsingle", options: Mapping[str, Any] | None = None, hrf_library: str = "",
                        space: str = "", mask: str = "", **_: Any) -> dict:
    """Open and check every session's inputs and plan its design: all the glm checks, no write.

    Returns
    -------
    dict
        ``sessions``, ``inputs`` (one :class:`NSDInputs` a session), ``options``, ``library``.
    """
    opts = glm.resolve_options(preset, **dict(options or {}))
    numbers = nsd_sessions(source, subject, sessions, space)
    inputs = [NSDInputs.open(source.url, subject, s, storage_options=dict(source.storage_options),
                             space=space or "func1pt8mm", mask_url=mask) for s in numbers]
    library = read_hrf_library(hrf_library, inputs[0].tr, source.storage_options) if hrf_library else None
    for inp in inputs:
        plan_session(inp, opts, library)
    return {"sessions": numbers, "inputs": inputs, "options": opts, "library": library}


def glm_nsd_subject(store: Store, source: Source, subject: int, *, prepared: Mapping[str, Any] | None = None,
                    preset: str = "glmsingle", model: str = "fithrf_glmdenoise_rr", block_size: int = 4096,
                    export: str = "", keep_timeseries: bool = False, client=None, progress: bool = True,
                    config: Mapping[str, Any] | None = None, **checks: Any) -> dict:
    """Fit a subject's sessions, write its betas through ingest, and export them when asked.

    ``prepared``: what :func:`prepare_nsd_subject` returned (else it is called here with ``checks``:
    sessions, options, hrf_library, space, mask).

    Returns
    -------
    dict
        Per session the glm summary, the ingest summary, the exported files.
    """
    t0 = time.perf_counter()
    prep = dict(prepared or prepare_nsd_subject(source, subject, preset=preset, **checks))
    numbers = prep["sessions"]
    attrs = {"source": source.safe_url, "preset": preset}
    fitted = {f"session{s:02d}": glm_session(store, inp, subject, s, options=prep["options"],
                                             hrf_library=prep["library"], block_size=block_size, client=client,
                                             progress=progress, attrs=attrs, keep_timeseries=keep_timeseries)
              for s, inp in zip(numbers, prep["inputs"])}
    betas = ingest(store, source, subject, numbers, client=client, config=config, progress=progress,
                   glm_model=model)
    exported = {}
    if export:
        from fmri2img.pipeline.glm.export import export_betas

        exported = export_betas(store, subject, numbers, model, export)
    return {"subject": int(subject), "sessions": numbers, "model": model, "glm": fitted, "ingest": betas,
            "exported": exported, "seconds": round(time.perf_counter() - t0, 3)}
