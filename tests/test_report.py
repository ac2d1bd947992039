"""The report: results apart from plumbing checks, tables, per-image scores, provenance, valid HTML.

The store holds subject 2 ingested only, and two runs of subject 1 on mini-NSD: ``px`` (stage 1 from the pixel regression:
no network, a result) and ``vd`` (stage 1 from the tiny random-weight VDVAE: a plumbing check),
evaluated with a random-weight AlexNet, and the ROI analysis of both.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import xarray as xr

from fmri2img.report import build as rep
from fmri2img.report import data as report_data
from fmri2img.report.build import NothingToReport, across_subjects, write_report
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store
from tests.minifixtures import EXTRACTORS, SESSIONS, mini_nsd, predicted_store  # noqa: F401
from tests.test_report_html import PROBE, _chromium, _install_chromium, check_html

SECRETS = ("AKIAFAKEKEYID0123456", "sup3r-s3cret-value", "hunter2hunter2", "tok-abcdef123456")


@pytest.fixture(scope="module")
def store(predicted_store, mini_nsd, tmp_path_factory):
    from fmri2img.pipeline.evaluate import evaluate
    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.pipeline.reconstruct import reconstruct_run, run_spec
    from fmri2img.pipeline.roi import roi_analysis
    from fmri2img.storage.source import Source

    path = tmp_path_factory.mktemp("report") / "store.zarr"
    shutil.copytree(predicted_store.url, path)
    s = Store(str(path))
    ingest(s, Source(str(mini_nsd)), 2, SESSIONS, progress=False)  # subject 2: ingested, never reconstructed
    for name, stage1 in (("px", "pixels"), ("vd", "vdvae")):
        spec = run_spec(name, {"stage1": stage1, "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=0)
        reconstruct_run(s, 1, spec, images_per_task=8, progress=False)
        roi_analysis(s, 1, spec, progress=False)
    evaluate(s, 1, ["px", "vd"], parts=["stage1"], nets=["alexnet2"], images_per_task=8, progress=False)
    return s


@pytest.fixture(scope="module")
def written(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return write_report(store, 1, Outputs(str(out)), n_images=4, n_extremes=3), out / "report/subj01"


def _section(page: str, ident: str) -> str:
    match = re.search(rf'<section id="{ident}"[^>]*>(.*?)</section>', page, re.S)
    assert match, f"no section {ident}"
    return match.group(1)


def _table_rows(fragment: str, ident: str) -> list[list[str]]:
    body = re.search(rf'<table id="{ident}">.*?<tbody>(.*?)</tbody>', fragment, re.S).group(1)
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_results_and_plumbing_are_apart(written):
    result, folder = written
    assert result["results"] == ["px/stage1"] and result["plumbing"] == ["vd/stage1"]
    page = (folder / "index.html").read_text(encoding="utf-8")
    main, plumbing = _section(page, "results"), _section(page, "plumbing")
    assert "vd/stage1" not in main and "†" not in main
    assert "Plumbing check (random weights: tests the pipeline, not picture quality)" in plumbing
    rows = _table_rows(plumbing, "plumbing-table")
    labels = [r[0] for r in rows]
    assert labels == ["px/stage1", "vd/stage1 (random weights)"]
    # vd's every cell (PixCorr and SSIM too: its picture came from random weights) is marked
    assert all(c.endswith("†") for c in rows[1][1:])
    # px's AlexNet(2) ran on a random-weight network: a plumbing cell; its PixCorr is a result (—)
    heads = re.findall(r'<th scope="col">(.*?)</th>', plumbing.split('id="plumbing-table"')[1])
    assert rows[0][heads.index("AlexNet(2) ↑")].endswith("†") and rows[0][heads.index("PixCorr ↑")] == "—"
    main_rows = _table_rows(main, "results-table")
    main_heads = re.findall(r'<th scope="col">(.*?)</th>', main)
    assert [r[0] for r in main_rows] == ["px/stage1"] and "AlexNet(2) ↑" not in main_heads
    assert "ALL_RANDOM" not in page and rep.ALL_RANDOM not in page


def test_main_grid_and_plot_hold_results_only(store, tmp_path, monkeypatch):
    calls = {}
    real_grid, real_metrics = rep.figs.grid_png, rep.figs.metrics_png
    monkeypatch.setattr(rep.figs, "grid_png", lambda columns, ids, **k: calls.setdefault(
        "grid", []).append(([c[0] for c in columns], [c[2] for c in columns], k)) or real_grid(columns, ids, **k))
    monkeypatch.setattr(rep.figs, "metrics_png", lambda labels, values, published, **k: calls.setdefault(
        "metrics", []).append((labels, values, published)) or real_metrics(labels, values, published, **k))
    write_report(store, 1, Outputs(str(tmp_path)), n_images=3)
    (main_cols, main_random, _), (plumb_cols, plumb_random, plumb_kw) = calls["grid"]
    assert main_cols == ["ground truth", "px\nstage1"] and not any(main_random)
    assert plumb_cols == ["ground truth", "vd\nstage1"] and plumb_random == [False, True]
    assert "random weights" in plumb_kw["title"]
    [(labels, values, published)] = calls["metrics"]
    assert labels == ["px/stage1"] and set(values) == {"PixCorr", "SSIM (column)", "SSIM-2D"}
    assert published is None  # mini-NSD: the paper's line is never drawn
    from PIL import Image

    assert Image.open(tmp_path / "report/subj01/grid.png").size[1] == round(1.5 * 2 * 110)  # two rows


def test_published_numbers_only_where_they_compare(store, tmp_path, monkeypatch):
    result, page = _report_with_source(store, tmp_path / "mini", None)
    assert not result["published_shown"] and "Brain-Diffuser (paper" not in page
    assert "No published numbers are shown: the data are mini-NSD" in page
    nsd = report_data.DataSource("s3://natural-scenes-dataset", "NSD", 982, "")
    result, page = _report_with_source(store, tmp_path / "nsd", nsd)
    assert result["published_shown"]
    rows = _table_rows(_section(page, "results"), "results-table")
    assert rows[0][:4] == ["Brain-Diffuser (paper, mean of subjects 1/2/5/7)", "0.254", "0.356", "—"]
    assert [r[0] for r in rows[1:]] == ["px/stage1"]  # still no random-weight row beside the paper
    result, page = _report_with_source(store, tmp_path / "nsd-random", nsd, runs=["vd"])
    assert not result["published_shown"] and "Brain-Diffuser (paper" not in page and "published numbers" not in page


def _report_with_source(store, out, source, runs=None):
    with pytest.MonkeyPatch.context() as mp:
        if source is not None:
            mp.setattr(rep, "data_source", lambda *a: source)
        result = write_report(store, 1, Outputs(str(out)), runs=runs, n_images=2)
    return result, (out / "report/subj01/index.html").read_text(encoding="utf-8")


def test_data_source_rule(store, tmp_path, mini_nsd):
    import zarr

    got = report_data.data_source(store, 1)
    assert got.kind == "mini-NSD" and not got.comparable and got.url == str(mini_nsd)

    def fake(source: str, n: int) -> report_data.DataSource:
        root = zarr.open_group(str(tmp_path / f"s{n}-{len(source)}.zarr"), mode="w", zarr_format=3)
        g = root.create_group("subjects/subj01/test")
        g.create_array("image", shape=(n,), dtype="int64")
        g.attrs["source"] = source
        return report_data.data_source(Store(str(tmp_path / f"s{n}-{len(source)}.zarr")), 1)

    assert fake("s3://natural-scenes-dataset", 982).comparable
    assert fake("/data/nsd-copy", 982).kind == "NSD"  # a local copy of NSD without a mini-NSD manifest
    few = fake("s3://natural-scenes-dataset", 300)
    assert not few.comparable and "300 images, not NSD's 982" in few.reason
    assert fake(str(mini_nsd), 982).kind == "mini-NSD"  # the manifest wins over the count
    assert "not ingested" in report_data.data_source(store, 3).reason


def test_per_image_scores_and_best_worst(written, store):
    _, folder = written
    page = (folder / "index.html").read_text(encoding="utf-8")
    per_image = _section(page, "per-image")
    rows = _table_rows(per_image, "part-px_stage1-scores")
    m = xr.open_zarr(store.url, group="metrics/subj01/px/stage1", consolidated=False)
    assert [int(r[0]) for r in rows] == [int(i) for i in m.image.values]
    assert [float(r[1]) for r in rows] == pytest.approx(m.pixcorr.values, abs=5e-4)
    assert (folder / "extremes_px_stage1.png").exists() and 'src="extremes_px_stage1.png"' in per_image
    assert "vd" not in per_image  # no per-image section for a plumbing check
    # the ranking against plain sorting
    ids, scores = m.image.values, m.pixcorr.values
    best, worst = report_data.best_and_worst(ids, scores, 3)
    ranked = sorted(zip(scores, ids), reverse=True)
    assert [i for i, _ in best] == [int(i) for _, i in ranked[:3]]
    assert [i for i, _ in worst] == [int(i) for _, i in ranked[::-1][:3]]


def test_best_and_worst_skip_nan_and_never_overlap():
    ids = np.arange(10, 15)
    best, worst = report_data.best_and_worst(ids, np.array([0.1, np.nan, 0.5, 0.3, 0.2]), 5)
    assert best == [(12, 0.5), (13, 0.3)] and worst == [(10, 0.1), (14, 0.2)]
    best, worst = report_data.best_and_worst(ids, np.array([3.0, 1.0, 2.0, 5.0, 4.0]), 1, higher_is_better=False)
    assert best == [(11, 1.0)] and worst == [(13, 5.0)]


def test_roi_grids_labelled_and_split(store, tmp_path, monkeypatch):
    calls = []
    real = rep.figs.roi_grid_png
    monkeypatch.setattr(rep.figs, "roi_grid_png", lambda rows, caption, **k: calls.append((rows, caption))
                        or real(rows, caption, **k))
    write_report(store, 1, Outputs(str(tmp_path)), n_images=2)
    (rows, caption), (prows, pcaption) = calls
    names = [str(r) for r in xr.open_zarr(store.url, group="subjects/subj01/rois", consolidated=False).roi.values]
    assert [(r[0], r[1], r[3]) for r in rows] == [("px/stage1", names, False)]
    # the vd ROI group says random_weights=False (no stage 2); its stage 1 is random, so the row is too
    assert [(r[0], r[3]) for r in prows] == [("vd/stage1", True)] and "random weights" in pcaption
    page = (tmp_path / "report/subj01/index.html").read_text(encoding="utf-8")
    assert 'src="roi_grid.png"' in _section(page, "roi") and 'src="plumbing_roi_grid.png"' in _section(page, "plumbing")


def test_provenance_has_no_secret(store, tmp_path, mini_nsd):
    from fmri2img.config import loads

    config = loads(f"""seed = 11
[store]
url = "{store.url}"
[store.storage_options]
key = "{SECRETS[0]}"
secret = "{SECRETS[1]}"
[source]
url = "https://labuser:{SECRETS[2]}@data.example.org/nsd"
[weights]
alexnet = "s3://lab-bucket/alexnet.pth"
[weights.storage_options]
token = "{SECRETS[3]}"
""")
    copy = tmp_path / "s.zarr"
    shutil.copytree(store.url, copy)
    s = Store(str(copy))
    s.group("subjects/subj01/test", mode="r+").attrs["source"] = f"https://labuser:{SECRETS[2]}@host/nsd"
    note = "VDVAE trained by the demo on mini-NSD's images for 300 steps"
    s.group("recon/subj01/px/stage1", mode="r+").attrs["weights_note"] = f"{note} (https://u:{SECRETS[2]}@x/y)"
    result = write_report(s, 1, Outputs(str(tmp_path / "out")), n_images=2, config=config)
    across_subjects(s, [1, 2], Outputs(str(tmp_path / "out")), config=config)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) >= 8
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {path.name}"
    page = (tmp_path / "out/report/subj01/index.html").read_text(encoding="utf-8")
    assert f'<p class="note">px/stage1: {html.escape(note)} (https://u:***@x/y)</p>' in page  # the weights note
    prov = _section(page, "provenance")
    assert "https://labuser:***@host/nsd" in prov and "lab-bucket/alexnet.pth" in prov
    assert "&quot;seed&quot;: 11" in prov and "Configuration (credentials redacted)" in prov
    commit = re.search(r"fmri2img git commit</dt><dd>([^<]*)</dd>", prov).group(1)
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}", commit)
    assert re.search(r"<th scope=\"row\">numpy</th><td>\d", prov)  # the versions table
    assert "<dt>Seed</dt><dd>0</dd>" in prov  # the seed recorded with the run
    assert result["files"]["html"].endswith("report/subj01/index.html")


def test_git_commit_never_fails(monkeypatch):
    from fmri2img.report import provenance as prov

    got = prov.git_commit()
    assert got == "unknown" or re.fullmatch(r"[0-9a-f]{40}", got)

    def boom(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(prov.subprocess, "run", boom)
    assert prov.git_commit() == "unknown"


def test_everything_random_says_so(store, tmp_path):
    result = write_report(store, 1, Outputs(str(tmp_path)), runs=["vd"], n_images=2)
    folder = tmp_path / "report/subj01"
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert page.index(rep.ALL_RANDOM) < page.index('<section id="results">')
    assert not (folder / "grid.png").exists() and not (folder / "metrics.png").exists()
    assert result["results"] == [] and rep.ALL_RANDOM in (folder / "metrics.md").read_text(encoding="utf-8")


def test_a_new_report_removes_stale_files(store, tmp_path):
    write_report(store, 1, Outputs(str(tmp_path)), n_images=2)
    assert (tmp_path / "report/subj01/grid.png").exists()
    write_report(store, 1, Outputs(str(tmp_path)), runs=["vd"], n_images=2)
    left = sorted(p.name for p in (tmp_path / "report/subj01").iterdir())
    assert left == ["index.html", "metrics.json", "metrics.md", "plumbing_grid.png", "plumbing_roi_grid.png"]


def test_files_tables_and_json(written, store):
    result, folder = written
    table = (folder / "metrics.md").read_text(encoding="utf-8")
    assert "| px/stage1 |" in table and "| vd/stage1 (random weights) |" in table and "Brain-Diffuser" not in table
    data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    px = data["parts"]["px/stage1"]
    assert px["metrics"]["PixCorr"]["n_valid"] == 16 and not px["metrics"]["PixCorr"]["plumbing"]
    assert px["metrics"]["AlexNet(2)"]["plumbing"] and data["parts"]["vd/stage1"]["random_weights"]
    assert data["data"]["kind"] == "mini-NSD" and data["published_shown"] is False
    pix = xr.open_zarr(store.url, group="metrics/subj01/px/stage1", consolidated=False).pixcorr.values
    assert px["metrics"]["PixCorr"]["mean"] == pytest.approx(float(np.mean(pix)))
    assert set(result["files"]) >= {"grid", "plumbing_grid", "metrics_png", "roi_grid", "table", "json", "html",
                                    "extremes_px_stage1"}


def test_pages_are_valid_html(written, store, tmp_path):
    _, folder = written
    p = check_html((folder / "index.html").read_text(encoding="utf-8"), folder)
    assert {"grid.png", "plumbing_grid.png", "metrics.png", "roi_grid.png", "plumbing_roi_grid.png",
            "extremes_px_stage1.png"} <= set(p.files) and "../index.html" not in p.files  # no index written
    across_subjects(store, [1, 2], Outputs(str(tmp_path)))
    check_html((tmp_path / "report/index.html").read_text(encoding="utf-8"))


def test_html5lib_parses_strictly(written):
    html5lib = pytest.importorskip("html5lib", reason="html5lib is not installed (the html.parser check runs)")
    _, folder = written
    html5lib.HTMLParser(strict=True).parse((folder / "index.html").read_text(encoding="utf-8"))


def test_subject_without_reconstructions(store):
    with pytest.raises(NothingToReport, match=r"subject 2: no finished reconstructions.*run the reconstruct stage "
                                              r"for subject 2"):
        write_report(store, 2, Outputs("memory://unused"))


def test_subject_not_ingested(store):
    with pytest.raises(NothingToReport, match=r"subject 3: not in the store \(not ingested\).*run the ingest"):
        write_report(store, 3, Outputs("memory://unused"))


def test_reconstructed_but_not_evaluated(store, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(store.url, copy)
    shutil.rmtree(copy / "_progress/metrics/subj01/px")  # px/stage1's scores no longer count as finished
    result = write_report(Store(str(copy)), 1, Outputs(str(tmp_path / "out")), n_images=2)
    folder = tmp_path / "out/report/subj01"
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert result["results"] == ["px/stage1"] and (folder / "grid.png").exists()
    assert not (folder / "metrics.png").exists() and 'id="results-table"' not in page
    assert "No metric of these reconstructions is a result yet: run the evaluate stage" in _section(page, "results")
    check_html(page, folder)


def test_across_subjects(store, tmp_path):
    root = tmp_path / "two.zarr"
    shutil.copytree(store.url, root)
    for top in ("metrics", "_progress/metrics", "recon", "_progress/recon", "subjects", "_progress/subjects"):
        if (root / top / "subj01").exists() and not (root / top / "subj02").exists():
            shutil.copytree(root / top / "subj01", root / top / "subj02")
    out = across_subjects(Store(str(root)), [1, 2, 3], Outputs(str(tmp_path)))
    assert out["rows"] == ["subj01 px/stage1", "subj01 vd/stage1", "subj02 px/stage1", "subj02 vd/stage1",
                           "mean of 2 subjects: px/stage1", "mean of 2 subjects: vd/stage1"]
    assert out["missing"] == [3]
    pix = xr.open_zarr(store.url, group="metrics/subj01/px/stage1", consolidated=False).pixcorr.values
    page = (tmp_path / "report/index.html").read_text(encoding="utf-8")
    rows = _table_rows(_section(page, "results"), "results-table")
    assert rows[-1][:2] == ["mean of 2 subjects: px/stage1", f"{np.mean(pix):.3f} ± 0.000"]
    assert all("vd" not in r[0] for r in rows)
    assert [r[0] for r in _table_rows(_section(page, "plumbing"), "plumbing-table")][-1] == \
        "mean of 2 subjects: vd/stage1 (random weights)"
    subjects = _section(page, "subjects")
    assert 'href="subj01/index.html"' in subjects and "subject 3: not in the store" in subjects
    assert (tmp_path / "report/subjects.md").exists()


def test_cli_reports_the_subjects_it_can(store, tmp_path, capsys):
    from fmri2img.cli.main import main

    out = tmp_path / "out"
    assert main(["report", store.url, "--subject", "1,2", "--out", str(out), "--n-images", "2"]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "subject 2" in x]
    assert len(lines) == 1 and "run the reconstruct stage for subject 2" in lines[0]
    assert (out / "report/subj01/index.html").exists() and (out / "report/index.html").exists()
    check_html((out / "report/subj01/index.html").read_text(encoding="utf-8"), out / "report/subj01")
    assert 'href="../index.html"' in (out / "report/subj01/index.html").read_text(encoding="utf-8")
    assert not (out / "report/subj02").exists()
    assert main(["report", store.url, "--subject", "2", "--out", str(out)]) == 1
    assert "no report written" in capsys.readouterr().err


# ----------------------------------------------------------------------------- headless Chromium
def test_report_renders_in_headless_chromium(written, tmp_path):
    reason = _install_chromium()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI could not install chromium: {reason}")
        pytest.skip(reason)
    _, folder = written
    copy = tmp_path / "page"
    shutil.copytree(folder, copy)
    page = (copy / "index.html").read_text(encoding="utf-8")
    (copy / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
         f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files", "--virtual-time-budget=5000",
         "--enable-logging=stderr", "--v=0", "--dump-dom", (copy / "probe.html").as_uri()],
        capture_output=True, text=True, timeout=60)
    dom = done.stdout
    assert 'data-probed="yes"' in dom, done.stderr[-2000:]
    assert 'data-broken=""' in dom, re.search(r'data-broken="[^"]*"', dom).group(0)
    assert 'data-overflow="0"' in dom  # nothing wider than a 1,400 px window
    assert 'data-shown="results-table,plumbing-table,versions-table"' in dom
    console = [x for x in done.stderr.splitlines() if "CONSOLE" in x]
    assert not console, console

