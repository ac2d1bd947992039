"""What the report shows, read from the store: every run/part and every metric cell, classified.

A reconstruction part (``recon/subjNN/<run>/<part>``) is a *plumbing check* when its group
attrs say ``random_weights`` (a model with seeded random weights made it); a metric cell is a
plumbing check when its part is one, or when the metric's evaluation network ran on random
weights (the summary's ``random_weights`` or the metrics group's ``random_nets``).  Everything
else is a *result*.  Results go to the report's main grid, table and plot; plumbing checks go to
their own section, every cell marked †.

Brain-Diffuser's published numbers (``METRICS[m].published``) are comparable only with results
on NSD's real test set: see :func:`data_source` for the rule.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fmri2img.storage import secrets
from fmri2img.pipeline.evaluate import METRIC_VARS, metrics_group
from fmri2img.pipeline.reconstruct import recon_group
from fmri2img.storage import schema, urls
from fmri2img.storage.store import Store

PARTS = ("stage1", "final")
#: NSD's shared test images seen by subjects 1, 2, 5 and 7 in all their sessions (the paper's test set)
NSD_TEST_IMAGES = 982
#: the per-image score that ranks the best and worst reconstructions (needs no network)
RANK_METRIC = "PixCorr"


@dataclass(frozen=True)
class Part:
    """One finished reconstruction part.

    Attributes
    ----------
    run, part : str
        Run name and ``"stage1"`` or ``"final"``.
    random : bool
        Made (in part) by a model with seeded random weights: a plumbing check.
    note : str
        The group's ``weights_note`` (e.g. weights trained by the demo on mini-NSD), or "".
    """

    run: str
    part: str
    random: bool
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.run}/{self.part}"

    @property
    def slug(self) -> str:
        """A file-name-safe form of the label."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.run}_{self.part}")


@dataclass
class Row:
    """The evaluation of one part: metric → summary, and which cells are plumbing checks."""

    part: Part
    summary: dict[str, dict]
    random_cells: set[str] = field(default_factory=set)

    def result_metrics(self) -> list[str]:
        return [m for m in self.summary if m not in self.random_cells]


@dataclass(frozen=True)
class DataSource:
    """Where a subject's data came from, and whether the paper's numbers compare with it.

    Attributes
    ----------
    url : str
        The source URL recorded at ingest, credentials removed ("" when not recorded).
    kind : str
        ``"NSD"``, ``"mini-NSD"`` or ``"unknown"``.
    n_test : int
        Test images in the store's split.
    reason : str
        Why the published numbers do not compare ("" when they do).
    """

    url: str
    kind: str
    n_test: int
    reason: str

    @property
    def comparable(self) -> bool:
        return not self.reason


def available_runs(store: Store, subject: int) -> list[str]:
    """Run names with at least one reconstruction group for ``subject``."""
    prefix = f"recon/{schema.subject_key(subject)}/"
    return sorted({g[len(prefix):].rsplit("/", 1)[0] for g in store.list_groups(prefix)})


def finished_parts(store: Store, subject: int, runs: Sequence[str]) -> list[Part]:
    """Every finished reconstruction part of ``runs``, classified by its ``random_weights`` attr."""
    out = []
    for run in runs:
        for part in PARTS:
            group = recon_group(subject, run, part)
            if store.is_complete(group):
                attrs = store.group(group).attrs
                out.append(Part(run, part, bool(attrs.get("random_weights", False)),
                                str(secrets.redact(str(attrs.get("weights_note", "") or "")))))
    return out


def read_row(store: Store, subject: int, part: Part) -> Row | None:
    """The classified metrics of ``part``, or None when it is not evaluated."""
    from fmri2img.metrics.scores import METRICS

    group = metrics_group(subject, part.run, part.part)
    if not store.is_complete(group):
        return None
    attrs = store.group(group).attrs
    summary = json.loads(attrs["summary"])
    random_nets = set(attrs.get("random_nets") or [])
    random_cells = {m for m, s in summary.items()
                    if part.random or s.get("random_weights")
                    or (m in METRICS and METRICS[m].feature in random_nets)}
    return Row(part, summary, random_cells)


def collect_rows(store: Store, subject: int, parts: Sequence[Part]) -> list[Row]:
    rows = [read_row(store, subject, p) for p in parts]
    return [r for r in rows if r is not None]


def per_image(store: Store, subject: int, part: Part, metrics: Sequence[str]) -> tuple[np.ndarray, dict]:
    """Image ids (n,) and ``{metric: values (n,)}`` of one evaluated part (NaN: excluded image)."""
    g = store.group(metrics_group(subject, part.run, part.part))
    ids = np.asarray(g["image"][:], dtype=np.int64)
    values = {m: np.asarray(g[METRIC_VARS[m]][:], dtype=np.float64) for m in metrics
              if METRIC_VARS.get(m) in g}
    return ids, values


def best_and_worst(ids: np.ndarray, scores: np.ndarray, n: int, higher_is_better: bool = True
                   ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The ``n`` best and ``n`` worst (image id, score), best first / worst first; NaN scores skipped.

    With fewer than ``2 n`` valid scores, each list gets half of them (the best never repeat
    in the worst).
    """
    ok = np.flatnonzero(np.isfinite(scores))
    order = ok[np.argsort(scores[ok], kind="stable")]
    if higher_is_better:
        order = order[::-1]
    n = max(0, min(n, len(order) // 2))
    best = [(int(ids[i]), float(scores[i])) for i in order[:n]]
    worst = [(int(ids[i]), float(scores[i])) for i in order[::-1][:n]]
    return best, worst


def recon_images(store: Store, subject: int, part: Part, ids: Sequence[int]) -> np.ndarray:
    """The reconstructions of ``ids`` (uint8, (n, h, w, 3)) in the order given."""
    g = store.group(recon_group(subject, part.run, part.part))
    index = {int(v): i for i, v in enumerate(np.asarray(g["image"][:]))}
    return np.stack([np.asarray(g["images"][index[int(i)]]) for i in ids])


def gt_images(store: Store, ids: Sequence[int]) -> np.ndarray:
    """The stimuli of ``ids`` (uint8, (n, h, w, 3)) in the order given."""
    stim = store.group(schema.STIMULI)
    index = {int(v): i for i, v in enumerate(np.asarray(stim["image"][:]))}
    return np.stack([np.asarray(stim["images"][index[int(i)]]) for i in ids])


def data_source(store: Store, subject: int) -> DataSource:
    """The subject's data source and whether Brain-Diffuser's numbers compare with it.

    The rule: the data are NSD's when the store's test split holds NSD's 982 shared test
    images and the source recorded at ingest is not mini-NSD (a local source folder whose
    ``mini_nsd.json`` manifest says ``"format": "mini-nsd"``; remote sources are not read).
    mini-NSD's simulated cortex and its few dozen test images make any comparison meaningless.
    """
    test = schema.subject_group(subject, "test")
    if not store.has_group(test):
        return DataSource("", "unknown", 0, f"subject {subject} is not ingested (no {test} in the store)")
    g = store.group(test)
    url = str(g.attrs.get("source", "") or "")
    n_test = int(g["image"].shape[0]) if "image" in g else 0
    kind = "mini-NSD" if _is_mini_nsd(url) else ("NSD" if n_test == NSD_TEST_IMAGES else "unknown")
    if kind == "mini-NSD":
        reason = (f"the data are mini-NSD (simulated cortex, {n_test} test images), not NSD: "
                  "the paper's numbers do not apply")
    elif n_test != NSD_TEST_IMAGES:
        reason = (f"the test set has {n_test} images, not NSD's {NSD_TEST_IMAGES} shared images the paper "
                  "scored: the numbers are not comparable")
    else:
        reason = ""
    return DataSource(str(secrets.redact(url)), kind, n_test, reason)


def _is_mini_nsd(url: str) -> bool:
    """True when ``url`` is a local folder (or file:// URL) holding a mini-NSD manifest."""
    if not url:
        return False
    scheme, rest = urls.split_url(url)
    if scheme not in ("", "file"):
        return False
    manifest = Path(rest if scheme else url) / "mini_nsd.json"
    try:
        return json.loads(manifest.read_text()).get("format") == "mini-nsd"
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True  # a manifest that cannot be read still marks the folder as mini-NSD's
