"""The report: a picture grid, a metrics table beside the published numbers, bar plots.

``fmri2img report STORE --subject N [--runs ...]`` (and the end of ``fmri2img demo``) writes to
the outputs URL, under ``report/subjNN/``:

- ``grid.png``: ground truth | stage 1 | final of every run, for N test images;
- ``metrics.png``: one bar plot per metric, one bar per run/part, the published
  Brain-Diffuser value as a dashed line;
- ``metrics.md`` and ``metrics.json``: the table (mean ± sem, excluded images) beside the
  published values; results computed with random weights are marked as such;
- ``index.html``: all of it on one page.
"""
from __future__ import annotations

import html
import io
import json
import logging
from typing import Any, Sequence

import numpy as np

from fmri2img.pipeline.evaluate import metrics_group, read_summary
from fmri2img.pipeline.reconstruct import recon_group
from fmri2img.storage.outputs import Outputs
from fmri2img.storage import schema
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

PARTS = ("stage1", "final")


def available_runs(store: Store, subject: int) -> list[str]:
    prefix = f"recon/{schema.subject_key(subject)}/"
    return sorted({g[len(prefix):].rsplit("/", 1)[0] for g in store.list_groups(prefix)})


def _gt_images(store: Store, ids: np.ndarray) -> np.ndarray:
    stim = store.group(schema.STIMULI)
    index = {int(v): i for i, v in enumerate(np.asarray(stim["image"][:]))}
    return np.stack([np.asarray(stim["images"][index[int(i)]]) for i in ids])


def grid_png(store: Store, subject: int, runs: Sequence[str], n_images: int = 8, tile: int = 128) -> bytes:
    """Ground truth | stage 1 | final for each run: one row per image (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns: list[tuple[str, np.ndarray]] = []
    ids = None
    for run in runs:
        for part in PARTS:
            group = recon_group(subject, run, part)
            if not store.is_complete(group):
                continue
            g = store.group(group)
            run_ids = np.asarray(g["image"][:])
            ids = run_ids[:n_images] if ids is None else ids
            note = "\n(random weights)" if g.attrs.get("random_weights") else ""
            columns.append((f"{run}\n{part}{note}", np.asarray(g["images"][: len(ids)])))
    if ids is None:
        raise ValueError(f"no finished reconstructions for subject {subject}: run the reconstruct stage first")
    columns.insert(0, ("ground truth", _gt_images(store, ids)))

    def resize(img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(img).resize((tile, tile), Image.BICUBIC))

    fig, axes = plt.subplots(len(ids), len(columns), figsize=(1.6 * len(columns), 1.6 * len(ids)), squeeze=False)
    for c, (title, images) in enumerate(columns):
        for r in range(len(ids)):
            ax = axes[r, c]
            ax.imshow(resize(images[r]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"NSD {int(ids[r])}", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def roi_grid_png(store: Store, subject: int, runs: Sequence[str], tile: int = 96) -> bytes | None:
    """One row per run/part, one column per ROI (PNG bytes), or None without ROI results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for run in runs:
        for part in PARTS:
            group = f"roi/{schema.subject_key(subject)}/{run}/{part}"
            if store.is_complete(group):
                g = store.group(group)
                rows.append((f"{run}/{part}", [str(r) for r in g["roi"][:]], np.asarray(g["images"][:])))
    if not rows:
        return None
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.25 * len(rows)), squeeze=False)
    for r, (label, names, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(names[c], fontsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def collect(store: Store, subject: int, runs: Sequence[str]) -> dict[str, dict]:
    """``{"run/part": summary}`` for every evaluated run and part."""
    out = {}
    for run in runs:
        for part in PARTS:
            if store.is_complete(metrics_group(subject, run, part)):
                out[f"{run}/{part}"] = read_summary(store, subject, run, part)
    return out


def metrics_png(results: dict[str, dict]) -> bytes:
    """One bar plot per metric (bars: run/part; dashed: Brain-Diffuser's published value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fmri2img.metrics.scores import METRICS

    names = [m for m in METRICS if any(m in r for r in results.values())]
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    labels = list(results)
    for ax, name in zip(axes.ravel(), names):
        means = [results[k].get(name, {}).get("mean") for k in labels]
        sems = [results[k].get(name, {}).get("sem") or 0 for k in labels]
        vals = [np.nan if m is None else m for m in means]
        ax.bar(range(len(labels)), vals, yerr=sems, color="#4C72B0", capsize=2)
        spec = METRICS[name]
        if spec.published is not None:
            ax.axhline(spec.published, color="#C44E52", ls="--", lw=1, label="Brain-Diffuser (paper)")
        if spec.kind == "identification":
            ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        ax.set_title(f"{name} ({'↑' if spec.higher_is_better else '↓'})", fontsize=9)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    if any(s.get("random_weights") for r in results.values() for s in r.values()):
        fig.suptitle("random-weight evaluation networks (†): these bars prove the plumbing, not picture quality",
                     fontsize=9, color="#C44E52")
    fig.tight_layout()
    return _png(fig)


def _fmt(summary: dict) -> str:
    mean, sem = summary.get("mean"), summary.get("sem")
    if mean is None:
        return "n/a"
    text = f"{mean:.3f}" + (f" ± {sem:.3f}" if sem is not None else "")
    if summary.get("n_excluded"):
        text += f" ({summary['n_excluded']} excl.)"
    if summary.get("random_weights"):
        text += " †"
    return text


def metrics_markdown(results: dict[str, dict], random_note: bool) -> str:
    """The metrics table (Markdown) with the published Brain-Diffuser row first."""
    from fmri2img.metrics.scores import METRICS

    names = [m for m in METRICS if any(m in r for r in results.values())]
    head = "| run | " + " | ".join(f"{m} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    lines.append("| Brain-Diffuser (paper, 4-subject mean) | "
                 + " | ".join("—" if METRICS[m].published is None else f"{METRICS[m].published:.3f}" for m in names)
                 + " |")
    for label, summary in results.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(summary.get(m, {})) for m in names) + " |")
    text = "\n".join(lines) + "\n"
    if random_note:
        text += ("\n† computed with random-weight networks or models (the demo's tiny configurations): these "
                 "numbers prove the plumbing, not picture quality. Point [weights] at the real files for real "
                 "numbers.\n")
    return text


def write_report(store: Store, subject: int, outputs: Outputs, runs: Sequence[str] | None = None,
                 n_images: int = 8) -> dict[str, Any]:
    """Write the report files for ``subject``; return their URLs and the table."""
    runs = list(runs) if runs else available_runs(store, subject)
    results = collect(store, subject, runs)
    random_weights = any(s.get("random_weights") for r in results.values() for s in r.values()) or any(
        bool(store.group(recon_group(subject, run, part)).attrs.get("random_weights", False))
        for run in runs for part in PARTS if store.is_complete(recon_group(subject, run, part)))
    folder = f"report/{schema.subject_key(subject)}"
    files = {"grid": outputs.write_bytes(f"{folder}/grid.png", grid_png(store, subject, runs, n_images))}
    roi_png = roi_grid_png(store, subject, runs)
    if roi_png is not None:
        files["roi_grid"] = outputs.write_bytes(f"{folder}/roi_grid.png", roi_png)
    table = metrics_markdown(results, random_weights) if results else "(no metrics yet: run the evaluate stage)\n"
    if results:
        files["metrics_png"] = outputs.write_bytes(f"{folder}/metrics.png", metrics_png(results))
    files["table"] = outputs.write_bytes(f"{folder}/metrics.md", table.encode())
    files["json"] = outputs.write_bytes(f"{folder}/metrics.json", json.dumps(results, indent=1).encode())
    page = ["<html><head><meta charset='utf-8'><title>fmri2img report</title></head><body>",
            f"<h1>fmri2img — subject {subject}</h1>", "<h2>Reconstructions</h2>", "<img src='grid.png'>",
            "<h2>Metrics</h2>", f"<pre>{html.escape(table)}</pre>"]
    if results:
        page.append("<img src='metrics.png'>")
    if roi_png is not None:
        page += ["<h2>ROI analysis</h2>", "<p>Each region's synthetic fMRI decoded (Brain-Diffuser's ROI analysis; "
                 "V1–V4 from prf-visualrois)</p>", "<img src='roi_grid.png'>"]
    page.append("</body></html>")
    files["html"] = outputs.write_bytes(f"{folder}/index.html", "\n".join(page).encode())
    logger.info("report for subject %d written to %s", subject, files["html"])
    return {"files": files, "table": table, "runs": runs}


def across_subjects(store: Store, subjects: Sequence[int], outputs: Outputs,
                    runs: Sequence[str] | None = None) -> dict[str, Any]:
    """One table comparing runs across subjects: a row per subject and run/part, then the mean over subjects."""
    from fmri2img.metrics.scores import METRICS

    per_subject = {s: collect(store, s, list(runs) if runs else available_runs(store, s)) for s in subjects}
    rows: dict[str, dict] = {}
    for subject, results in per_subject.items():
        for label, summary in results.items():
            rows[f"{schema.subject_key(subject)} {label}"] = summary
    labels = sorted({label for results in per_subject.values() for label in results})
    for label in labels:
        values = [per_subject[s][label] for s in subjects if label in per_subject[s]]
        if len(values) < 2:
            continue
        mean = {}
        for m in METRICS:
            means = [v[m]["mean"] for v in values if m in v and v[m].get("mean") is not None]
            if means:
                mean[m] = {"mean": float(np.mean(means)), "sem": float(np.std(means, ddof=1) / np.sqrt(len(means)))
                           if len(means) > 1 else None, "random_weights": any(v[m].get("random_weights") for v in values if m in v)}
        rows[f"mean of {len(values)} subjects: {label}"] = mean
    random_weights = any(s.get("random_weights") for r in rows.values() for s in r.values())
    table = metrics_markdown(rows, random_weights) if rows else "(no metrics yet: run the evaluate stage)\n"
    url = outputs.write_bytes("report/subjects.md", table.encode())
    return {"table": table, "file": url, "rows": list(rows)}
