"""The report: results apart from plumbing checks, tables, per-image scores, provenance.

``fmri2img report STORE --subject N [--runs ...]`` (and the end of ``fmri2img demo``) writes to
the outputs URL, under ``report/subjNN/``:

- ``index.html``: the page (open it in a browser): results, per-image scores with the best and
  worst reconstructions, the ROI analysis, the plumbing check, provenance;
- ``grid.png``: ground truth beside every run/part made with real weights;
- ``metrics.png``: one bar plot per metric of those results; Brain-Diffuser's published value
  as a dashed line only when the comparison means something (NSD's real test set);
- ``extremes_<run>_<part>.png``: the best and worst reconstructions (by PixCorr) with their
  ground truth;
- ``roi_grid.png``: each ROI's reconstruction, one row per run/part;
- ``plumbing_grid.png``, ``plumbing_roi_grid.png``: the same for parts made with random weights,
  which never appear beside the results;
- ``metrics.md`` and ``metrics.json``: the tables as text and data.

Across subjects, ``report/index.html`` and ``report/subjects.md`` compare the runs.
Classification (result or plumbing check) is in ``report_data``; the pictures in
``report_figures``; the tables in ``report_tables``; the page in ``report_html``.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from fmri2img.report import figures as figs
from fmri2img.report import tables as tabs
from fmri2img.report.data import (PARTS, RANK_METRIC, DataSource, Part, Row, available_runs,  # noqa: F401
                                           best_and_worst, collect_rows, data_source, finished_parts, gt_images,
                                           per_image, recon_images)
from fmri2img.report.html import PartDetail, SubjectPage, index_html, subject_html
from fmri2img.report.provenance import provenance, scrub, secrets_in
from fmri2img.storage import schema, urls
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

ALL_RANDOM = ("Everything in this report was made with random weights (the models of the demo and the tests): "
              "it shows that every stage runs, and nothing here measures picture quality. Point [weights] at "
              "the real model files for results.")
#: files this module writes in a subject's folder (older ones that a new report does not rewrite are removed)
_OWN = ("grid.png", "metrics.png", "roi_grid.png", "plumbing_grid.png", "plumbing_roi_grid.png", "extremes_*.png",
        "metrics.md", "metrics.json", "index.html")


class NothingToReport(ValueError):
    """The subject has no finished reconstruction: the message names the subject and the stage to run."""


def _nothing(store: Store, subject: int, runs: Sequence[str] | None) -> NothingToReport:
    if not store.has_group(schema.subject_group(subject, "test")):
        return NothingToReport(
            f"subject {subject}: not in the store (not ingested): add {subject} to [ingest] subjects and run the "
            f"ingest, features, regress, reconstruct and evaluate stages for it")
    which = f" of run(s) {', '.join(runs)}" if runs else ""
    return NothingToReport(
        f"subject {subject}: no finished reconstructions{which} in the store: run the reconstruct stage for "
        f"subject {subject} (add {subject} to [reconstruct] subjects and [evaluate] subjects, then "
        f"`fmri2img run CONFIG --stages reconstruct,evaluate`)")


def write_report(store: Store, subject: int, outputs: Outputs, runs: Sequence[str] | None = None,
                 n_images: int = 8, *, config: Any = None, n_extremes: int = 5,
                 index_link: bool = False) -> dict[str, Any]:
    """Write the report files of ``subject``; return their URLs and the tables.

    Parameters
    ----------
    runs : sequence of str, optional
        Runs to show (default: every run reconstructed for ``subject``).
    n_images : int
        Test images in the picture grids.
    config : Config or mapping, optional
        The run's configuration, shown redacted in the provenance block.
    n_extremes : int
        Best and worst reconstructions shown per part.
    index_link : bool
        Link the page to ``report/index.html`` (when :func:`across_subjects` writes it too).

    Returns
    -------
    dict
        ``files`` (name → URL), ``table`` (Markdown), ``runs``, ``results`` and ``plumbing``
        (run/part labels), ``published_shown``.

    Raises
    ------
    NothingToReport
        When ``subject`` has no finished reconstruction.
    """
    from fmri2img.metrics.scores import METRICS

    runs = list(runs) if runs else available_runs(store, subject)
    parts = finished_parts(store, subject, runs)
    if not parts:
        raise _nothing(store, subject, runs)
    rows = collect_rows(store, subject, parts)
    source = data_source(store, subject)
    real = [p for p in parts if not p.random]
    fake = [p for p in parts if p.random]
    ids = _grid_ids(store, subject, parts[0], n_images)
    folder = f"report/{schema.subject_key(subject)}"
    png: dict[str, bytes] = {}
    page = SubjectPage(subject, banner=ALL_RANDOM if not real else "", index_link=index_link)
    page.notes = [f"{p.label}: {p.note}" for p in parts if p.note]
    if real:
        png["grid.png"] = figs.grid_png(_columns(store, subject, real, ids), ids)
        page.grid, page.grid_caption = "grid.png", "Ground truth (top row) and each run's reconstructions below it."
    if fake:
        png["plumbing_grid.png"] = figs.grid_png(_columns(store, subject, fake, ids), ids,
                                                 title="random weights †: a plumbing check, not a result")
        page.plumbing_grid = "plumbing_grid.png"
    page.main = tabs.main_table(rows, source)
    page.plumbing = tabs.plumbing_table(rows)
    shown = source.comparable and bool(page.main.rows)  # the paper's numbers, beside results only
    page.comparison = _comparison(source) if shown or not source.comparable else ""
    page.plumbing_note = tabs.PLUMBING_NOTE
    values = {m: {r.part.label: r.summary[m] for r in rows if m in r.result_metrics()}
              for m in tabs.result_columns(rows)}
    if values:
        png["metrics.png"] = figs.metrics_png([r.part.label for r in rows if r.result_metrics()], values,
                                              _published() if source.comparable else None)
        page.metrics_png = "metrics.png"
        page.metrics_caption = "Mean ± standard error over the test images" + (
            "; dotted line: chance (two-way identification)." if any(
                METRICS[m].kind == "identification" for m in values if m in METRICS) else ".")
    for row in rows:
        if not row.part.random and row.result_metrics():
            page.details.append(_detail(store, subject, row, n_extremes, png))
    _roi(store, subject, parts, page, png)
    page.provenance = provenance(store, subject, parts, source, config)
    markdown = _markdown(page)
    data = {"subject": subject, "data": {"source": source.url, "kind": source.kind, "n_test": source.n_test},
            "published_shown": shown,
            "parts": {r.part.label: {"random_weights": r.part.random, "weights_note": r.part.note,
                                     "metrics": {m: {**s, "plumbing": m in r.random_cells}
                                                 for m, s in r.summary.items()}} for r in rows}}
    files = _write(outputs, folder, png, {
        "metrics.md": markdown, "metrics.json": json.dumps(data, indent=1, default=str),
        "index.html": subject_html(page)}, secrets_in(config))
    logger.info("report for subject %d written to %s", subject, files["html"])
    return {"files": files, "table": markdown, "runs": runs, "results": [p.label for p in real],
            "plumbing": [p.label for p in fake], "published_shown": shown}


def _grid_ids(store: Store, subject: int, part: Part, n: int) -> np.ndarray:
    from fmri2img.pipeline.reconstruct import recon_group

    return np.asarray(store.group(recon_group(subject, part.run, part.part))["image"][:n], dtype=np.int64)


def _columns(store: Store, subject: int, parts: Sequence[Part], ids) -> list[tuple[str, np.ndarray, bool]]:
    cols = [("ground truth", gt_images(store, ids), False)]
    return cols + [(f"{p.run}\n{p.part}", recon_images(store, subject, p, ids), p.random) for p in parts]


def _published() -> dict[str, float]:
    from fmri2img.metrics.scores import METRICS

    return {m: spec.published for m, spec in METRICS.items() if spec.published is not None}


def _comparison(source: DataSource) -> str:
    if source.comparable:
        return (f"The first row gives Brain-Diffuser's published numbers (mean of subjects 1/2/5/7 on NSD's "
                f"{source.n_test} shared test images); the plot draws them as a dashed line.")
    return f"No published numbers are shown: {source.reason}."


def _detail(store: Store, subject: int, row: Row, n_extremes: int, png: dict[str, bytes]) -> PartDetail:
    """Per-image table and best/worst strip of one result part (the strip's PNG goes into ``png``)."""
    from fmri2img.metrics.scores import METRICS

    metrics = row.result_metrics()
    ids, values = per_image(store, subject, row.part, metrics)
    name = None
    note = (f"Ranked by {RANK_METRIC} (Pearson correlation of the pixels, which needs no network): the best "
            f"{n_extremes} and the worst {n_extremes}.")
    if RANK_METRIC in values:
        best, worst = best_and_worst(ids, values[RANK_METRIC], n_extremes, METRICS[RANK_METRIC].higher_is_better)
        if best:
            name = f"extremes_{row.part.slug}.png"
            b, w = [i for i, _ in best], [i for i, _ in worst]
            png[name] = figs.extremes_png(best, worst, gt_images(store, b), recon_images(store, subject, row.part, b),
                                          gt_images(store, w), recon_images(store, subject, row.part, w), RANK_METRIC)
    table = tabs.per_image_table(ids, values, f"{row.part.label}: every test image")
    return PartDetail(row.part.label, f"part-{row.part.slug}", table, name, note)


def _roi(store: Store, subject: int, parts: Sequence[Part], page: SubjectPage, png: dict[str, bytes]) -> None:
    from fmri2img.pipeline.roi import roi_group

    rows = []
    for p in parts:
        group = roi_group(subject, p.run, p.part)
        if store.is_complete(group):
            g = store.group(group)
            random = p.random or bool(g.attrs.get("random_weights", False))
            rows.append((p.label, [str(r) for r in g["roi"][:]], np.asarray(g["images"][:]), random))
    caption = ("Each column: the reconstruction from the synthetic fMRI of one region (Brain-Diffuser's ROI "
               "analysis; V1–V4 from prf-visualrois, ecc* from prf-eccrois, floc-* from the floc localisers). "
               "Rows: run/part.")
    real = [r for r in rows if not r[3]]
    fake = [r for r in rows if r[3]]
    if real:
        png["roi_grid.png"] = figs.roi_grid_png(real, caption)
        page.roi_grid, page.roi_caption = "roi_grid.png", caption
    if fake:
        png["plumbing_roi_grid.png"] = figs.roi_grid_png(fake, caption + " † random weights: a plumbing check.")
        page.plumbing_roi_grid = "plumbing_roi_grid.png"


def _markdown(page: SubjectPage) -> str:
    out = [f"# fmri2img report: subject {page.subject}", ""]
    if page.banner:
        out += [page.banner, ""]
    if page.main is not None and page.main.rows:
        out += [tabs.to_markdown(page.main), page.comparison, ""]
    else:
        out += ["No results yet (no metric made with real weights).", ""]
    if page.plumbing is not None and page.plumbing.rows:
        out += [tabs.to_markdown(page.plumbing), tabs.PLUMBING_NOTE, ""]
    return "\n".join(out)


def _write(outputs: Outputs, folder: str, png: Mapping[str, bytes], text: Mapping[str, str],
           secrets: Sequence[str]) -> dict[str, str]:
    """Write the files (texts scrubbed of ``secrets``), remove older report files not rewritten."""
    _remove_stale(outputs, folder, set(png) | set(text))
    files = {}
    for name, data in png.items():
        key = "metrics_png" if name == "metrics.png" else name.removesuffix(".png")
        files[key] = outputs.write_bytes(f"{folder}/{name}", data)
    keys = {"metrics.md": "table", "metrics.json": "json", "index.html": "html"}
    for name, body in text.items():
        files[keys.get(name, name)] = outputs.write_bytes(f"{folder}/{name}", scrub(body, secrets).encode("utf-8"))
    return files


def _remove_stale(outputs: Outputs, folder: str, keep: set[str]) -> None:
    """Delete this module's files left in ``folder`` by an earlier report (e.g. a grid that is now plumbing)."""
    fs, root = urls.filesystem(outputs.url, dict(outputs.storage_options) or None)
    base = f"{root.rstrip('/')}/{folder}"
    try:
        found = [p for pattern in _OWN for p in fs.glob(f"{base}/{pattern}")]
    except (OSError, ValueError):
        return
    for path in found:
        if path.rsplit("/", 1)[-1] not in keep:
            fs.rm(path)


def _relabel(row: Row, run_label: str) -> Row:
    p = row.part
    return Row(Part(run_label, p.part, p.random, p.note), row.summary, row.random_cells)


def across_subjects(store: Store, subjects: Sequence[int], outputs: Outputs,
                    runs: Sequence[str] | None = None, *, config: Any = None) -> dict[str, Any]:
    """Compare runs across subjects: ``report/index.html`` (linking each subject's page) and ``subjects.md``.

    A row per subject and run/part, then per run/part scored for two or more subjects the mean
    over subjects (sem across subjects).  Results and plumbing checks are separate tables; the
    published numbers appear only when every subject's data are NSD's.
    """
    rows_by_subject: dict[int, list[Row]] = {}
    links, sources = [], []
    for s in subjects:
        parts = finished_parts(store, s, list(runs) if runs else available_runs(store, s))
        if not parts:
            links.append((s, "", str(_nothing(store, s, runs)).split(": ", 1)[1]))
            continue
        links.append((s, f"{schema.subject_key(s)}/index.html", ""))
        sources.append(data_source(store, s))
        rows_by_subject[s] = collect_rows(store, s, parts)
    counts: dict[str, int] = {}
    for subject_rows in rows_by_subject.values():
        for r in subject_rows:
            counts[r.part.label] = counts.get(r.part.label, 0) + 1
    rows = [_relabel(r, f"{schema.subject_key(s)} {r.part.run}") for s, subject_rows in rows_by_subject.items()
            for r in subject_rows]
    rows += [_relabel(m, f"mean of {counts[label]} subjects: {m.part.run}")
             for label, m in tabs.subject_mean(rows_by_subject).items() if m.summary]
    comparable = bool(sources) and all(src.comparable for src in sources)
    shared = next((src for src in sources if not src.comparable), sources[0] if sources else None)
    main = tabs.main_table(rows, shared if comparable else None, "Results across subjects")
    plumbing = tabs.plumbing_table(rows, "Plumbing check across subjects (random weights)")
    note = ("No subject has finished reconstructions." if shared is None
            else _comparison(shared) if main.rows or not comparable else "")
    markdown = "\n".join([tabs.to_markdown(main), note, ""] +
                         ([tabs.to_markdown(plumbing), tabs.PLUMBING_NOTE, ""] if plumbing.rows else []))
    secrets = secrets_in(config)
    url = outputs.write_bytes("report/subjects.md", scrub(markdown, secrets).encode("utf-8"))
    page = index_html(links, main, plumbing, [note] if note else [], tabs.PLUMBING_NOTE)
    html_url = outputs.write_bytes("report/index.html", scrub(page, secrets).encode("utf-8"))
    return {"table": markdown, "file": url, "html": html_url, "rows": [r.part.label for r in rows],
            "missing": [s for s, href, _ in links if not href]}
