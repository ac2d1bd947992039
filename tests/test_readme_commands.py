"""Every shell command in README.md runs as written (the README cannot drift from the program).

The commands are found automatically: every line of a ``bash``/``sh``/unlabelled code block and
every inline code span whose first word is ``fmri2img``, ``.venv/bin/fmri2img``, ``make``,
``python`` or ``dask``.  Each one runs in a subprocess, in a directory holding a small store
built once for this module (mini-NSD with two fitted subjects and an NSD-Imagery session; tiny
seeded random-weight models), after two mechanical rewrites only:

- the placeholders the README writes in capitals (``STORE``, ``DIR``, ``N``, ``URL``, ...) get
  the values of :data:`PLACEHOLDERS` (:data:`OVERRIDES` for the one command whose ``URL`` is
  another subject's scan);
- a synopsis's optional parts in ``[brackets]`` and a trailing ``...`` are dropped (each
  option has its own tests; the bare command must work as written).

Commands that cannot run here are listed in :data:`NOT_RUN` with the reason, and words that
only name a program in prose in :data:`MENTIONS`.  A command that is neither run successfully nor
listed fails this module, and so does a listed command the README no longer has.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.minifixtures import EXTRACTORS, TINY, VD_SETTINGS

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
PROGRAMS = ("fmri2img", ".venv/bin/fmri2img", "make", "python", "dask")

#: placeholder → value in this module's work directory (see the module docstring)
PLACEHOLDERS = {
    "STORE": "nsd.zarr",        # the fixture's store (also what `fmri2img status ./nsd.zarr` reads)
    "DIR": "fresh-mini-nsd",    # where `fmri2img mini-nsd DIR` writes
    "NSD_ROOT": "mini-nsd",     # the fixture's NSD-layout source (with NSD-Imagery files)
    "CONFIG": "config.toml",    # the fixture's configuration
    "N": "1",                   # a fitted subject
    "URL": "scan.npy",          # four of subject 1's scans, masked voxels (percent signal change)
    "NEW": "2",                 # the subject aligned to the reference (on one session)
    "REF": "01",                # the fitted reference subject (`--reference 01`, `align-to-subj01`)
}
#: placeholders that mean something else in one command (its text contains the key)
OVERRIDES = {"--via": {"URL": "new-scan.npy"}}  # decode --via: the new subject's own scans

#: commands that are not run here, and why
NOT_RUN = {
    "make demo": "creates .venv and installs everything (minutes, needs PyPI); CI runs it as its own job",
    "make test": "runs this very suite",
    'make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"': "installs torch from the "
    "PyTorch index, a network this suite does not use (the same install with the local torch is `make test`)",
    ".venv/bin/fmri2img ingest --source s3://natural-scenes-dataset --store ./nsd.zarr --subject 1 "
    "--captions-url ./COCO_73k_annots_curated.npy": "reads NSD's bucket over the network; offline it must end in one "
    "error line within seconds: test_offline_nsd_ingest_is_one_error_line_within_seconds",
    "fmri2img mini-nsd DIR --volume 81,104,83 --trials-per-session 750 --n-sessions 3": "NSD-sized (about 3 minutes, "
    "3 GB of memory, 9 GB of disk): test_nsd_sized_mini_nsd_is_accepted_as_written parses it and builds its spec",
    "fmri2img run nsd.toml --cluster slurm --cluster-option cores=8 --cluster-option gpus=1": "submits SLURM jobs; "
    "tests/test_slurm.py runs the stages on a real one-node SLURM when root and apt-get are available",
    "python -m tests.slurmlab DIR": "installs and starts SLURM as root (tests/test_slurm.py uses it)",
    "dask scheduler --host 127.0.0.1 --dashboard-address 127.0.0.1:8787": "a long-running server: "
    "tests/test_readme.py::test_readme_manual_cluster_listens_on_loopback_only runs the recipe on free ports",
    "dask worker tcp://127.0.0.1:8786 --host 127.0.0.1 --dashboard-address 127.0.0.1:0 --nworkers 2": "as above",
    "fmri2img demo --cluster tcp://127.0.0.1:8786": "needs the recipe's scheduler; "
    "tests/test_deploy.py::test_demo_on_a_scheduler_and_two_worker_processes runs the demo on one",
    "fmri2img decode STORE --subject N --imagery [--tasks vision,imagery,attention] [--runs ...]": "decodes and "
    "scores every NSD-Imagery trial with all six evaluation networks (over 5 minutes even at mini size on two "
    "loaded cores); tests/test_imagery.py runs `fmri2img decode STORE --subject 1 --imagery` with --runs and --nets, "
    "and the `ingest --experiment nsdimagery` line before it runs here",
    ".venv/bin/fmri2img run examples/seed_presets.toml": "five runs on the demo's mini-NSD (about 7 minutes on two "
    "loaded cores); tests/test_presets.py::test_example_config_runs_on_mini_nsd runs this file on a small mini-NSD",
    ".venv/bin/fmri2img report runs/seed/store.zarr --subject 1": "needs the seed-preset run above; `fmri2img report` "
    "runs here on the module's store",
    "fmri2img decode runs/demo/store.zarr --subject 9 --via align-to-subj01": "decodes with every run of the "
    "reference (Brain-Diffuser and pixels) and scores with all six evaluation networks (3 minutes on two loaded "
    "cores); tests/test_glm_bids.py runs `fmri2img decode STORE --subject 3 --via align-to-subj01` with --nets "
    "alexnet2 on the same generated dataset, and the three commands before it run here",
    "fmri2img demo": "the full demo takes minutes on two cores (7 min on a loaded 2-core VM); tests/test_deploy.py "
    "runs it on a scheduler, and here the module's store goes through its stages but roi (`fmri2img run config.toml`)",
}
#: inline spans that name a program or subcommand in prose (they are not commands)
MENTIONS = {"make", "python", "dask worker", "fmri2img run", "fmri2img decode", "fmri2img align", "fmri2img glm",
            "fmri2img ingest",
            "fmri2img decode --config"}


def readme_commands(text: str | None = None) -> list[str]:
    """The README's shell commands, whitespace-normalised, in order of appearance (duplicates once)."""
    text = README.read_text() if text is None else text
    found: list[str] = []
    fences = list(re.finditer(r"^```([\w-]*)\n(.*?)^```", text, flags=re.S | re.M))
    for m in fences:
        if m.group(1) not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in re.sub(r"\\\n\s*", " ", m.group(2)).splitlines():
            line = re.split(r"\s#\s", line)[0].strip().rstrip("&").strip()
            found.append(" ".join(line.split()))
    prose = text
    for m in reversed(fences):
        prose = prose[:m.start()] + prose[m.end():]
    found += [" ".join(m.group(1).split()) for m in re.finditer(r"`([^`]+)`", prose)]
    out = []
    for cmd in found:
        if cmd.split(" ", 1)[0] in PROGRAMS and cmd not in out:
            out.append(cmd)
    return out


def as_run(cmd: str) -> str:
    """The command with its optional parts dropped and its placeholders filled in."""
    cmd = re.sub(r"\[[^\]]*\]", "", cmd)
    cmd = re.sub(r"(^|\s)\.\.\.(?=\s|$)", " ", cmd)
    values = dict(PLACEHOLDERS)
    for key, extra in OVERRIDES.items():
        if key in cmd:
            values.update(extra)
    for name in sorted(values, key=len, reverse=True):
        cmd = re.sub(rf"(?<![A-Z0-9_]){name}(?![A-Z0-9_])", values[name], cmd)
    return " ".join(cmd.split())


#: run order: commands that make what others read come first
_ORDER = ("mini-nsd", "ingest", "run", "glm", "align", "decode", "report", "weights", "status", "unlock")


def _order(cmd: str) -> tuple[int, str]:
    words = cmd.split()
    sub = words[1] if len(words) > 1 else ""
    return (_ORDER.index(sub) if sub in _ORDER else len(_ORDER), cmd)


def _to_run() -> list[str]:
    return sorted((c for c in readme_commands() if c not in NOT_RUN and c not in MENTIONS), key=_order)


def test_every_readme_command_is_run_or_listed():
    commands = readme_commands()
    assert len(commands) >= 15, commands  # the extraction finds the README's commands
    stale = sorted((set(NOT_RUN) | MENTIONS) - set(commands))
    assert not stale, f"listed here but no longer in README.md (remove them from NOT_RUN/MENTIONS): {stale}"
    assert "fmri2img status ./nsd.zarr" in _to_run() and "fmri2img demo" in NOT_RUN


def test_extraction_and_rewrites():
    text = ("Run `fmri2img status STORE --verify` or `make`.\n```bash\nfmri2img decode STORE --subject N \\\n"
            "    --betas URL [--trials 1-750 | --trials-file CSV] ...   # a comment\n```\n"
            "```toml\nx = 'fmri2img run'\n```\nSee `fmri2img/storage` and `fmri2img[all]`.\n")
    assert readme_commands(text) == ["fmri2img decode STORE --subject N --betas URL [--trials 1-750 | "
                                     "--trials-file CSV] ...", "fmri2img status STORE --verify", "make"]
    assert as_run("fmri2img decode STORE --subject N --betas URL [--runs ...] ...") == \
        "fmri2img decode nsd.zarr --subject 1 --betas scan.npy"
    assert as_run("fmri2img decode STORE --subject NEW --via align-to-subjREF --betas URL ...") == \
        "fmri2img decode nsd.zarr --subject 2 --via align-to-subj01 --betas new-scan.npy"
    assert as_run("fmri2img align STORE --subject NEW --reference REF --sessions 1[-k]") == \
        "fmri2img align nsd.zarr --subject 2 --reference 01 --sessions 1"
    assert as_run("fmri2img ingest --source NSD_ROOT --subject N") == "fmri2img ingest --source mini-nsd --subject 1"


def _config_text(work: Path) -> str:
    extractors = "\n".join(f"[features.extractors.{name}]\n" + "\n".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in opts.items()) for name, opts in
        EXTRACTORS.items())
    settings = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in VD_SETTINGS.items())
    return f"""# the module's store: mini-NSD, tiny seeded random-weight models (plumbing, not pictures)
stages = ["ingest", "features", "regress", "reconstruct", "evaluate"]
[store]
url = "{work / 'nsd.zarr'}"
[source]
url = "{work / 'mini-nsd'}"
[cluster]
n_workers = 1
[ingest]
subjects = [1, 2]
[features]
images_per_task = 64
{extractors}
[regress]
subjects = [1, 2]
[regress.targets.pixels]
alpha = 1000.0
[regress.targets.vdvae]
alpha = 1000.0
[regress.targets.clip-text]
alpha = 1000.0
[regress.targets.clip-vision]
alpha = 1000.0
[reconstruct]
subjects = [1]
images_per_task = 16
[reconstruct.runs.brain-diffuser]
stage1 = "vdvae"
preset = "brain-diffuser"
tiny = true
[reconstruct.runs.brain-diffuser.settings]
{settings}
[reconstruct.runs.pixels]
stage1 = "pixels"
preset = ""
[evaluate]
subjects = [1]
nets = ["alexnet2"]
[outputs]
url = "{work / 'outputs'}"
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The directory the README's commands run in: mini-NSD, config.toml, the fitted store, two scan files."""
    from fmri2img import config as cfg
    from fmri2img.pipeline.runner import run
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd
    from fmri2img.storage.store import Store

    work = tmp_path_factory.mktemp("readme")
    generate_mini_nsd(work / "mini-nsd", MiniNSDSpec(**TINY, imagery=True, imagery_repeats=1))
    (work / "config.toml").write_text(_config_text(work))
    run(cfg.load(str(work / "config.toml")), progress=False)
    store = Store(str(work / "nsd.zarr"))
    for subject, name in ((1, "scan.npy"), (2, "new-scan.npy")):
        betas = store.open_dataset(f"subjects/subj{subject:02d}/betas")["betas"][:4].values
        np.save(work / name, betas.astype(np.float32))
    # the BIDS path's worked example runs "after fmri2img demo": the demo's folders, here the module's mini-NSD and
    # a copy of its store (so that its new subject 9 stays out of the other commands' store)
    (work / "runs/demo").mkdir(parents=True)
    (work / "runs/demo/mini-nsd").symlink_to(work / "mini-nsd")
    shutil.copytree(work / "nsd.zarr", work / "runs/demo/store.zarr")
    return work


def _argv(cmd: str) -> list[str]:
    words = shlex.split(cmd)
    program = {"fmri2img": str(BIN / "fmri2img"), ".venv/bin/fmri2img": str(BIN / "fmri2img"),
               "python": sys.executable, "dask": str(BIN / "dask")}[words[0]]
    return [program, *words[1:]]


ENV = {**os.environ, "COLUMNS": "120"}  # what a user's shell gives (no PYTHONWARNINGS)


@pytest.mark.slow
@pytest.mark.parametrize("readme_command", _to_run(), ids=lambda c: as_run(c).replace(" ", "_"))
def test_readme_command_runs_as_written(readme_command, work):
    cmd = as_run(readme_command)
    t0 = time.monotonic()
    done = subprocess.run(_argv(cmd), cwd=work, capture_output=True, text=True, env=ENV, timeout=300)
    seconds = time.monotonic() - t0
    shown = f"$ {cmd}\n({seconds:.0f} s, exit {done.returncode})\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, shown
    assert "Traceback" not in done.stderr and not re.search(r"^error", done.stderr, re.M), shown
    # quiet by default: no library warnings, no nanny "killing" lines
    assert not re.search(r"(Warning|WARNING|killing)", done.stderr), shown
    if cmd.startswith("fmri2img weights check"):
        assert "not ready" not in done.stdout and "tiny = true" not in done.stdout, shown


def test_nsd_sized_mini_nsd_is_accepted_as_written():
    """The NSD-sized example parses and gives NSD's sizes (running it takes minutes and 9 GB)."""
    from fmri2img.cli.data import mini_nsd_spec
    from fmri2img.cli.main import build_parser

    cmd = next(c for c in readme_commands() if "--volume 81,104,83" in c)
    spec = mini_nsd_spec(build_parser().parse_args(shlex.split(as_run(cmd))[1:]))
    assert spec.volume_shape == (81, 104, 83) and spec.trials_per_session == 750 and spec.n_sessions == 3


def test_open_zarr_as_the_readme_writes_it_is_quiet(work):
    """`xarray.open_zarr(url, group=...)` on every group the README's store table names: no warning at all."""
    import xarray as xr

    assert "xarray.open_zarr(url, group=...)" in README.read_text()
    table = re.search(r"\| group \| variables \|\n(.*?)\n\n", README.read_text(), flags=re.S).group(1)
    groups = [g.replace("subjNN", "subj01") for g in re.findall(r"^\| `([^`]+)`", table, flags=re.M)]
    groups += [g.replace("...", "subjects/subj01") for row in re.findall(r"^\| `[^`]+`, `([^`]+)`", table, flags=re.M)
               for g in [row]]
    assert {"stimuli", "subjects/subj01/betas", "subjects/subj01/train", "subjects/subj01/test"} <= set(groups)
    url = str(work / "nsd.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for group in groups:
            ds = xr.open_zarr(url, group=group)
            assert ds.data_vars, group


def test_offline_nsd_ingest_is_one_error_line_within_seconds(tmp_path):
    """The README's NSD ingest with NSD's endpoint out of reach: one error line naming the host and the fix, < 10 s."""
    pytest.importorskip("s3fs")
    import socket

    with socket.socket() as s:  # a port nothing listens on: the endpoint is out of reach
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = next(c for c in readme_commands() if "s3://natural-scenes-dataset" in c and c.startswith(".venv"))
    env = {**ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    t0 = time.monotonic()
    done = subprocess.run(_argv(cmd), cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - t0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert errors[0].startswith(f"error: cannot reach 127.0.0.1:{port}") and "Fix:" in errors[0], errors
    assert "Traceback" not in done.stderr and not (tmp_path / "nsd.zarr").exists()
    assert seconds < 10, f"{seconds:.1f} s"
