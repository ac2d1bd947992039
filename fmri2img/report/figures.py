"""The report's PNG figures, drawn from arrays (no store access here).

- :func:`grid_png`: ground truth above each run/part's reconstructions, one column per image;
- :func:`roi_grid_png`: one row per run/part, one column per ROI, labelled and captioned;
- :func:`metrics_png`: one bar plot per metric, the published value only when it compares;
- :func:`extremes_png`: the best and the worst reconstructions of one part with their ground truth.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

#: colour of everything that marks random weights
RANDOM_COLOUR = "#B3261E"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _resize(img: np.ndarray, tile: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((tile, tile), Image.BICUBIC))


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def grid_png(columns: Sequence[tuple[str, np.ndarray, bool]], ids: Sequence[int], tile: int = 128,
             title: str | None = None) -> bytes:
    """A picture grid: one row per ``(label, images (n, h, w, 3), random)``, one column per image id.

    The first entry is the ground truth; rows made with random weights get a red label ending
    in "(random weights) †".
    """
    plt = _pyplot()
    n = len(ids)
    fig, axes = plt.subplots(len(columns), n, figsize=(1.5 * n + 0.6, 1.5 * len(columns) + (0.4 if title else 0)),
                             squeeze=False)
    for r, (label, images, random) in enumerate(columns):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(_resize(images[c], tile))
            _blank(ax)
            if r == 0:
                ax.set_title(f"NSD {int(ids[c])}", fontsize=7)
            if c == 0:
                text = f"{label}\n(random weights) †" if random else label
                ax.set_ylabel(text, fontsize=7, color=RANDOM_COLOUR if random else "black")
    if title:
        fig.suptitle(title, fontsize=9, color=RANDOM_COLOUR)
    fig.tight_layout()
    return _png(fig)


def _cell(ax, images: np.ndarray, c: int, count: int, tile: int) -> bool:
    """Image ``c`` of a row of ``count`` in ``ax``, or ``ax`` hidden past the row's end; True when drawn."""
    _blank(ax)
    if c >= count:
        ax.axis("off")
        return False
    ax.imshow(_resize(images[c], tile))
    return True


def roi_grid_png(rows: Sequence[tuple[str, Sequence[str], np.ndarray, bool]], caption: str,
                 tile: int = 96) -> bytes:
    """One row per ``(run/part label, ROI names, images (n_roi, h, w, 3), random)``, one column per ROI.

    Column titles are the ROI names, row labels the run/part (red, marked † when random);
    ``caption`` goes under the grid.
    """
    plt = _pyplot()
    n = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(max(1.1 * n, 6), 1.25 * len(rows) + 0.6), squeeze=False)
    for r, (label, names, images, random) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            if not _cell(ax, images, c, len(names), tile):
                continue
            if r == 0:
                ax.set_title(str(names[c]), fontsize=6)
            if c == 0:
                ax.set_ylabel(f"{label}\n(random) †" if random else label, fontsize=6,
                              color=RANDOM_COLOUR if random else "black")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7, wrap=True)
    return _png(fig)


def metrics_png(labels: Sequence[str], values: dict[str, dict[str, dict]], published: dict[str, float] | None,
                title: str | None = None) -> bytes:
    """One bar plot per metric, one bar per label (mean ± sem).

    Parameters
    ----------
    labels : sequence of str
        Run/part labels, the bars' order.
    values : dict
        ``{metric: {label: summary}}``: only the cells to draw (a missing label draws no bar).
    published : dict or None
        ``{metric: value}`` drawn as a dashed line; None draws none (the comparison means nothing).
    """
    from fmri2img.metrics.scores import METRICS

    plt = _pyplot()
    names = [m for m in METRICS if values.get(m)]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows + (0.3 if title else 0)), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        cells = values[name]
        means = [np.nan if cells.get(k, {}).get("mean") is None else cells[k]["mean"] for k in labels]
        sems = [cells.get(k, {}).get("sem") or 0 for k in labels]
        ax.bar(range(len(labels)), means, yerr=sems, color="#4C72B0", capsize=2)
        spec = METRICS[name]
        if published and published.get(name) is not None:
            ax.axhline(published[name], color="#C44E52", ls="--", lw=1, label="Brain-Diffuser (paper)")
        if spec.kind == "identification":
            ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        ax.set_title(f"{name} ({'↑' if spec.higher_is_better else '↓'})", fontsize=9)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def extremes_png(best: Sequence[tuple[int, float]], worst: Sequence[tuple[int, float]], gt_best: np.ndarray,
                 rec_best: np.ndarray, gt_worst: np.ndarray, rec_worst: np.ndarray, metric: str,
                 tile: int = 112) -> bytes:
    """Four strips: best ground truths, best reconstructions, worst ground truths, worst reconstructions."""
    plt = _pyplot()
    n = max(len(best), len(worst))
    strips = [("best: ground truth", gt_best, best), ("best: reconstruction", rec_best, best),
              ("worst: ground truth", gt_worst, worst), ("worst: reconstruction", rec_worst, worst)]
    fig, axes = plt.subplots(4, n, figsize=(1.5 * n + 0.8, 6.6), squeeze=False)
    for r, (label, images, scored) in enumerate(strips):
        for c in range(n):
            ax = axes[r, c]
            if not _cell(ax, images, c, len(scored), tile):
                continue
            image_id, score = scored[c]
            if r % 2 == 1:
                ax.set_xlabel(f"NSD {image_id}\n{metric} {score:.3f}", fontsize=6)
            if c == 0:
                ax.set_ylabel(label.replace(": ", ":\n"), fontsize=7)
    fig.tight_layout()
    return _png(fig)
