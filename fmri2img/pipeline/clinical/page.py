"""The page of a decode: ``decoded/<name>/index.html`` under the outputs URL.

One row per decoded trial: its number, the image shown (when known), and stage 1 and the
final picture of every run (the PNGs the reconstruction tasks wrote beside the page); above
them what was decoded, with which calibration, the metrics when the images are known, and a
warning when any model has random weights (those pictures test the plumbing, not decoding).
"""
from __future__ import annotations

import html
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fmri2img.storage import schema
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store

RANDOM_NOTE = ("Some models of these runs have seeded random weights (tiny test configurations): the pictures and "
               "scores below test the pipeline, they are not decoded images.")


def trial_label(trial: int) -> str:
    """File name (without .png) of a decoded trial's picture: ``trial0007``."""
    return f"trial{int(trial):04d}"


def _truth_pngs(store: Store, outputs: Outputs, name: str, ids: np.ndarray) -> set[int]:
    if not store.has_group(schema.STIMULI):
        return set()
    stim = store.group(schema.STIMULI)
    index = {int(v): i for i, v in enumerate(np.asarray(stim["image"][:]))}
    wanted = sorted({int(i) for i in ids if int(i) in index})
    for i in wanted:
        outputs.write_png(f"decoded/{name}/truth/{i}.png", np.asarray(stim["images"][index[i]]))
    return set(wanted)


def _truth_cells(store: Store, outputs: Outputs, data) -> list[tuple[str, str]]:
    """Per trial, (what it showed as text, the page-relative PNG of the picture or ''); the PNGs are written here.

    The text is the NSD id, or for a BIDS participant's picture that is not one of the store's, its file name.
    """
    ids = [("" if i < 0 else str(int(i))) for i in data.images]
    if not data.shown_group:
        known = _truth_pngs(store, outputs, data.name, data.images[data.images >= 0])
        return [(t, f"truth/{int(i)}.png" if int(i) in known else "") for t, i in zip(ids, data.images)]
    from fmri2img.pipeline.clinical.participant import truth_images

    rows = np.unique(data.shown[data.shown >= 0])
    for row, picture in zip(rows, truth_images(store, data.shown_group, rows)):
        outputs.write_png(f"decoded/{data.name}/truth/stimulus{int(row):04d}.png", picture)
    files = np.asarray(store.group(data.shown_group)["stim_file"][:])
    return [(t or (f"new: {files[k]}" if k >= 0 else ""), f"truth/stimulus{int(k):04d}.png" if k >= 0 else "")
            for t, k in zip(ids, data.shown)]


def _img(src: str) -> str:
    return f'<a href="{html.escape(src)}"><img src="{html.escape(src)}" width="128" height="128"></a>'


def _metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    if not metrics:
        return "<p>No metrics: the images shown are not known (give a trials CSV with an 'image' column).</p>"
    names = sorted({m for values in metrics.values() for m in values})
    head = "".join(f"<th>{html.escape(m)}</th>" for m in names)
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(
            f"<td>{'' if v.get(m) is None else f'{v[m]:.3f}'}</td>" for m in names) + "</tr>"
        for k, v in metrics.items())
    return f"<table><tr><th>run/part</th>{head}</tr>{rows}</table>"


def write_page(store: Store, outputs: Outputs, data, runs: Sequence, metrics: Mapping[str, Mapping[str, Any]],
               attrs: Mapping[str, Any], random_weights: Callable[[Any], bool]) -> str:
    """Write the page (and the images shown as PNGs); return its URL."""
    truth = _truth_cells(store, outputs, data)
    parts = [(run.name, p) for run in runs for p in (("stage1", "final") if run.preset else ("stage1",))]
    head = "<th>trial</th><th>image</th><th>shown</th>" + "".join(
        f"<th>{html.escape(r)}<br>{p}</th>" for r, p in parts)
    body = []
    for trial, (image_text, src) in zip(data.trials, truth):
        shown = _img(src) if src else ""
        cells = "".join(f"<td>{_img(f'recon/{r}/{p}/{trial_label(trial)}.png')}</td>" for r, p in parts)
        body.append(f"<tr><td>{int(trial)}</td><td>{html.escape(image_text)}</td><td>{shown}</td>{cells}</tr>")
    warn = f'<p class="warn">{html.escape(RANDOM_NOTE)}</p>' if any(random_weights(r) for r in runs) else ""
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>fmri2img decode: {html.escape(data.name)}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 6px;text-align:center}}
.warn{{color:#a00;font-weight:bold}}</style>
</head><body><h1>Decoded: {html.escape(data.name)}</h1>{warn}
<p>Subject {int(attrs['subject'])}, input {html.escape(str(data.url))}, {len(data.trials)} trials;
images shown: {html.escape(data.images_from)}.<br>Calibration: {html.escape(str(attrs['calibration_note']))}.</p>
<h2>Metrics</h2>{_metrics_table(metrics)}
<h2>Reconstructions</h2><table><tr>{head}</tr>{''.join(body)}</table>
<pre>{html.escape(json.dumps({'runs': [r.name for r in runs], 'calibration': attrs['calibration']}))}</pre>
</body></html>
"""
    return outputs.write_bytes(f"decoded/{data.name}/index.html", text.encode())
