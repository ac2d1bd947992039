"""A BIDS dataset and its fMRIPrep derivatives over any fsspec filesystem: discovery of runs.

Files read (BIDS specification: "Modality agnostic files", "Task events", "MRI: Task (including
resting state) imaging data"; fMRIPrep documentation: "Outputs of fMRIPrep"):

- raw dataset: ``dataset_description.json`` (required: its absence means "not BIDS"),
  ``participants.tsv`` (optional), ``sub-<label>/[ses-<label>/]func/*_bold.nii[.gz]`` (the runs),
  their ``*_events.tsv`` and ``*_bold.json`` sidecars, found by the Inheritance Principle (a
  ``task-<label>_bold.json`` at the root applies to every run of the task);
- derivatives (default ``<dataset>/derivatives/fmriprep``, a BIDS-Derivatives dataset with its own
  ``dataset_description.json``): per run ``*_space-<space>_desc-preproc_bold.nii.gz``,
  ``*_space-<space>_desc-brain_mask.nii.gz``, ``*_desc-confounds_timeseries.tsv`` and its
  ``.json`` (CompCor metadata), with the entities of the raw run (fMRIPrep writes ``run-1`` for a
  raw ``run-01``: indices are compared as numbers; a multi-echo run's ``echo-`` is dropped, as
  fMRIPrep combines the echoes).

Listing costs one ``ls`` of the dataset root and one recursive ``find`` per participant folder (on
object stores a flat prefix listing), for the raw dataset and the derivatives; nothing else is
read until asked for.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fmri2img.storage import urls
from fmri2img.storage.bids.entities import BIDSName, applicable_files, parse_name, same_entities
from fmri2img.storage.bids.errors import (BIDSFormatError, BIDSSelectionError, DerivativesMissingError,
                                          EventsError, MetadataError, NotBIDSError, listing)
from fmri2img.storage.bids.tables import read_json, read_tsv, shown

logger = logging.getLogger(__name__)

__all__ = ["BoldRun", "BIDSDataset", "open_bids", "DEFAULT_DERIVATIVES"]

#: Where the fMRIPrep derivatives are looked for when no URL is given (fMRIPrep's usual output folder).
DEFAULT_DERIVATIVES = "derivatives/fmriprep"
_NIFTI = (".nii.gz", ".nii")
#: Entities a derivative may add besides space/desc (fMRIPrep: ``res-2`` for template resolutions).
_DERIV_EXTRA = frozenset({"res", "den", "cohort"})


def _label(value: str | None, key: str) -> str | None:
    """``"01"`` from ``"01"`` or ``"sub-01"``."""
    if value is None:
        return None
    value = str(value).strip()
    return value[len(key) + 1:] if value.startswith(f"{key}-") else value


@dataclass(frozen=True)
class BoldRun:
    """One functional run: its raw files and fMRIPrep derivatives (paths relative to each dataset's root).

    Attributes
    ----------
    participant, session, task, space : str
        Labels without their prefixes; ``session`` is None in a dataset without sessions.
    entities : dict of str to str
        The raw BOLD file's entities (``sub``, ``ses``, ``task``, ``acq``, ``run``, ...).
    bold, events : str
        Raw ``*_bold.nii[.gz]`` and the ``*_events.tsv`` that applies to it (raw dataset root).
    metadata : dict
        The raw BOLD sidecars merged by the Inheritance Principle (RepetitionTime, SliceTiming, ...).
    preproc, mask, confounds : str
        fMRIPrep's preprocessed BOLD, brain mask and confounds table (derivatives root).
    confounds_json : str or None
        The confounds' metadata (CompCor masks), when present.
    preproc_metadata : dict
        The preprocessed BOLD's sidecars merged (fMRIPrep: RepetitionTime, SliceTimingCorrected, StartTime).
    """

    participant: str
    session: str | None
    task: str
    space: str
    entities: dict[str, str] = field(hash=False)
    bold: str
    events: str
    metadata: dict[str, Any] = field(hash=False, repr=False)
    preproc: str
    mask: str
    confounds: str
    confounds_json: str | None
    preproc_metadata: dict[str, Any] = field(hash=False, repr=False)

    @property
    def key(self) -> str:
        """The run's name without participant and suffix, e.g. ``ses-01_task-images_run-1``."""
        return "_".join(f"{k}-{v}" for k, v in self.entities.items() if k != "sub")


class BIDSDataset:
    """A raw BIDS dataset plus its fMRIPrep derivatives, each on an fsspec filesystem.

    Build with :func:`open_bids`. Paths given to and returned by the methods are relative to the
    dataset's root (raw) or the derivatives' root.
    """

    def __init__(self, fs: Any, root: str, deriv_fs: Any, deriv_root: str, description: Mapping[str, Any]):
        self.fs, self.root = fs, root.rstrip("/")
        self.deriv_fs, self.deriv_root = deriv_fs, deriv_root.rstrip("/")
        self.description = dict(description)
        self._files: dict[str, list[str]] = {}
        self._deriv: dict[str, list[str]] = {}
        self._top: list[str] | None = None
        self._deriv_top: list[str] | None = None

    # ------------------------------------------------------------------ paths and listings

    def path(self, rel: str) -> str:
        """Full path in :attr:`fs` of a file of the raw dataset."""
        return f"{self.root}/{rel}" if self.root else rel

    def deriv_path(self, rel: str) -> str:
        """Full path in :attr:`deriv_fs` of a file of the derivatives."""
        return f"{self.deriv_root}/{rel}" if self.deriv_root else rel

    def shown(self, rel: str, *, derivative: bool = False) -> str:
        """How a file is named in messages."""
        return shown(self.deriv_fs, self.deriv_path(rel)) if derivative else shown(self.fs, self.path(rel))

    @staticmethod
    def _top_level(fs: Any, root: str) -> list[str]:
        entries = fs.ls(root, detail=True)
        return sorted(posixpath.basename(e["name"].rstrip("/")) + ("/" if e.get("type") == "directory" else "")
                      for e in entries)

    @staticmethod
    def _tree(fs: Any, root: str, folder: str) -> list[str]:
        prefix = f"{root}/" if root else ""
        found = fs.find(prefix + folder) if fs.exists(prefix + folder) else []
        return sorted(p[len(prefix):] for p in found if p.startswith(prefix))

    def top_level(self) -> list[str]:
        """Names at the raw dataset's root (folders end with ``/``)."""
        if self._top is None:
            self._top = self._top_level(self.fs, self.root)
        return self._top

    def files(self, participant: str) -> list[str]:
        """The raw dataset's root-level files and every file of ``sub-<participant>/``."""
        participant = _label(participant, "sub")
        if participant not in self._files:
            top = [name for name in self.top_level() if not name.endswith("/")]
            self._files[participant] = top + self._tree(self.fs, self.root, f"sub-{participant}")
        return self._files[participant]

    def derivative_files(self, participant: str) -> list[str]:
        """The derivatives' root-level files and every file of their ``sub-<participant>/``."""
        participant = _label(participant, "sub")
        if participant not in self._deriv:
            if self._deriv_top is None:
                self._deriv_top = [n for n in self._top_level(self.deriv_fs, self.deriv_root) if not n.endswith("/")]
            self._deriv[participant] = self._deriv_top + self._tree(self.deriv_fs, self.deriv_root,
                                                                    f"sub-{participant}")
        return self._deriv[participant]

    def read_stimulus(self, stim_file: str):
        """The image a ``stim_file`` value names (BIDS: a path relative to ``/stimuli``), as RGB uint8.

        Returns
        -------
        image : array of shape (height, width, 3), uint8

        Raises
        ------
        BIDSFormatError
            The file is missing (the message lists what ``stimuli/`` holds) or not an image Pillow reads.
        """
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        rel = "stimuli/" + str(stim_file).lstrip("/").removeprefix("stimuli/")
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                return np.asarray(Image.open(f).convert("RGB"))
        except FileNotFoundError:
            found = self._tree(self.fs, self.root, "stimuli")
            raise BIDSFormatError(f"{self.shown(rel)} does not exist; stim_file values are paths relative to "
                                  f"/stimuli, which holds {listing(found)}. Fix: correct the events' stim_file "
                                  f"or add the image") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise BIDSFormatError(f"{self.shown(rel)} is not an image Pillow can read ({exc}). Fix: store the "
                                  f"stimulus as PNG or JPEG") from exc

    # ------------------------------------------------------------------ what exists

    def participants(self) -> list[str]:
        """Participant labels: the ``sub-<label>/`` folders at the root."""
        return [name[4:-1] for name in self.top_level() if name.startswith("sub-") and name.endswith("/")]

    def participants_table(self):
        """``participants.tsv`` as a table, or None when the dataset has none."""
        if "participants.tsv" not in self.top_level():
            return None
        return read_tsv(self.fs, self.path("participants.tsv"))

    def _bolds(self, participant: str) -> list[tuple[str, BIDSName]]:
        out = []
        for rel in self.files(participant):
            name = parse_name(rel)
            if (name and name.suffix == "bold" and name.extension in _NIFTI and "task" in name.entities
                    and posixpath.basename(posixpath.dirname(rel)) == "func"):
                out.append((rel, name))
        return out

    def sessions(self, participant: str) -> list[str]:
        """Session labels of a participant (empty for a dataset without sessions)."""
        participant = self._check_participant(participant)
        return sorted({n.entities["ses"] for _, n in self._bolds(participant) if "ses" in n.entities})

    def tasks(self, participant: str, session: str | None = None) -> list[str]:
        """Task labels with BOLD runs for a participant (and session)."""
        participant = self._check_participant(participant)
        session = _label(session, "ses")
        return sorted({n.entities["task"] for _, n in self._bolds(participant)
                       if session is None or n.entities.get("ses") == session})

    def spaces(self, participant: str, session: str | None = None, task: str | None = None) -> list[str]:
        """Output spaces with a ``desc-preproc_bold`` in the derivatives for this selection."""
        participant = self._check_participant(participant)
        session, task = _label(session, "ses"), _label(task, "task")
        found = set()
        for rel in self.derivative_files(participant):
            name = parse_name(rel)
            if (name and name.suffix == "bold" and name.extension in _NIFTI and name.get("desc") == "preproc"
                    and "space" in name.entities and (session is None or name.get("ses") == session)
                    and (task is None or name.get("task") == task)):
                found.add(name.entities["space"])
        return sorted(found)

    # ------------------------------------------------------------------ selection

    def _check_participant(self, participant: str) -> str:
        label = _label(participant, "sub")
        known = self.participants()
        if label not in known:
            raise BIDSSelectionError(
                f"{shown(self.fs, self.root)}: participant {label!r} does not exist; the dataset has "
                f"{listing(known)} (folders sub-<label>/). Fix: pass one of those labels")
        return label

    def _select(self, participant: str, session: str | None, task: str | None, space: str) -> list[tuple]:
        participant = self._check_participant(participant)
        session, task = _label(session, "ses"), _label(task, "task")
        sessions = self.sessions(participant)
        if session is not None and session not in sessions:
            have = f"sessions {listing(sessions)}" if sessions else "no sessions (no ses-<label>/ folders)"
            raise BIDSSelectionError(f"sub-{participant}: session {session!r} does not exist; it has {have}. "
                                     f"Fix: pass one of those sessions" + ("" if sessions else ", or none"))
        tasks = self.tasks(participant, session)
        if task is not None and task not in tasks:
            raise BIDSSelectionError(f"sub-{participant}{_ses(session)}: task {task!r} has no BOLD runs; tasks "
                                     f"with runs: {listing(tasks)}. Fix: pass one of those tasks")
        spaces = self.spaces(participant, session, task)
        if space not in spaces:
            raise BIDSSelectionError(
                f"{shown(self.deriv_fs, self.deriv_root)}: no desc-preproc_bold in space {space!r} for "
                f"sub-{participant}{_ses(session)}{'' if task is None else ' task ' + repr(task)}; spaces found: "
                f"{listing(spaces)}. Fix: pass one of those spaces, or run fMRIPrep with "
                f"--output-spaces {space}")
        return [(rel, n) for rel, n in self._bolds(participant)
                if (session is None or n.get("ses") == session) and (task is None or n.get("task") == task)]

    def runs(self, participant: str, *, session: str | None = None, task: str | None = None,
             space: str = "T1w") -> list[BoldRun]:
        """The runs of a participant (and session, task) with their derivatives in ``space``.

        Raises
        ------
        BIDSSelectionError
            The participant, session, task or space does not exist (the message lists those that do).
        DerivativesMissingError
            A run lacks its preprocessed BOLD, brain mask or confounds.
        EventsError, MetadataError
            A run has no events file, or sidecars that break the Inheritance Principle.
        """
        chosen = self._select(participant, session, task, space)
        runs, seen = [], set()
        for rel, name in chosen:
            entities = {k: v for k, v in name.entities.items() if k != "echo"}
            key = tuple(sorted(entities.items()))
            if key in seen:  # the other echoes of a multi-echo run
                continue
            seen.add(key)
            runs.append(self._run(rel, name, entities, space))
        return sorted(runs, key=lambda r: (r.session or "", r.task, _run_order(r.entities), r.key))

    def _run(self, rel: str, name: BIDSName, entities: dict[str, str], space: str) -> BoldRun:
        participant = entities["sub"]
        files = self.files(participant)
        events = applicable_files(rel, files, "events", ".tsv")
        if not events:
            raise EventsError(f"{self.shown(rel)} has no events file: expected {rel.split('_bold')[0]}_events.tsv "
                              f"(or one inherited from a higher level, e.g. task-{entities['task']}_events.tsv "
                              f"at the root). Fix: add the run's events")
        metadata = self._merged(self.fs, self.path, files, rel)
        deriv = self.derivative_files(participant)
        preproc = self._derivative(deriv, entities, space, "preproc", "bold", _NIFTI, rel, "preprocessed BOLD")
        mask = self._derivative(deriv, entities, space, "brain", "mask", _NIFTI, rel, "brain mask")
        confounds = self._derivative(deriv, entities, None, "confounds", "timeseries", (".tsv",), rel,
                                     "confounds table")
        confounds_json = confounds[:-4] + ".json"
        return BoldRun(participant=participant, session=entities.get("ses"), task=entities["task"], space=space,
                       entities=entities, bold=rel, events=events[-1], metadata=metadata, preproc=preproc,
                       mask=mask, confounds=confounds, confounds_json=confounds_json if confounds_json in deriv
                       else None, preproc_metadata=self._merged(self.deriv_fs, self.deriv_path, deriv, preproc))

    @staticmethod
    def _merged(fs: Any, full: Any, files: list[str], rel: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for sidecar in applicable_files(rel, files, "bold", ".json"):
            merged.update(read_json(fs, full(sidecar)))
        return merged

    def _derivative(self, deriv: list[str], entities: dict[str, str], space: str | None, desc: str, suffix: str,
                    extensions: tuple[str, ...], raw_rel: str, what: str) -> str:
        found = []
        for rel in deriv:
            name = parse_name(rel)
            if not name or name.suffix != suffix or name.extension not in extensions or name.get("desc") != desc:
                continue
            if name.get("space") != space or not same_entities(entities, name.entities):
                continue
            extra = set(name.entities) - set(entities) - {"space", "desc"}
            if extra <= _DERIV_EXTRA:
                found.append(rel)
        if len(found) == 1:
            return found[0]
        stem = "_".join(f"{k}-{v}" for k, v in entities.items())
        wanted = f"{stem}{'' if space is None else '_space-' + space}_desc-{desc}_{suffix}{extensions[0]}"
        if found:
            raise DerivativesMissingError(
                f"{self.shown(raw_rel)}: several {what} files match in the derivatives: {listing(found)}; "
                f"fmri2img reads one per run and space. Fix: keep one resolution (res-) per space, or point "
                f"--derivatives at a folder with one")
        related = [posixpath.basename(r) for r in deriv if (n := parse_name(r)) and same_entities(entities, n.entities)]
        raise DerivativesMissingError(
            f"{self.shown(raw_rel)} has no {what} in the derivatives {shown(self.deriv_fs, self.deriv_root)}: "
            f"expected {wanted}; the derivatives of this run are {listing(related)}. Fix: run fMRIPrep on this "
            f"run (with --output-spaces {space or 'T1w'}), or point --derivatives at the folder that has them")


def _ses(session: str | None) -> str:
    return "" if session is None else f" session {session!r}"


def _run_order(entities: Mapping[str, str]) -> int:
    run = entities.get("run", "0")
    return int(run) if run.isdigit() else 0


def open_bids(url: str, storage_options: Mapping[str, Any] | None = None, *, derivatives: str | None = None,
              derivatives_options: Mapping[str, Any] | None = None) -> BIDSDataset:
    """Open a BIDS dataset and its fMRIPrep derivatives from any fsspec URL.

    Parameters
    ----------
    url : str
        The raw dataset: a local folder, ``s3://openneuro.org/ds000001`` (read anonymously when no
        options are given, as are ``s3://openneuro-derivatives/...``), ``gs://...``, ``gdrive://...``.
    storage_options : dict, optional
        For the raw dataset's filesystem (see :mod:`fmri2img.storage.urls`).
    derivatives : str, optional
        URL of the fMRIPrep output folder; default ``<url>/derivatives/fmriprep``.
    derivatives_options : dict, optional
        For the derivatives' filesystem; default ``storage_options``.

    Raises
    ------
    NotBIDSError
        ``url`` or ``derivatives`` has no ``dataset_description.json``.
    """
    fs, root = urls.filesystem(url, _public(url, storage_options))
    description = _description(fs, root, "dataset", "the root of a BIDS dataset (the folder holding "
                               "dataset_description.json, participants.tsv and the sub-<label>/ folders)")
    if derivatives is None:
        deriv_fs, deriv_root = fs, f"{root.rstrip('/')}/{DEFAULT_DERIVATIVES}"
    else:
        options = storage_options if derivatives_options is None else derivatives_options
        deriv_fs, deriv_root = urls.filesystem(derivatives, _public(derivatives, options))
    deriv_description = _description(deriv_fs, deriv_root, "derivatives", "fMRIPrep's output folder "
                                     "(--derivatives URL; default <dataset>/derivatives/fmriprep)")
    if deriv_description.get("DatasetType") not in (None, "derivative"):
        logger.warning("%s: DatasetType is %r, not 'derivative'; reading it as fMRIPrep derivatives anyway",
                       shown(deriv_fs, deriv_root), deriv_description.get("DatasetType"))
    return BIDSDataset(fs, root, deriv_fs, deriv_root, description)


#: Public buckets read anonymously when no credentials are given (OpenNeuro's datasets and derivatives).
PUBLIC_BUCKETS = frozenset({"openneuro.org", "openneuro-derivatives"})


def _public(url: str, options: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``anon=True`` for OpenNeuro's public buckets when no options are given (as storage.urls does for NSD's).

    Only the bucket name is looked at; everything else about the URL is left to ``urls.filesystem``.
    """
    text = str(url)
    if not options and text[:5].lower() == "s3://" and text[5:].split("/", 1)[0] in PUBLIC_BUCKETS:
        return {"anon": True}
    return options


def _description(fs: Any, root: str, what: str, expected: str) -> dict[str, Any]:
    path = f"{root.rstrip('/')}/dataset_description.json"
    if fs.exists(path):
        return read_json(fs, path)
    try:
        entries = [posixpath.basename(e["name"].rstrip("/")) + ("/" if e.get("type") == "directory" else "")
                   for e in fs.ls(root, detail=True)] if fs.exists(root) else None
    except (FileNotFoundError, NotADirectoryError):
        entries = None
    if entries is None:
        found = "it does not exist"
    else:
        found = f"it holds {listing(sorted(entries), empty='nothing')}"
    hint = ""
    if what == "derivatives" and entries is None:
        parent = posixpath.dirname(root.rstrip("/"))
        if fs.exists(parent):
            hint = f" ({parent} holds {listing(sorted(posixpath.basename(p) for p in fs.ls(parent, detail=False)))})"
    raise NotBIDSError(
        f"{shown(fs, root)} is not a BIDS {'derivatives ' if what == 'derivatives' else ''}dataset: it has no "
        f"dataset_description.json ({found}){hint}. Fix: point the URL at {expected}")


def require(metadata: Mapping[str, Any], key: str, where: str, fix: str) -> Any:
    """``metadata[key]`` or a :class:`MetadataError` naming the sidecars that were merged."""
    if key not in metadata:
        raise MetadataError(f"{where}: the sidecars lack {key!r} (fields found: {listing(sorted(metadata))}). "
                            f"Fix: {fix}")
    return metadata[key]
