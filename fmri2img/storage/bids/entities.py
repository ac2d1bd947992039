"""BIDS file names: entities, suffix and extension, and the Inheritance Principle.

Why not a library here. pybids' ``BIDSLayout`` indexes a *local* directory tree (it walks the
disk and builds a database), so it cannot sit over an fsspec filesystem such as
``s3://openneuro.org``; its ``parse_file_entities`` works on strings but brings pybids' whole
dependency tree (SQLAlchemy, formulaic, ...) for a few regular expressions. bids-validator's
Python package (``BIDSValidator.parse``, regular expressions generated from the BIDS schema by
bidsschematools) does work on strings, but it is a *validator*: it accepts only the raw-data
rules, reports every file under ``derivatives/`` merely as ``{'path': 'derivatives'}``, and
rejects names the schema does not list, among them fMRIPrep's own
``*_desc-confounds_timeseries.tsv`` (the ``timeseries`` suffix is not in the BIDS 1.11 schema).
A reader must accept what real datasets contain, so this module parses names by the grammar
the specification defines for every file ("Common principles: Filenames"): ``key-value`` pairs
joined by ``_``, then ``_suffix``, then the extension from the first dot; keys and values are
alphanumeric. The canonical entity order comes from the BIDS schema's ``rules.entities``
(bidsschematools 2.0.1, BIDS 1.11). The test suite checks this parser against bids-validator's
``parse`` on every path of the generated dataset, and every generated path against
bids-validator's rules (and bidsschematools' derivative rules), so the two cannot drift apart
unnoticed.

The Inheritance Principle follows the specification's appendix "The Inheritance Principle"
(BIDS 1.10+): a metadata file applies to a data file when it is stored in the data file's
directory or one above it, has the same suffix (and extension), and its entities are a subset
of the data file's (same values). Within a level, applicable files are ordered by number of
entities; two with the same number at one level, or one that is not a strict superset of the
one before, break the rules (:class:`MetadataError`). Levels are concatenated from the top down.
JSON files are merged in that order (later keys override); for tabular files only the last
(lowest, most specific) applies.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fmri2img.storage.bids.errors import MetadataError, listing

__all__ = ["ENTITY_ORDER", "INDEX_ENTITIES", "BIDSName", "parse_name", "format_name", "same_entities",
           "applicable_files", "level_dirs"]

#: Entity keys in the order BIDS names them (schema ``rules.entities``, BIDS 1.11).
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "tpl", "ses", "cohort", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain",
    "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split",
    "recording", "chunk", "atlas", "seg", "scale", "res", "den", "label", "desc",
)
#: Entities whose values are indices (BIDS: non-negative integers): ``run-01`` and ``run-1`` are the same run
#: (fMRIPrep writes its derivatives with the unpadded index).
INDEX_ENTITIES: frozenset[str] = frozenset({"run", "echo", "flip", "inv", "split", "chunk"})
_ALNUM = re.compile(r"[A-Za-z0-9]+\Z")


@dataclass(frozen=True)
class BIDSName:
    """A parsed BIDS file name.

    Attributes
    ----------
    entities : dict of str to str
        Short keys (``sub``, ``ses``, ``task``, ``run``, ``space``, ``desc``, ...) to values, in file order.
    suffix : str
        e.g. ``bold``, ``events``, ``mask``, ``timeseries``.
    extension : str
        From the first dot, e.g. ``.nii.gz``, ``.tsv``, ``.json``; ``""`` when there is none.
    """

    entities: dict[str, str] = field(hash=False)
    suffix: str
    extension: str

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of entity ``key`` (short form), or ``default``."""
        return self.entities.get(key, default)


def parse_name(name: str) -> BIDSName | None:
    """Parse a file name (or a path: its last part) by the BIDS filename grammar.

    Returns ``None`` for names that do not follow the grammar (``dataset_description.json``,
    ``README``, ``.DS_Store``, a repeated key, an empty value, a non-alphanumeric label).
    """
    name = posixpath.basename(str(name).rstrip("/"))
    stem, dot, rest = name.partition(".")
    parts = stem.split("_")
    suffix = parts[-1]
    if not _ALNUM.match(suffix):
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not _ALNUM.match(key) or not _ALNUM.match(value) or key in entities:
            return None
        entities[key] = value
    return BIDSName(entities, suffix, dot + rest)


def format_name(entities: Mapping[str, object], suffix: str, extension: str) -> str:
    """A file name from entities (short keys, any order), in BIDS order; unknown keys follow, as given.

    ``None`` values are left out.
    """
    known = [k for k in ENTITY_ORDER if entities.get(k) is not None]
    extra = [k for k in entities if k not in ENTITY_ORDER and entities[k] is not None]
    parts = [f"{k}-{entities[k]}" for k in (*known, *extra)]
    return "_".join([*parts, suffix]) + extension


def _same_value(key: str, a: str, b: str) -> bool:
    if key in INDEX_ENTITIES and a.isdigit() and b.isdigit():
        return int(a) == int(b)
    return a == b


def same_entities(subset: Mapping[str, str], full: Mapping[str, str]) -> bool:
    """Whether every entity of ``subset`` is in ``full`` with the same value (indices compared as numbers)."""
    return all(k in full and _same_value(k, v, full[k]) for k, v in subset.items())


def level_dirs(rel_path: str) -> list[str]:
    """The directories at or above ``rel_path``'s, from the dataset root (``""``) down to its own."""
    parent = posixpath.dirname(rel_path)
    parts = [p for p in parent.split("/") if p]
    return ["/".join(parts[:k]) for k in range(len(parts) + 1)]


def applicable_files(data_rel: str, files: Iterable[str], suffix: str, extension: str) -> list[str]:
    """Metadata files that apply to a data file, in the order they are loaded (BIDS Inheritance Principle).

    Parameters
    ----------
    data_rel : str
        The data file, relative to the dataset root (``sub-01/func/sub-01_task-x_bold.nii.gz``).
    files : iterable of str
        Candidate files, relative to the same root (a listing of the root and the participant's tree).
    suffix, extension : str
        Of the metadata wanted, e.g. ``"bold", ".json"`` (the sidecars) or ``"events", ".tsv"``.

    Returns
    -------
    list of str
        From the top level down; within a level, from fewest to most entities. JSON: merge in this
        order. Tabular: use the last.

    Raises
    ------
    MetadataError
        Two applicable files at one level with the same number of entities, or one that is not a
        strict superset of the one before it at its level.
    """
    data = parse_name(data_rel)
    if data is None:
        return []
    levels = level_dirs(data_rel)
    by_level: dict[str, list[tuple[int, str, BIDSName]]] = {lvl: [] for lvl in levels}
    for rel in files:
        folder = posixpath.dirname(rel)
        if folder not in by_level or rel == data_rel:
            continue
        meta = parse_name(rel)
        if meta and meta.suffix == suffix and meta.extension == extension and same_entities(meta.entities,
                                                                                           data.entities):
            by_level[folder].append((len(meta.entities), rel, meta))
    ordered: list[str] = []
    for level in levels:
        found = sorted(by_level[level])
        for (n_a, rel_a, a), (n_b, rel_b, b) in zip(found, found[1:]):
            if n_a == n_b or not set(a.entities) < set(b.entities):
                raise MetadataError(
                    f"{rel_a} and {rel_b} both apply to {data_rel} at the same level, and neither refines the "
                    f"other: the BIDS Inheritance Principle allows one applicable {suffix}{extension} per number of "
                    f"entities at a level, each adding entities to the one before. Fix: merge them, or add the "
                    f"distinguishing entities (e.g. run-) to one of them")
        ordered.extend(rel for _, rel, _ in found)
    return ordered


def describe_levels(files: Iterable[str]) -> str:
    """A short listing of file names for messages."""
    return listing(sorted(posixpath.basename(f) for f in files))
