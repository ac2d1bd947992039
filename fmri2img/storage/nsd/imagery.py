"""NSD-Imagery (``nsdimagery``): the betas, trial labels and target images of NSD's imagery experiment.

Facts (NSD data manual, "Functional data (nsdimagery)"; Kneeland et al. 2025, "NSD-Imagery"):
one 7T session per subject, 12 runs, same acquisition as NSD. Three tasks (vision,
attention, imagery) × three target sets (A simple, B complex/naturalistic, C conceptual);
the imagery runs were done twice. Each run has 6 conditions (the target seen, attended or
imagined, named by a single-letter cue) × 8 repeats = 48 trials. Single-trial betas of all
runs are in ONE file per subject,
``nsddata_betas/ppdata/subjNN/func1pt8mm/nsdimagerybetas_fithrf_GLMdenoise_RR/
betas_nsdimagery.{nii.gz,hdf5}``, 720 betas in NSD's int16 × 300 units and layouts (read by
:func:`fmri2img.storage.nsd.betas.read_betas_file`).

What the manual pages stored here do not say, and what this reader assumes from public readers:

* **Beta order** (NaselarisLab NSD_Imagery_Access ``meta_data/nsdimagery_stiminfo.csv``, 720
  rows; MedARC-AI MindEye_Imagery's per-beta run labels): runs in the order of :data:`RUNS`
  (visA, attA, imgA_1, visB, attB, imgB_1, visC, attC, imgC_1, imgA_2, imgB_2, imgC_2); within
  a vision or imagery run, beta k is behavioural trial k; an attention trial has two betas,
  its cue epoch then its detection epoch (so 48 + 96 + 48 per set, 720 in all).
* **Trial labels**: ``nsddata/bdata/nsdimagery/nsdimagery_subjNN_<run>.tsv``, tab-separated,
  one row per trial (48 in NSD), read by public loaders through the column ``CONDITION``
  (the target: its cue letter, e.g. ``W``); the column ``CUE`` (the letter shown, which in
  vision and attention runs matches the target on half the trials) is used when present,
  else the cue is the condition. Other columns are kept out of the store.
* **Target images**: ``nsddata/experiments/nsdimagery/rawtargetimages/`` with a table
  ``stimuli_info.csv`` of columns ``condition`` and ``file_name`` (the layout one public loader
  reads; it may be that loader's own file). A condition with an empty ``file_name`` has no
  picture (set C is conceptual: in NSD it has none) and its trials are decoded but not scored.
  A file named like NSD's shared images (``shared0385_nsd28752.png``) gives the target's
  0-based NSD id.

Bad files raise :class:`~fmri2img.storage.nsd.NSDError` subclasses naming the file, what was
expected and the fix.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from fmri2img.storage.nsd._common import NSDError, NSDFileMissing, NSDFormatError, NSDLayout, _name, _open, _subj
from fmri2img.storage.nsd.betas import NSD_SCALE, read_betas_file

#: tasks and how many betas one of their trials has
TASKS: dict[str, int] = {"vision": 1, "imagery": 1, "attention": 2}
#: target sets: letter → name
STIM_SETS: dict[str, str] = {"A": "simple", "B": "complex", "C": "conceptual"}
#: betas of one attention trial, in order
ATTENTION_EPOCHS: tuple[str, ...] = ("cue", "detection")
_NSD_NAME = re.compile(r"nsd(\d+)\.\w+$")


@dataclass(frozen=True)
class ImageryRun:
    """One run of the imagery session: its file name part, task, target set and repeat."""

    name: str
    task: str
    stim_set: str
    repeat: int


#: the 12 runs in the order of their betas in ``betas_nsdimagery``
RUNS: tuple[ImageryRun, ...] = tuple(
    ImageryRun(name, task, s, rep) for name, task, s, rep in (
        ("visA", "vision", "A", 1), ("attA", "attention", "A", 1), ("imgA_1", "imagery", "A", 1),
        ("visB", "vision", "B", 1), ("attB", "attention", "B", 1), ("imgB_1", "imagery", "B", 1),
        ("visC", "vision", "C", 1), ("attC", "attention", "C", 1), ("imgC_1", "imagery", "C", 1),
        ("imgA_2", "imagery", "A", 2), ("imgB_2", "imagery", "B", 2), ("imgC_2", "imagery", "C", 2)))


@dataclass(frozen=True)
class ImageryLayout:
    """Paths of the NSD-Imagery files under an NSD root, as in the bucket."""

    root: str
    betas_version: str = "fithrf_GLMdenoise_RR"

    def _join(self, rel: str) -> str:
        return NSDLayout(self.root)._join(rel)

    def betas(self, subject: int, fmt: str = "hdf5") -> str:
        """``betas_nsdimagery.{hdf5,nii.gz}`` of ``subject`` (func1pt8mm)."""
        if fmt not in ("hdf5", "nii.gz"):
            raise NSDError(f"betas format {fmt!r} is not supported; expected 'hdf5' or 'nii.gz'")
        return self._join(f"nsddata_betas/ppdata/{_subj(subject)}/func1pt8mm/nsdimagerybetas_{self.betas_version}/"
                          f"betas_nsdimagery.{fmt}")

    def behavior(self, subject: int, run: str) -> str:
        """The trial labels of one run: ``nsdimagery_subjNN_<run>.tsv``."""
        return self._join(f"nsddata/bdata/nsdimagery/nsdimagery_{_subj(subject)}_{run}.tsv")

    def targets_dir(self) -> str:
        return self._join("nsddata/experiments/nsdimagery/rawtargetimages")

    def targets_table(self) -> str:
        return f"{self.targets_dir()}/stimuli_info.csv"


@dataclass(frozen=True)
class ImageryDesign:
    """One label per beta of ``betas_nsdimagery`` (arrays of shape (n_betas,)).

    Attributes
    ----------
    run : str array, e.g. ``"imgB_2"``; run_index : int array, 1..12 in beta order
    task : str array, one of :data:`TASKS`; stim_set : str array, ``"A"``, ``"B"`` or ``"C"``
    trial : int array, 1-based trial within its run
    epoch : str array, ``"stimulus"`` (vision, imagery) or one of :data:`ATTENTION_EPOCHS`
    condition : str array, the target's cue letter; cue : str array, the letter shown
    """

    run: np.ndarray
    run_index: np.ndarray
    task: np.ndarray
    stim_set: np.ndarray
    trial: np.ndarray
    epoch: np.ndarray
    condition: np.ndarray
    cue: np.ndarray

    @property
    def n_betas(self) -> int:
        return int(len(self.run))


@dataclass(frozen=True)
class ImageryTargets:
    """The targets: condition letter, set, picture file ('' = none) and NSD id (-1 = not an NSD image)."""

    condition: np.ndarray
    stim_set: np.ndarray
    file_name: np.ndarray
    nsd_id: np.ndarray

    def index_of(self, conditions: np.ndarray) -> np.ndarray:
        """Position of each condition among the targets (-1 where it is not one)."""
        pos = {c: i for i, c in enumerate(self.condition.tolist())}
        return np.array([pos.get(str(c), -1) for c in conditions], np.int64)


def _read_text(fs: Any, path: str, what: str, fix: str) -> str:
    with _open(fs, path, what=what, fix=fix) as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NSDFormatError(f"{_name(path)} at {path} is not UTF-8 text ({exc}); expected a tab-separated table: "
                             f"download it again") from exc


def _table(text: str, path: str, delimiter: str, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    """Rows of a delimited table with ``required`` columns; ragged rows and empty tables are errors."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = [r for r in reader if any(cell.strip() for cell in r)]
    if not rows:
        raise NSDFormatError(f"{_name(path)} at {path} is empty; expected {what} with a header row "
                             f"({', '.join(required)}, ...) and one row per trial: download it again")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        sep = "tab" if delimiter == "\t" else repr(delimiter)
        raise NSDFormatError(f"{_name(path)} has no column {', '.join(missing)} (found {header[:12]}); expected "
                             f"{what}, {sep}-separated, with a header row holding {', '.join(required)}")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise NSDFormatError(f"{_name(path)} row {line} has {len(row)} fields but the header has {len(header)}: "
                                 f"the file is truncated or not {'tab' if delimiter == chr(9) else delimiter}-"
                                 f"separated; download it again")
        out.append({h: cell.strip() for h, cell in zip(header, row)})
    if not out:
        raise NSDFormatError(f"{_name(path)} at {path} has a header but no trials; expected one row per trial")
    return out


def read_run_labels(fs: Any, layout: ImageryLayout, subject: int, run: ImageryRun) -> tuple[list[str], list[str]]:
    """Conditions and cues of one run's trials, from its behavioural TSV."""
    path = layout.behavior(subject, run.name)
    text = _read_text(fs, path, f"NSD-Imagery trial labels of run {run.name}",
                      "the 12 nsdimagery_subjNN_<run>.tsv files are under nsddata/bdata/nsdimagery/ of the NSD root")
    rows = _table(text, path, "\t", ("CONDITION",), "NSD-Imagery trial labels")
    conditions = [r["CONDITION"] for r in rows]
    cues = [r.get("CUE") or r["CONDITION"] for r in rows]
    for line, c in enumerate(conditions, start=2):
        if not re.fullmatch(r"[A-Za-z0-9_]+", c):
            raise NSDFormatError(f"{_name(path)} row {line}: CONDITION is {c!r}; expected the target's cue letter "
                                 f"(e.g. 'W'): the file is damaged or from another experiment")
    return conditions, cues


def read_design(fs: Any, layout: ImageryLayout, subject: int) -> ImageryDesign:
    """The labels of every beta of a subject's ``betas_nsdimagery`` file, from the 12 run TSVs.

    Checks that every condition belongs to one target set and that the vision, attention and
    imagery runs of a set have the same conditions.
    """
    cols: dict[str, list] = {k: [] for k in ("run", "run_index", "task", "stim_set", "trial", "epoch", "condition",
                                             "cue")}
    set_of: dict[str, tuple[str, str]] = {}
    conditions_of: dict[str, tuple[str, frozenset]] = {}
    for index, run in enumerate(RUNS, start=1):
        conditions, cues = read_run_labels(fs, layout, subject, run)
        path = layout.behavior(subject, run.name)
        for c in conditions:
            seen = set_of.setdefault(c, (run.stim_set, run.name))
            if seen[0] != run.stim_set:
                raise NSDFormatError(f"{_name(path)}: condition {c!r} is a target of set {run.stim_set} here but of "
                                     f"set {seen[0]} in run {seen[1]}; each cue letter names one target: the files "
                                     f"are mixed up (check the subject and run of each file)")
        kinds = frozenset(conditions)
        first = conditions_of.setdefault(run.stim_set, (run.name, kinds))
        if first[1] != kinds:
            raise NSDFormatError(f"{_name(path)}: conditions {sorted(kinds)} differ from run {first[0]}'s "
                                 f"{sorted(first[1])}; the runs of target set {run.stim_set} share their targets")
        epochs = ATTENTION_EPOCHS if run.task == "attention" else ("stimulus",)
        for trial, (cond, cue) in enumerate(zip(conditions, cues), start=1):
            for epoch in epochs:
                for key, value in (("run", run.name), ("run_index", index), ("task", run.task),
                                   ("stim_set", run.stim_set), ("trial", trial), ("epoch", epoch),
                                   ("condition", cond), ("cue", cue)):
                    cols[key].append(value)
    return ImageryDesign(**{k: np.asarray(v, np.int64 if k in ("run_index", "trial") else str)
                            for k, v in cols.items()})


def read_targets(fs: Any, layout: ImageryLayout, design: ImageryDesign | None = None) -> ImageryTargets:
    """The targets table ``rawtargetimages/stimuli_info.csv`` (columns ``condition``, ``file_name``).

    With ``design``, every condition of the design must be in the table.
    """
    path = layout.targets_table()
    text = _read_text(fs, path, "NSD-Imagery targets table",
                      "it is a CSV with columns condition,file_name (the cue letter and its picture in "
                      "nsddata/experiments/nsdimagery/rawtargetimages/, empty for a target without one); if your copy "
                      "of NSD lacks it, write it from NSD-Imagery's cue/target pair lists")
    rows = _table(text, path, ",", ("condition", "file_name"), "the NSD-Imagery targets table")
    conditions = [r["condition"] for r in rows]
    dupes = sorted({c for c in conditions if conditions.count(c) > 1})
    if dupes:
        raise NSDFormatError(f"{_name(path)} lists condition(s) {dupes} twice; expected one row per target")
    files = [r["file_name"] for r in rows]
    stim_set = [""] * len(rows)
    if design is not None:
        sets = dict(zip(design.condition.tolist(), design.stim_set.tolist()))
        missing = sorted(set(sets) - set(conditions))
        if missing:
            raise NSDFormatError(f"{_name(path)} has no row for condition(s) {missing} of the trial labels; expected "
                                 f"one row per target (condition,file_name; an empty file_name for a target "
                                 f"without a picture)")
        stim_set = [sets.get(c, "") for c in conditions]
    nsd_id = [int(m.group(1)) - 1 if (m := _NSD_NAME.search(f)) else -1 for f in files]
    return ImageryTargets(np.asarray(conditions, str), np.asarray(stim_set, str), np.asarray(files, str),
                          np.asarray(nsd_id, np.int64))


def read_target_images(fs: Any, layout: ImageryLayout, targets: ImageryTargets, side: int) -> np.ndarray:
    """The targets' pictures as uint8 RGB of shape (n_targets, side, side, 3); zeros where a target has none.

    Pictures of another size are resized with PIL bicubic (as the metrics resize reconstructions).
    """
    out = np.zeros((len(targets.condition), side, side, 3), np.uint8)
    for i, name in enumerate(targets.file_name.tolist()):
        if not name:
            continue
        path = f"{layout.targets_dir()}/{name}"
        with _open(fs, path, what=f"NSD-Imagery target picture of condition {targets.condition[i]}",
                   fix=f"{_name(layout.targets_table())} names it: download the rawtargetimages folder") as f:
            raw = f.read()
        try:
            img = Image.open(io.BytesIO(raw)).convert("RGB")
        except OSError as exc:
            raise NSDFormatError(f"{_name(path)} at {path} is not a readable picture ({exc}); download it again") \
                from exc
        if img.size != (side, side):
            img = img.resize((side, side), Image.Resampling.BICUBIC)
        out[i] = np.asarray(img, np.uint8)
    return out


def read_imagery_betas(fs: Any, layout: ImageryLayout, subject: int, voxels: np.ndarray,
                       volume_shape: tuple[int, int, int], n_betas: int, prefer: str = "hdf5", *,
                       scale: str | float = NSD_SCALE) -> np.ndarray:
    """``betas_nsdimagery`` at the voxels: array of shape (n_betas, n_voxels), float32 percent signal change.

    The ``.hdf5`` is read by range when present and preferred, else the ``.nii.gz`` is streamed.
    """
    fmt = "hdf5" if prefer == "hdf5" and fs.exists(layout.betas(subject, "hdf5")) else "nii.gz"
    path = layout.betas(subject, fmt)
    fix = (f"NSD-Imagery betas are under nsddata_betas/ppdata/{_subj(subject)}/func1pt8mm/"
           f"nsdimagerybetas_{layout.betas_version}/ of the NSD root")
    try:
        return read_betas_file(fs, path, voxels, volume_shape, n_betas, scale=scale,
                               what="NSD-Imagery single-trial betas", fix=fix)
    except NSDFileMissing:
        raise
    except NSDFormatError as exc:
        if "trials but the experimental design" in str(exc):
            raise NSDFormatError(f"{exc} (NSD-Imagery: the run TSVs give {n_betas} betas: one per vision and "
                                 f"imagery trial, two per attention trial)") from exc
        raise
