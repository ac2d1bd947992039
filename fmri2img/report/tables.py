"""The report's tables as plain data, rendered to Markdown here and to HTML in ``report_html``.

Each table cell knows its text, whether it is a number (right-aligned, tabular figures in
HTML) and an optional tooltip.  The main table holds only results; the plumbing table only
cells computed with random weights, each marked †.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from fmri2img.report.data import DataSource, Row

DAGGER = "†"
PAPER_LABEL = "Brain-Diffuser (paper, mean of subjects 1/2/5/7)"
PLUMBING_NOTE = (f"{DAGGER} computed with random-weight networks or models (seeded, built in code): these "
                 "numbers test the pipeline, not picture quality. Point [weights] at the real files for real "
                 "numbers.")


@dataclass(frozen=True)
class Cell:
    text: str
    numeric: bool = False
    title: str = ""


@dataclass
class Table:
    """A caption, column heads and rows of cells; ``first_is_label``: the first column heads its row."""

    caption: str
    head: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    first_is_label: bool = True


def metric_head(name: str) -> str:
    from fmri2img.metrics.scores import METRICS

    return f"{name} {'↑' if METRICS[name].higher_is_better else '↓'}" if name in METRICS else name


def fmt(summary: Mapping, dagger: bool = False) -> Cell:
    """``mean ± sem`` (and excluded images), with † when the cell is a plumbing check."""
    mean, sem = summary.get("mean"), summary.get("sem")
    if mean is None:
        return Cell("n/a" + (f" {DAGGER}" if dagger else ""), title="no valid image")
    text = f"{mean:.3f}" + (f" ± {sem:.3f}" if sem is not None else "")
    if summary.get("n_excluded"):
        text += f" ({summary['n_excluded']} excl.)"
    over = (f"{summary['n_valid']} images" if "n_valid" in summary
            else f"mean of {summary.get('n_subjects', '?')} subjects")
    return Cell(text + (f" {DAGGER}" if dagger else ""), numeric=True,
                title=over + ("; random weights" if dagger else ""))


def _ordered(names) -> list[str]:
    from fmri2img.metrics.scores import METRICS

    names = set(names)
    return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


def result_columns(rows: Sequence[Row]) -> list[str]:
    return _ordered(m for r in rows for m in r.result_metrics())


def main_table(rows: Sequence[Row], source: DataSource | None, caption: str = "Results") -> Table:
    """Results only: a row per part with a result cell; the published row when it compares."""
    from fmri2img.metrics.scores import METRICS

    names = result_columns(rows)
    table = Table(caption, ["run/part"] + [metric_head(m) for m in names])
    for row in rows:
        if not row.result_metrics():
            continue
        table.rows.append([Cell(row.part.label)] + [
            Cell("—", title="random weights: in the plumbing check") if m in row.random_cells
            else fmt(row.summary[m]) if m in row.summary else Cell("—", title="not scored") for m in names])
    if table.rows and source is not None and source.comparable:  # the paper's row beside results only
        table.rows.insert(0, [Cell(PAPER_LABEL)] + [
            Cell("—") if METRICS.get(m) is None or METRICS[m].published is None
            else Cell(f"{METRICS[m].published:.3f}", numeric=True) for m in names])
    return table


def plumbing_table(rows: Sequence[Row], caption: str = "Plumbing check (random weights)") -> Table:
    """Every cell computed with random weights, marked †; cells that are results show —."""
    names = _ordered(m for r in rows for m in r.random_cells)
    table = Table(caption, ["run/part"] + [metric_head(m) for m in names])
    for row in rows:
        if not row.random_cells:
            continue
        label = row.part.label + (" (random weights)" if row.part.random else "")
        table.rows.append([Cell(label)] + [
            fmt(row.summary[m], dagger=True) if m in row.random_cells
            else Cell("—", title="a result: in the main table") for m in names])
    return table


def per_image_table(ids: np.ndarray, values: Mapping[str, np.ndarray], caption: str) -> Table:
    """One row per image: NSD id and each metric's score (n/a: excluded image)."""
    names = _ordered(values)
    table = Table(caption, ["NSD image"] + [metric_head(m) for m in names])
    for i, image_id in enumerate(ids):
        table.rows.append([Cell(str(int(image_id)), numeric=True)] + [
            Cell(f"{values[m][i]:.3f}", numeric=True) if np.isfinite(values[m][i]) else Cell("n/a")
            for m in names])
    return table


def subject_mean(rows_by_subject: Mapping[int, Sequence[Row]]) -> dict[str, Row]:
    """Per run/part label scored for 2+ subjects: the mean over subjects (sem across subjects).

    A mean cell is a plumbing check when any subject's cell is one.
    """
    from fmri2img.report.data import Part

    by_label: dict[str, list[Row]] = {}
    for rows in rows_by_subject.values():
        for row in rows:
            by_label.setdefault(row.part.label, []).append(row)
    out = {}
    for label, rows in sorted(by_label.items()):
        if len(rows) < 2:
            continue
        summary, random_cells = {}, set()
        for m in _ordered(m for r in rows for m in r.summary):
            means = [r.summary[m]["mean"] for r in rows if m in r.summary and r.summary[m].get("mean") is not None]
            if not means:
                continue
            summary[m] = {"mean": float(np.mean(means)), "n_subjects": len(means),
                          "sem": float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else None}
            if any(m in r.random_cells for r in rows if m in r.summary):
                random_cells.add(m)
        first = rows[0].part
        out[label] = Row(Part(first.run, first.part, any(r.part.random for r in rows)), summary, random_cells)
    return out


def to_markdown(table: Table) -> str:
    """The table in GitHub Markdown (a bold caption line above it)."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [f"**{table.caption}**", "", line(table.head), "|" + "---|" * len(table.head)]
    out += [line(c.text for c in row) for row in table.rows]
    return "\n".join(out) + "\n"
