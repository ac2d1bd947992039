"""What the README promises beyond its commands: quiet open_zarr that is never stale, the real
dashboard port, one progress style, demo models reported as such, and only files a user has."""
from __future__ import annotations

import json
import re
import socket
import warnings
from argparse import Namespace
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from fmri2img.cli.main import main
from fmri2img.storage import identity, lock
from fmri2img.storage.store import Store, regular_regions

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# -- consolidated metadata -------------------------------------------------------------------------
def _template(n: int) -> xr.Dataset:
    return xr.Dataset({"v": (("x", "y"), da.zeros((n, 3), chunks=(2, 3)))}, coords={"x": np.arange(n)})


def _root_doc(store: Store) -> dict:
    return json.loads((Path(store.url) / "zarr.json").read_text())


def _quiet_open(url: str, group: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(url, group=group)


def test_open_zarr_is_quiet_and_never_stale_across_reruns(tmp_path):
    store = Store(str(tmp_path / "s.zarr"))
    identity.claim(store)
    regions = regular_regions("x", 6, 2, "b")
    with lock.held(store):
        store.write_template("a/b", _template(6), regions, attrs={"run": 1})
        for r in regions:
            store.write_region("a/b", r, {"v": np.full((2, 3), r.index, float)})
        assert "consolidated_metadata" not in _root_doc(store)  # nothing consolidated while a run writes
    cons = _root_doc(store)["consolidated_metadata"]["metadata"]
    assert "a/b/v" in cons and not [k for k in cons if k.startswith(("_progress", "_lock", "_runlog"))]
    ds = _quiet_open(store.url, "a/b")
    assert ds.sizes["x"] == 6 and ds.attrs["run"] == 1 and float(ds.v[5, 0]) == 2.0

    # a rerun that changes metadata: a resized array, a new group, new attributes
    with lock.held(store):
        new = store.extend_template("a/b", "x", np.arange(6, 9), 2, "b")
        store.write_region("a/b", new[-1], {"v": np.full((new[-1].stop - new[-1].start, 3), 7.0)})
        store.group("a/b", mode="a").attrs["run"] = 2
        store.write_template("c", _template(4), regular_regions("x", 4, 2, "c"), attrs={"k": "new"})
        assert "consolidated_metadata" not in _root_doc(store)
    ds = _quiet_open(store.url, "a/b")
    assert ds.sizes["x"] == 9 and ds.attrs["run"] == 2 and float(ds.v[8, 0]) == 7.0
    assert _quiet_open(store.url, "c").attrs["k"] == "new"
    # without consolidated metadata (a run cut short) readers get the same data, with xarray's warning
    store.unconsolidate()
    with pytest.warns(RuntimeWarning, match="consolidated"):
        assert xr.open_zarr(store.url, group="a/b").sizes["x"] == 9


def test_a_failed_run_leaves_no_stale_consolidated_metadata(tmp_path):
    store = Store(str(tmp_path / "s.zarr"))
    identity.claim(store)
    with lock.held(store):
        store.write_template("a", _template(4), regular_regions("x", 4, 2, "a"))
    assert "consolidated_metadata" in _root_doc(store)
    with pytest.raises(RuntimeError, match="boom"):
        with lock.held(store):
            store.write_template("a", _template(8), regular_regions("x", 8, 2, "a"))
            raise RuntimeError("boom")
    assert "consolidated_metadata" not in _root_doc(store)
    assert xr.open_zarr(store.url, group="a", consolidated=False).sizes["x"] == 8


# -- dashboard link ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_dashboard_link_is_the_real_port_when_8787_is_taken(capsys):
    import urllib.request

    from fmri2img.cli.main import cluster_from

    taken = socket.socket()
    try:
        try:
            taken.bind(("127.0.0.1", 8787))
            taken.listen()
        except OSError:
            pass  # already taken by something else: the same situation
        args = Namespace(cluster="local", workers=1, cluster_option=[])
        with cluster_from(args) as client:
            link = client.dashboard_link
            err = capsys.readouterr().err
            port = int(re.search(r"127\.0\.0\.1:(\d+)/", link).group(1))
            assert port != 8787
            assert f"Dask dashboard: {link}" in err and f"ssh -L {port}:localhost:{port}" in err, err
            assert "already in use" not in err, err
            with urllib.request.urlopen(link, timeout=30) as page:  # the link answers: it is the real one
                assert page.status == 200
    finally:
        taken.close()
    assert "killing" not in capsys.readouterr().err


# -- one progress style --------------------------------------------------------------------------------
def test_one_progress_style_on_stderr(capsys):
    import time

    import dask

    from fmri2img.pipeline.tasks import Task, compute_writes, run_tasks

    def slow_int(text: str) -> int:  # bars appear after 0.5 s (quicker steps show none)
        time.sleep(0.6)
        return int(text)

    assert run_tasks([Task("a", slow_int, ("3",)), Task("b", slow_int, ("4",))], stage="stage-one") == [3, 4]
    compute_writes([dask.delayed(slow_int)("4"), dask.delayed(slow_int)("5")], stage="stage-two")
    out, err = capsys.readouterr()
    assert out == "" and "stage-one" in err and "stage-two" in err, err
    assert "Completed" not in err  # not Dask's ProgressBar
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "fmri2img").rglob("*.py")
                 if re.search(r"dask\.diagnostics import ProgressBar|from distributed import progress",
                              p.read_text())]
    assert not offenders, offenders


# -- weights check -----------------------------------------------------------------------------------
def _weights_config(tmp_path, body: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(f'stages = ["features", "reconstruct", "evaluate"]\n[store]\nurl = "{tmp_path / "s.zarr"}"\n'
                    + body)
    return str(path)


DEMO_LIKE = """
[features.extractors.pixels]
[features.extractors.vdvae]
tiny = true
[features.extractors.clip-text]
tiny = true
[features.extractors.clip-vision]
tiny = true
[reconstruct.runs.bd]
stage1 = "vdvae"
tiny = true
"""


def test_weights_check_reports_demo_models_as_such(tmp_path, capsys):
    assert main(["weights", "check", _weights_config(tmp_path, DEMO_LIKE)]) == 0
    out = capsys.readouterr().out
    assert "demo model" in out and "not real weights" in out
    assert "not ready" not in out and "tiny = true" not in out and "!!" not in out, out
    assert re.search(r"ok alexnet +demo model", out) and re.search(r"ok versatile_diffusion +demo model", out)


def test_weights_check_checks_an_extractors_own_file(tmp_path, capsys):
    own = tmp_path / "vdvae-mini.th"
    own.write_bytes(b"x" * 2048)
    body = DEMO_LIKE.replace("[features.extractors.vdvae]\ntiny = true",
                             f'[features.extractors.vdvae]\nweights = "{own}"')
    assert main(["weights", "check", _weights_config(tmp_path, body)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ok features\.vdvae +present +" + re.escape(str(own)), out), out
    assert "!! vdvae" not in out and "not ready" not in out
    own.unlink()
    assert main(["weights", "check", _weights_config(tmp_path, body)]) == 1
    assert re.search(r"!! features\.vdvae +missing", capsys.readouterr().out)


def test_weights_check_still_flags_a_real_configuration(tmp_path, capsys):
    """Real Versatile Diffusion configured but no evaluation networks: those are not demo models there."""
    vd = tmp_path / "vd"
    vd.mkdir()
    (vd / "model_index.json").write_text("{}")
    body = DEMO_LIKE.replace("stage1 = \"vdvae\"\ntiny = true", "stage1 = \"vdvae\"") + \
        f'[weights]\nversatile_diffusion = "{vd}"\n'
    assert main(["weights", "check", _weights_config(tmp_path, body)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"!! alexnet +not configured +needed by evaluate", out), out
    assert re.search(r"ok versatile_diffusion +present", out) and "not ready" in out
    assert "tiny = true" not in out


# -- files the README cites ------------------------------------------------------------------------------
def test_readme_cites_only_files_a_user_has():
    text = README.read_text()
    for private in ("REFERENCE.md", "DESIGN.md", "STYLE.md", "/work/"):  # the project's own notes
        assert private not in text, private
    cited = set(re.findall(r"(?<![\w/.])((?:fmri2img|tests|notebooks|benchmarks|examples)/[\w/.-]*\w)", text))
    cited |= set(re.findall(r"(?<![\w/.-])([\w-]+\.(?:md|toml|txt|ipynb))(?![\w])", text)) & {"constraints.txt"}
    files = {c for c in cited if "." in c.rsplit("/", 1)[-1]}
    assert len(files) >= 4, cited
    missing = sorted(c for c in files if not (ROOT / c).exists())
    assert not missing, missing


# -- offline S3 ----------------------------------------------------------------------------------------
def test_run_with_an_unreachable_configured_source_is_one_error_line_within_seconds(tmp_path):
    """`fmri2img run CONFIG` whose [source] is out of reach ends like `ingest` does: one line, seconds."""
    pytest.importorskip("s3fs")
    import os
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "c.toml"
    config.write_text(f'stages = ["ingest"]\n[store]\nurl = "{tmp_path / "s.zarr"}"\n[source]\n'
                      f'url = "s3://natural-scenes-dataset"\n[source.storage_options]\n'
                      f'endpoint_url = "http://127.0.0.1:{port}"\n[ingest]\nsubjects = [1]\n')
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fmri2img.cli.main", "run", str(config)], capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    seconds = time.monotonic() - t0
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: cannot reach 127.0.0.1:{port}") and "Fix:" in lines[0]
    assert seconds < 10, f"{seconds:.1f} s"
    assert not (tmp_path / "s.zarr").exists()
