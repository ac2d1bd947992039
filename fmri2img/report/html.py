"""The report's HTML pages: a subject's page and the index across subjects.

Plain HTML5 with no script: ``<!doctype html>``, UTF-8, ``lang``, a title, real tables
(``thead``/``tbody``, numbers right-aligned), alt text on every image and a stylesheet that
keeps the page within the window (images scale down, wide tables scroll inside their box).
Every value is escaped here; callers pass plain text.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from fmri2img.report.tables import Cell, Table

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#fff}
main{max-width:1320px;margin:0 auto;padding:1rem 1.25rem 3rem}
h1{font-size:1.6rem;margin:.5rem 0 1rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem;margin-top:1.6rem}
img{max-width:100%;height:auto;display:block}
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555;margin-top:.3rem}
.scroll{max-width:100%;overflow-x:auto;margin:.8rem 0}
table{border-collapse:collapse;font-size:.8rem}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #d0d0d0;padding:.2rem .4rem;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.warn{background:#fdecea;border-left:4px solid #b3261e;padding:.6rem .9rem}
.note{background:#f4f6fb;border-left:4px solid #4c72b0;padding:.6rem .9rem}
.plumbing{background:#fff7f6;border:2px dashed #b3261e;padding:0 1rem 1rem;margin-top:2.2rem}
.plumbing h2{color:#b3261e;border-bottom-color:#e8b4af}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f7f7f7;padding:.6rem;font-size:.8rem}
dl.kv{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem 1rem}
dl.kv dt{font-weight:600}dl.kv dd{margin:0;overflow-wrap:anywhere}
details{margin:.6rem 0}summary{cursor:pointer}
nav ul{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;padding:0;list-style:none}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table_html(table: Table, table_id: str | None = None) -> str:
    """A ``<table>`` with caption, ``thead`` (column heads) and ``tbody``, in a scrolling box."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in table.head)
    body = []
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            tag = "th" if i == 0 and table.first_is_label else "td"
            attrs = (' scope="row"' if tag == "th" else "") + (' class="num"' if cell.numeric else "")
            attrs += f' title="{esc(cell.title)}"' if cell.title else ""
            cells.append(f"<{tag}{attrs}>{esc(cell.text)}</{tag}>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="scroll"><table{ident}><caption>{esc(table.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def figure(src: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}">{cap}</figure>'


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def document(title: str, body: Sequence[str]) -> str:
    """A complete HTML5 page."""
    return "\n".join([
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", "<main>",
        *body, "</main>", "</body>", "</html>", ""])


@dataclass
class PartDetail:
    """The per-image section of one result part."""

    label: str
    anchor: str
    table: Table
    extremes_png: str | None
    rank_note: str


@dataclass
class SubjectPage:
    """Everything a subject's page shows (plain text and relative file names)."""

    subject: int
    banner: str = ""
    index_link: bool = False
    notes: list[str] = field(default_factory=list)
    grid: str | None = None
    grid_caption: str = ""
    main: Table | None = None
    comparison: str = ""
    metrics_png: str | None = None
    metrics_caption: str = ""
    details: list[PartDetail] = field(default_factory=list)
    roi_grid: str | None = None
    roi_caption: str = ""
    plumbing_grid: str | None = None
    plumbing: Table | None = None
    plumbing_roi_grid: str | None = None
    plumbing_note: str = ""
    provenance: dict = field(default_factory=dict)


def _nav(page: SubjectPage) -> str:
    items = [("results", "Results"), ("per-image", "Per image"), ("roi", "ROI analysis"),
             ("plumbing", "Plumbing check"), ("provenance", "Provenance")]
    shown = {"results": True, "per-image": bool(page.details), "roi": bool(page.roi_grid),
             "plumbing": bool(page.plumbing or page.plumbing_grid), "provenance": True}
    links = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t in items if shown[a])
    if page.index_link:
        links += '<li><a href="../index.html">All subjects</a></li>'
    return f'<nav aria-label="sections"><ul>{links}</ul></nav>'


def _results(page: SubjectPage) -> list[str]:
    out = ['<section id="results">', "<h2>Results</h2>"]
    if page.grid:
        out.append(figure(page.grid, f"ground truth beside the reconstructions of subject {page.subject}",
                          page.grid_caption))
    else:
        out.append(paragraph("No reconstruction here was made with real weights: see the plumbing check below.",
                             "warn"))
    if page.main is not None and page.main.rows:
        out.append(table_html(page.main, "results-table"))
    elif page.grid:
        out.append(paragraph("No metric of these reconstructions is a result yet: run the evaluate stage "
                             "(with real evaluation-network weights in [weights])."))
    if page.comparison:
        out.append(paragraph(page.comparison, "note"))
    if page.metrics_png:
        out.append(figure(page.metrics_png, "bar plots of the result metrics, one bar per run and part",
                          page.metrics_caption))
    out.append("</section>")
    return out


def _details(page: SubjectPage) -> list[str]:
    if not page.details:
        return []
    out = ['<section id="per-image">', "<h2>Per image</h2>"]
    for d in page.details:
        out.append(f'<h3 id="{esc(d.anchor)}">{esc(d.label)}</h3>')
        if d.extremes_png:
            out.append(figure(d.extremes_png, f"best and worst reconstructions of {d.label} with their ground truth",
                              d.rank_note))
        out.append(f"<details><summary>Scores of every test image ({len(d.table.rows)})</summary>"
                   f"{table_html(d.table, d.anchor + '-scores')}</details>")
    out.append("</section>")
    return out


def _plumbing(page: SubjectPage) -> list[str]:
    if not (page.plumbing or page.plumbing_grid or page.plumbing_roi_grid):
        return []
    out = ['<section id="plumbing" class="plumbing">',
           "<h2>Plumbing check (random weights: tests the pipeline, not picture quality)</h2>",
           paragraph(page.plumbing_note)]
    if page.plumbing_grid:
        out.append(figure(page.plumbing_grid, "ground truth beside reconstructions made with random weights",
                          "Made with seeded random weights: they show that every stage runs, not what the "
                          "method can do."))
    if page.plumbing is not None and page.plumbing.rows:
        out.append(table_html(page.plumbing, "plumbing-table"))
    if page.plumbing_roi_grid:
        out.append(figure(page.plumbing_roi_grid, "ROI analysis made with random weights",
                          "ROI analysis of the runs above (random weights †)."))
    out.append("</section>")
    return out


def _provenance(prov: dict) -> list[str]:
    keys = [("generated", "Report written"), ("fmri2img_version", "fmri2img version"),
            ("git_commit", "fmri2img git commit"), ("store", "Store"), ("source", "Source"),
            ("data", "Data"), ("n_test_images", "Test images"), ("config_seed", "Seed (configuration)"),
            ("config_hash", "Configuration hash")]
    rows = "".join(f"<dt>{esc(label)}</dt><dd>{esc(prov.get(key) if prov.get(key) not in (None, '') else '—')}</dd>"
                   for key, label in keys)
    out = ['<section id="provenance">', "<h2>Provenance</h2>", f'<dl class="kv">{rows}</dl>']
    for run in prov.get("runs", []):
        out.append(f"<h3>Run {esc(run['run'])}</h3>")
        out.append(f'<dl class="kv"><dt>Seed</dt><dd>{esc(run.get("seed"))}</dd>'
                   f'<dt>Configuration hash</dt><dd>{esc(run.get("config_hash") or "—")}</dd></dl>')
        out.append(f"<details><summary>Settings recorded with the reconstructions</summary>"
                   f"<pre>{esc(json.dumps(run.get('settings'), indent=1, sort_keys=True))}</pre></details>")
    if prov.get("config"):
        out.append("<details><summary>Configuration (credentials redacted)</summary>"
                   f"<pre>{esc(json.dumps(prov['config'], indent=1, sort_keys=True))}</pre></details>")
    else:
        out.append(paragraph("The configuration was not given to the report (fmri2img report --config "
                             "CONFIG.toml adds it); the store records its hash with each run."))
    versions = [(k, v, next((r["versions"].get(k) for r in prov.get("runs", []) if r["versions"].get(k)), "—"))
                for k, v in sorted(prov.get("library_versions", {}).items())]
    table = Table("Library versions", ["library", "this report", "recorded with the reconstructions"])
    table.rows = [[Cell(k), Cell(v), Cell(r)] for k, v, r in versions]
    out += [table_html(table, "versions-table"), "</section>"]
    return out


def subject_html(page: SubjectPage) -> str:
    """The subject's page."""
    body = [f"<h1>fmri2img report: subject {page.subject}</h1>"]
    if page.banner:
        body.append(paragraph(page.banner, "warn"))
    body += [paragraph(n, "note") for n in page.notes]
    body.append(_nav(page))
    body += _results(page)
    body += _details(page)
    if page.roi_grid:
        body += ['<section id="roi">', "<h2>ROI analysis</h2>",
                 figure(page.roi_grid, "reconstructions from each region's synthetic fMRI, one row per run and part",
                        page.roi_caption), "</section>"]
    body += _plumbing(page)
    body += _provenance(page.provenance)
    return document(f"fmri2img report: subject {page.subject}", body)


def index_html(subjects: Sequence[tuple[int, str, str]], main: Table | None, plumbing: Table | None,
               notes: Sequence[str], plumbing_note: str = "") -> str:
    """The page across subjects: links to each subject's page (or why it has none) and the tables."""
    items = "".join(f'<li><a href="{esc(href)}">subject {s}</a></li>' if href else
                    f"<li>subject {s}: {esc(why)}</li>" for s, href, why in subjects)
    body = ["<h1>fmri2img report: all subjects</h1>", '<section id="subjects">', "<h2>Subjects</h2>",
            f"<ul>{items}</ul>", "</section>", '<section id="results">', "<h2>Runs across subjects</h2>"]
    body += [paragraph(n, "note") for n in notes]
    if main is not None and main.rows:
        body.append(table_html(main, "results-table"))
    else:
        body.append(paragraph("No result to compare yet: every score here was made with random weights "
                              "(see the plumbing check)."))
    body.append("</section>")
    if plumbing is not None and plumbing.rows:
        body += ['<section id="plumbing" class="plumbing">',
                 "<h2>Plumbing check (random weights: tests the pipeline, not picture quality)</h2>",
                 paragraph(plumbing_note), table_html(plumbing, "plumbing-table"), "</section>"]
    return document("fmri2img report: all subjects", body)
