"""What decides the content of ingested regions, and the check before a resume reuses them.

A finished session region of ``subjects/subjNN/betas`` is reused by a later ingest only if
everything that decided its values is the same: the source tree (its redacted URL), the
session file itself (size and ETag, or modification time where the filesystem has no ETag),
how it was read (``prefer``, ``betas_scale``), the NaN policy and the ingest code's output
format.  Otherwise the resume is refused before anything is written, naming what differs
and the fix; a store never holds sessions from two datasets side by side.

The one allowed difference: regions written with ``nan_policy = "error"`` held no NaN, so a
resume with ``nan_policy = "zero"`` (the fix that error message suggests) reuses them.
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Mapping, Sequence

from fmri2img.storage import schema
from fmri2img.storage.nsd import NSDLayout
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store

#: bump when ingest writes different values for the same files and options
INGEST_FORMAT = 1
#: attribute of the betas group recording the identity of its regions' inputs
ATTR = "fmri2img_ingest"


class IngestResumeError(ValueError):
    """A resume would mix regions from different inputs; nothing was written."""


def file_id(info: Mapping[str, Any] | None) -> str:
    """A betas file's identity for resume keys: its ETag/md5/mtime and size from an fsspec ``info``, or ``"absent"``."""
    if not info:
        return "absent"
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or info.get("updated")
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def session_files(source: Source, subject: int, sessions: Sequence[int]) -> dict[str, str]:
    """``session-NN`` → identity of its betas files (one directory listing)."""
    fs, root = source.filesystem()
    layout = NSDLayout(root)
    folder = posixpath.dirname(layout.betas(subject, sessions[0]))
    try:
        listing = {posixpath.basename(str(e["name"]).rstrip("/")): e for e in fs.ls(folder, detail=True)}
    except (FileNotFoundError, OSError):
        listing = {}
    out = {}
    for s in sessions:
        ids = [f"{fmt}={file_id(listing.get(posixpath.basename(layout.betas(subject, s, fmt))))}"
               for fmt in ("hdf5", "nii.gz")]
        out[f"session-{int(s):02d}"] = " ".join(ids)
    return out


def identity(source: Source, subject: int, sessions: Sequence[int], *, prefer: str, nan_policy: str,
             betas_scale: Any, files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything that decides the values of the betas regions of ``subject``.

    ``files``: what each session's betas come from, when not NSD's betas files (the glm stage's groups).
    """
    return {"format": INGEST_FORMAT, "source": source.safe_url, "prefer": prefer, "nan_policy": nan_policy,
            "betas_scale": str(betas_scale),
            "files": dict(files) if files is not None else session_files(source, subject, sessions)}


def check_resume(store: Store, subject: int, current: Mapping[str, Any], done_labels: Sequence[str],
                 reuse: bool = True) -> None:
    """Refuse to reuse ``done_labels`` of the betas group when their inputs differ from ``current``.

    ``reuse=False``: the betas template changes (the group will be rewritten whole); only a
    change of source is refused then, since the subject's other groups would mix two trees.
    """
    if not done_labels:
        return
    group = schema.subject_group(subject, "betas")
    attrs = store.group(group).attrs
    raw = attrs.get(ATTR)
    recorded = json.loads(raw) if raw else {"source": attrs.get("source")}  # stores from before this record
    differences = []
    for key in ("format", "source", "prefer", "betas_scale") if reuse else ("source",):
        if key in recorded and recorded[key] != current[key]:
            differences.append(f"{key} was {recorded[key]!r}, now {current[key]!r}")
    if reuse and recorded.get("nan_policy") == "zero" and current["nan_policy"] != "zero":
        differences.append("nan_policy was 'zero', now 'error'")
    for label in done_labels if reuse else ():
        before = recorded.get("files", {}).get(label)
        if before is not None and before != current["files"].get(label):
            differences.append(f"the file of {label} changed ({before} → {current['files'].get(label)})")
    if differences:
        raise IngestResumeError(
            f"{group} in {store.describe()} has {len(done_labels)} finished session(s) written from other inputs: "
            f"{'; '.join(differences[:4])}{' ...' if len(differences) > 4 else ''}. Nothing was written: a store "
            f"never mixes two datasets. Fix: resume with the same source and options as before, or ingest into a "
            f"new store (or delete subjects/{schema.subject_key(subject)} from this one to ingest it again)"
        )


def check_stimuli(store: Store, source: Source) -> None:
    """Refuse to add images from another source tree to the shared ``stimuli`` group."""
    if not store.has_group(schema.STIMULI):
        return
    recorded = store.group(schema.STIMULI).attrs.get("source")
    if recorded is not None and recorded != source.safe_url:
        raise IngestResumeError(
            f"{schema.STIMULI} in {store.describe()} holds images from {recorded!r}, this ingest reads "
            f"{source.safe_url!r}. Nothing was written: a store never mixes two datasets. Fix: ingest with "
            f"--source {recorded} (the same tree), or into a new store"
        )


def record(current: Mapping[str, Any]) -> dict[str, str]:
    """The attribute to write with the betas template."""
    return {ATTR: json.dumps(current, sort_keys=True)}
