"""``fmri2img glm --bids``: a BIDS participant's sessions → the glm groups → ``subjects/subjNN/betas``.

A new person goes to a store subject of their own (``--subject N``, a number no NSD subject of the
store uses), in their own voxel space (the runs' common brain mask in the fMRIPrep space asked
for; never resampled to an NSD subject's: alignment does that job, :mod:`fmri2img.pipeline.clinical.align`).

1. :func:`prepare_bids_subject` (no write): opens the dataset, checks every chosen session's runs
   (:func:`fmri2img.storage.bids.prepare_glm_inputs`) and plans its GLM, reads the stimuli and
   matches them to the store's NSD images by pixels (:mod:`.stimuli`), and refuses a subject
   number that holds another dataset's (or another participant's) data.
2. :func:`glm_bids_subject`: records where the subject came from (``subjects/subjNN`` attribute
   ``fmri2img_origin``: dataset, participant, space, and each store session's BIDS label), fits each
   session (:func:`~.stage.glm_session`: ``subjects/subjNN/glm/sessionSS``, sessions numbered by
   their place among the participant's session labels, so ``ses-02`` is always session 2), writes
   ``subjects/subjNN/stimuli`` (what each condition showed, at the store's side, with its NSD id or
   -1) and ``subjects/subjNN/betas`` from the chosen model: trials × the voxels every recorded session
   has, with ``session``, ``run``, ``image`` (NSD id or -1) and ``stimulus`` (row of the stimuli
   group) per trial; one task per voxel block.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping

import numpy as np
import xarray as xr

from fmri2img import glm
from fmri2img.pipeline.glm import groups
from fmri2img.pipeline.glm.bids_inputs import BIDSInputs
from fmri2img.pipeline.glm.run import GlmRunError, read_hrf_library
from fmri2img.pipeline.glm.stage import INPUTS_ATTR, glm_session, plan_session
from fmri2img.pipeline.glm.stimuli import ParticipantStimuli, participant_stimuli
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import schema, secrets
from fmri2img.storage.store import Region, Store

logger = logging.getLogger(__name__)

__all__ = ["ORIGIN_ATTR", "subject_origin", "prepare_bids_subject", "glm_bids_subject", "require_shared"]

#: attribute of ``subjects/subjNN``: what the subject's data came from (JSON)
ORIGIN_ATTR = "fmri2img_origin"


def subject_origin(store: Store, subject: int) -> dict | None:
    """What ``subjects/subjNN`` holds: its recorded BIDS origin, ``{"kind": "nsd", "source": ...}`` for data
    written by ingest or the NSD glm, or None for an unused number."""
    group = f"subjects/{schema.subject_key(subject)}"
    if not store.has_group(group):
        return None
    raw = store.group(group).attrs.get(ORIGIN_ATTR)
    if raw:
        return json.loads(raw)
    parts = store.list_groups(group + "/")
    if not parts:
        return None
    sources = sorted({str(store.group(p).attrs.get("source", "")) for p in parts} - {""})
    return {"kind": "nsd", "source": sources[0] if sources else "unknown", "groups": parts}


def _check_entry(store: Store, subject: int, origin: Mapping[str, Any]) -> None:
    found = subject_origin(store, subject)
    if found is None:
        return
    same = found.get("kind") == "bids" and all(found.get(k) == origin[k] for k in ("dataset", "participant", "space"))
    if same:
        return
    if found.get("kind") == "bids":
        what = (f"BIDS participant sub-{found.get('participant')} of {found.get('dataset')} (space "
                f"{found.get('space')})")
    else:
        what = f"data of another dataset ({found.get('source')}: {', '.join(found.get('groups', [])[:3])})"
    used = sorted(int(g.split("/")[1][4:]) for g in store.list_groups("subjects/") if g.count("/") >= 2)
    raise GlmRunError(f"--subject {subject}: subjects/{schema.subject_key(subject)} in {store.describe()} already "
                      f"holds {what}; sub-{origin['participant']} of {origin['dataset']} (space {origin['space']}) "
                      f"would mix two people. Nothing was written. Fix: choose a number no subject uses (in use: "
                      f"{sorted(set(used))}), or delete subjects/{schema.subject_key(subject)} first")


def _sessions(dataset, participant: str, session: str) -> dict[int, str | None]:
    """Store session number → BIDS session label (None: a dataset without sessions)."""
    labels = dataset.sessions(participant)
    if not labels:
        if session:
            dataset.runs(participant, session=session)  # raises: no sessions, listing what exists
        return {1: None}
    wanted = [session.removeprefix("ses-")] if session else labels
    for label in wanted:
        if label not in labels:
            dataset.runs(participant, session=label)  # raises with the sessions that exist
    return {labels.index(label) + 1: label for label in wanted}


def prepare_bids_subject(store: Store, subject: int, *, bids: str, participant: str, derivatives: str = "",
                         session: str = "", task: str = "", space: str = "", stim_column: str = "stim_file",
                         confounds: str = "none", onsets: str = "round", preset: str = "glmsingle",
                         options: Mapping[str, Any] | None = None, hrf_library: str = "",
                         storage_options: Mapping[str, Any] | None = None, **_: Any) -> dict:
    """Every check of ``glm --bids`` before anything is written (see the module docstring).

    Returns
    -------
    dict
        ``sessions`` (store number → BIDS label), ``inputs`` (one :class:`BIDSInputs` a session),
        ``plans``, ``stimuli`` (:class:`~.stimuli.ParticipantStimuli` of every condition of every session),
        ``options``, ``library``, ``origin``.
    """
    from fmri2img.storage.bids import open_bids, prepare_glm_inputs

    opts = glm.resolve_options(preset, **dict(options or {}))
    so = dict(storage_options or {}) or None
    dataset = open_bids(bids, so, derivatives=derivatives or None)
    participant = participant.removeprefix("sub-")
    space = space or "T1w"
    origin = {"kind": "bids", "dataset": secrets.redact(bids), "derivatives": secrets.redact(derivatives or ""),
              "participant": participant, "space": space}
    _check_entry(store, subject, origin)
    numbers = _sessions(dataset, participant, session)
    prepared = {s: prepare_glm_inputs(dataset, participant, session=label, task=task or None, space=space,
                                      stim_column=stim_column, confounds=confounds, onsets=onsets)
                for s, label in numbers.items()}
    earlier = [c for s in _recorded_sessions(store, subject) if s not in numbers
               for c in _session_facts(store, subject, s)["conditions"]]  # sessions an earlier call fitted
    names = list(dict.fromkeys([c for p in prepared.values() for c in p.conditions] + earlier))
    stimuli = participant_stimuli(store, dataset, names)
    ids = dict(zip(names, stimuli.images.tolist()))
    inputs = {s: BIDSInputs(p, np.array([ids[c] for c in p.conditions], np.int64), secrets.redact(bids))
              for s, p in prepared.items()}
    first = next(iter(inputs.values()))
    library = read_hrf_library(hrf_library, first.tr, so) if hrf_library else None
    plans = {s: plan_session(inp, opts, library) for s, inp in inputs.items()}
    origin.update(task=first.prepared.task, stim_column=stim_column, stimuli=stimuli.kind)
    logger.info("sub-%s → subject %d: sessions %s, %d conditions (%d matched to the store's NSD images)",
                participant, subject, numbers, len(names), stimuli.n_matched)
    return {"sessions": numbers, "inputs": inputs, "plans": plans, "stimuli": stimuli, "options": opts,
            "library": library, "origin": origin}


def require_shared(store: Store, stimuli: ParticipantStimuli, reference: int) -> None:
    """Refuse (before any write) a participant who saw none of ``reference``'s training images."""
    train = schema.subject_group(reference, "train")
    ref = np.asarray(store.group(train)["image"][:]) if store.has_group(train) else None
    shared = np.isin(stimuli.images, ref) if ref is not None else stimuli.images >= 0
    if shared.any():
        return
    examples = ", ".join(stimuli.names[:3])
    whose = f"subject {reference}'s {len(ref)} training images" if ref is not None else "the store's NSD images"
    raise GlmRunError(f"none of the participant's {len(stimuli.names)} stimuli ({stimuli.kind}: {examples}, ...) "
                      f"matches {whose} ({stimuli.n_matched} matched any stored image), but the alignment needs "
                      f"images both saw. Nothing was written. Fix: check that the events' stimulus column names the "
                      f"NSD pictures shown (files are matched by their pixels), ingest the reference subject first, "
                      f"or leave align out")


def _record_origin(store: Store, subject: int, origin: Mapping[str, Any], sessions: Mapping[int, Any]) -> None:
    group = f"subjects/{schema.subject_key(subject)}"
    root = store.root()
    g = root.require_group(group)
    before = json.loads(g.attrs.get(ORIGIN_ATTR, "{}") or "{}")
    merged = {**before.get("sessions", {}), **{str(s): (label or "") for s, label in sessions.items()}}
    g.attrs[ORIGIN_ATTR] = json.dumps({**before, **origin, "sessions": dict(sorted(merged.items(),
                                                                                  key=lambda kv: int(kv[0])))})


def _fresh(store: Store, subject: int) -> str | None:
    for group in ("subjects", f"subjects/{schema.subject_key(subject)}"):
        if not store.has_group(group):
            return group
    return None


def glm_bids_subject(store: Store, subject: int, *, prepared: Mapping[str, Any] | None = None,
                     preset: str = "glmsingle", model: str = "fithrf_glmdenoise_rr", block_size: int = 4096,
                     keep_timeseries: bool = False, client=None, progress: bool = True,
                     config: Mapping[str, Any] | None = None, **checks: Any) -> dict:
    """Fit a BIDS participant's sessions into store subject ``subject`` and write its betas.

    ``prepared``: what :func:`prepare_bids_subject` returned (else it is called with ``checks``).

    Returns
    -------
    dict
        Per session the glm summary; the betas' trials, voxels and sessions; the stimuli matched.
    """
    t0 = time.perf_counter()
    prep = dict(prepared or prepare_bids_subject(store, subject, preset=preset, **checks))
    origin, stimuli = prep["origin"], prep["stimuli"]
    fresh, consolidated = _fresh(store, subject), store.has_group("") and store.is_consolidated()
    _record_origin(store, subject, origin, prep["sessions"])
    fitted = {}
    try:
        for s, inp in prep["inputs"].items():
            plan = prep["plans"][s]
            attrs = {"source": origin["dataset"], "preset": preset, "participant": origin["participant"],
                     "bids_session": prep["sessions"][s] or "", "conditions": json.dumps(inp.conditions),
                     "trial_conditions": json.dumps(np.asarray(plan.trials.conditions).tolist())}
            fitted[f"session{s:02d}"] = glm_session(store, inp, subject, s, options=prep["options"],
                                                    hrf_library=prep["library"], block_size=block_size,
                                                    client=client, progress=progress, attrs=attrs,
                                                    keep_timeseries=keep_timeseries)
    except ValueError:  # bad input found while reading: the subject entry goes too, if this call made it
        if fresh:
            store.delete_group(fresh)
            if consolidated:
                store.consolidate()
        raise
    written = write_betas(store, subject, stimuli, model, origin, client=client, progress=progress, config=config)
    return {"subject": int(subject), "participant": origin["participant"], "sessions": prep["sessions"],
            "model": model, "glm": fitted, "betas": written, "seconds": round(time.perf_counter() - t0, 3)}


# -- the participant's betas and stimuli ----------------------------------------------------------

def _recorded_sessions(store: Store, subject: int) -> list[int]:
    if not store.has_group(f"subjects/{schema.subject_key(subject)}"):
        return []
    raw = store.group(f"subjects/{schema.subject_key(subject)}").attrs.get(ORIGIN_ATTR, "{}")
    numbers = sorted(int(s) for s in json.loads(raw).get("sessions", {}))
    return [s for s in numbers if store.is_complete(groups.glm_group(subject, s))]


def _session_facts(store: Store, subject: int, session: int) -> dict:
    g = store.group(groups.glm_group(subject, session))
    flat = np.ravel_multi_index(tuple(np.asarray(g[f"voxel_{c}"][:], np.int64) for c in "ijk"),
                                tuple(json.loads(g.attrs["volume_shape"])))
    return {"flat": flat, "shape": tuple(json.loads(g.attrs["volume_shape"])), "affine": g.attrs["affine"],
            "conditions": json.loads(g.attrs["conditions"]),
            "trial_conditions": json.loads(g.attrs["trial_conditions"]),
            "run": np.asarray(g["run"][:], np.int16), "key": g.attrs.get(INPUTS_ATTR, "")}


def _stimuli_template(stimuli: ParticipantStimuli, names: list[str]) -> xr.Dataset:
    row = {n: k for k, n in enumerate(stimuli.names)}
    picks = [row[n] for n in names]
    data = {}
    if stimuli.pixels is not None:
        data["images"] = (("stimulus", "y", "x", "rgb"), stimuli.pixels[picks])
    ds = xr.Dataset(data, coords={"stimulus": ("stimulus", np.arange(len(names), dtype=np.int64)),
                                  "stim_file": ("stimulus", np.asarray(names, dtype=object)),
                                  "image": ("stimulus", stimuli.images[picks].astype(np.int64))})
    if "images" in ds:
        ds["images"].attrs.update(units="uint8 RGB", long_name="what the participant saw, at the store's side")
    ds["image"].attrs["long_name"] = "0-based NSD-73k id of the stimulus (-1: not an image of the store)"
    return ds


def write_betas(store: Store, subject: int, stimuli: ParticipantStimuli, model: str, origin: Mapping[str, Any], *,
                client=None, progress: bool = True, config: Mapping[str, Any] | None = None) -> dict:
    """``subjects/subjNN/stimuli`` and ``subjects/subjNN/betas`` from every recorded, finished session."""
    sessions = _recorded_sessions(store, subject)
    facts = {s: _session_facts(store, subject, s) for s in sessions}
    shapes = {(f["shape"], f["affine"]) for f in facts.values()}
    if len(shapes) > 1:
        raise GlmRunError(f"subject {subject}'s sessions {sessions} lie on different voxel grids ({len(shapes)}); "
                          f"its betas need one. Fix: fit every session in one fMRIPrep space (--space)")
    names = list(dict.fromkeys(c for f in facts.values() for c in f["conditions"]))
    missing = [n for n in names if n not in stimuli.names]
    if missing:  # a session fitted by an earlier call with other stimuli
        raise GlmRunError(f"subject {subject}: recorded sessions show stimuli this call did not read "
                          f"({missing[:3]}); run fmri2img glm --bids without --session to refit them all")
    common = facts[sessions[0]]["flat"]
    for f in facts.values():
        common = np.intersect1d(common, f["flat"])
    shape = facts[sessions[0]]["shape"]
    attrs = {**schema.provenance(source=origin["dataset"], config=config, subject=int(subject)), "kind": "bids",
             "model": model, "participant": origin["participant"], ORIGIN_ATTR: json.dumps(origin),
             "sessions": ",".join(map(str, sessions))}
    sgroup = schema.subject_group(subject, "stimuli")
    stemplate = _stimuli_template(stimuli, names)
    region = Region(0, "stimulus", 0, len(names), "stimuli")
    if store.ensure_template(sgroup, stemplate, [region], attrs=attrs, salt=json.dumps(names)):
        store.mark_done(sgroup, region)  # numpy-backed: written with the template
    template, rows = _betas_template(facts, sessions, names, stimuli, common, shape)
    regions = groups.block_regions(len(common), schema.VOXEL_CHUNK)
    bgroup = schema.subject_group(subject, "betas")
    salt = json.dumps([model, [facts[s]["key"] for s in sessions]])
    todo = store.ensure_template(bgroup, template, regions, attrs={**attrs, "trials_per_session": int(
        max(len(f["run"]) for f in facts.values()))}, salt=salt)
    positions = {s: np.searchsorted(facts[s]["flat"], common) for s in sessions}
    run_tasks([Task(r.label, betas_block, (store, subject, sessions, positions, model, r)) for r in todo],
              stage=f"glm-betas-subj{subject:02d}", client=client, progress=progress)
    return {"group": bgroup, "trials": int(rows), "voxels": int(len(common)), "sessions": sessions,
            "stimuli": len(names), "matched": int((stemplate.image.values >= 0).sum()), "kind": stimuli.kind}


def _betas_template(facts, sessions, names, stimuli, common, shape) -> tuple[xr.Dataset, int]:
    index = {n: k for k, n in enumerate(names)}
    image_of = dict(zip(stimuli.names, stimuli.images.tolist()))
    stim = np.concatenate([[index[facts[s]["conditions"][c]] for c in facts[s]["trial_conditions"]] for s in sessions])
    stim = stim.astype(np.int64)
    session = np.concatenate([np.full(len(facts[s]["run"]), s, np.int16) for s in sessions])
    run = np.concatenate([facts[s]["run"] for s in sessions]).astype(np.int16)
    n = len(stim)
    ds = xr.Dataset({"betas": (("trial", "voxel"), schema.lazy_zeros((n, len(common)), (n, schema.VOXEL_CHUNK),
                                                                     np.float32))},
                    coords={"trial": ("trial", np.arange(n, dtype=np.int64)), "session": ("trial", session),
                            "run": ("trial", run),
                            "image": ("trial", np.array([image_of[names[k]] for k in stim], np.int64)),
                            "stimulus": ("trial", stim), **schema.voxel_coords(common, shape)})
    ds["betas"].attrs.update(units="percent signal change", long_name="single-trial GLM betas (the chosen model)")
    ds["image"].attrs["long_name"] = "0-based NSD-73k id of the image shown (-1: not an image of the store)"
    ds["stimulus"].attrs["long_name"] = "row of subjects/subjNN/stimuli the trial showed"
    return ds, n


def betas_block(store: Store, subject: int, sessions, positions, model: str, region: Region) -> dict:
    """One voxel block of the participant's betas, every session's trials (task)."""
    parts = []
    for s in sessions:
        g = store.group(groups.glm_group(subject, s))
        m = [str(x) for x in g["model"][:]].index(model)
        parts.append(np.asarray(g["betas"].get_orthogonal_selection((m, slice(None), positions[s][region.slice])),
                                np.float32))
    nbytes = store.write_region(schema.subject_group(subject, "betas"), region, {"betas": np.concatenate(parts)})
    return {"bytes": nbytes}
