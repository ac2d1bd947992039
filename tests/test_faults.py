"""Fault tolerance of a stage (ingest on the tiny mini-NSD), checked against an uninterrupted serial run.

- a worker process killed while it executes a region: the stage finishes, the store is identical;
- the whole run SIGKILLed mid-stage: the rerun skips the finished regions, the store is identical;
- the scheduler killed mid-stage: one clear error, and a rerun on a fresh cluster completes identically.

Region tasks of the tiny fixture take milliseconds, so "mid-stage" is made certain, not lucky:
the kill is triggered by the task itself (a worker plugin), or the session tasks are slowed by a
wrapper (a driver script / a worker preload) so that the test can kill between two regions.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
from distributed.diagnostics.plugin import WorkerPlugin

from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401  (mini_nsd is a fixture)
from tests.test_deploy import ENV, dask_processes, kill_group

BETAS = "subjects/subj01/betas"
#: slows every session task by DELAY seconds (imported by the driver script and by worker preloads)
SLOW_SESSIONS = """
import time
import fmri2img.pipeline.ingest.nsd as _ingest

# idempotent: dask imports a preload module more than once
_real = getattr(_ingest.ingest_session, "__wrapped__", _ingest.ingest_session)


def slow_ingest_session(*args, **kwargs):
    time.sleep({delay})
    return _real(*args, **kwargs)


slow_ingest_session.__wrapped__ = _real
_ingest.ingest_session = slow_ingest_session
"""
DRIVER = """
import sys

if __name__ == "__main__":  # worker processes are spawned: they re-import this file
    sys.path.insert(0, {here!r})
    import slow_sessions  # noqa: F401  (slows the session tasks)
    from fmri2img.cli.main import main

    sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def reference(mini_nsd, tmp_path_factory):
    """An uninterrupted, serial ingest of subject 1."""
    store = Store(str(tmp_path_factory.mktemp("reference") / "store.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    return store


def assert_same_store(store: Store, reference: Store) -> None:
    """Every group holds identical data (attributes aside: they record times and configurations)."""
    groups = reference.list_groups()
    assert store.list_groups() == groups
    for group in groups:
        got = store.open_dataset(group).drop_attrs().load()
        want = reference.open_dataset(group).drop_attrs().load()
        xr.testing.assert_identical(got, want)
        assert store.is_complete(group), group


def _ingest_args(root: Path, store: str, cluster: str) -> list[str]:
    return ["ingest", "--source", str(root), "--store", store, "--subject", "1", "--sessions", "1-4",
            "--cluster", cluster, "--workers", "1", "--no-progress"]


def _wait_for_regions(store: Store, proc: subprocess.Popen, minimum: int = 1, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, total = store.progress(BETAS)
        if done >= minimum:
            return done
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before a region was recorded: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no region of {BETAS} recorded within {timeout} s")


def _write_slow_sessions(tmp_path: Path, delay: float) -> Path:
    (tmp_path / "slow_sessions.py").write_text(SLOW_SESSIONS.format(delay=delay))
    return tmp_path / "slow_sessions.py"


# -- a worker dies -------------------------------------------------------------------------------

class KillOnce(WorkerPlugin):
    """Worker plugin: SIGKILL this worker process when it starts executing ``target`` (once per marker file)."""

    name = "fmri2img-test-kill-once"

    def __init__(self, target: str, marker: str):
        self.target, self.marker = target, marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith(self.target):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return  # the rerun of the task on a fresh worker
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_worker_killed_mid_stage_the_stage_finishes_identically(mini_nsd, reference, tmp_path):
    import cloudpickle

    from fmri2img.cluster import connect

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests
    plugin = KillOnce("ingest-subj01-session-03", str(tmp_path / "k"))
    client = connect("local", n_workers=2, processes=True, dashboard_address="127.0.0.1:0")
    try:
        client.register_plugin(plugin)
        before = set(client.run(os.getpid).values())
        store = Store(str(tmp_path / "store.zarr"))
        summary = ingest(store, Source(str(mini_nsd)), 1, SESSIONS, client=client, progress=False)
        killed = int((tmp_path / "k").read_text())
        assert killed in before  # a worker really died while it executed session 03 ...
        client.wait_for_workers(2, timeout=60)
        after = set(client.run(os.getpid).values())
        assert killed not in after and len(after - before) == 1  # ... and its nanny started a new one
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        cluster = client.cluster
        client.close()
        cluster.close()
    assert summary["sessions_written"] == len(SESSIONS) and summary["sessions_skipped"] == 0
    assert_same_store(store, reference)


# -- the whole run dies ----------------------------------------------------------------------------

@pytest.mark.slow
def test_run_sigkilled_mid_stage_resumes_and_ends_identical(mini_nsd, reference, tmp_path):
    _write_slow_sessions(tmp_path, delay=1.5)
    driver = tmp_path / "slow_driver.py"
    driver.write_text(DRIVER.format(here=str(tmp_path)))
    url = str(tmp_path / "store.zarr")
    store = Store(url)
    proc = subprocess.Popen([sys.executable, str(driver), *_ingest_args(mini_nsd, url, "local")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    try:
        _wait_for_regions(store, proc)
    finally:
        kill_group(proc, signal.SIGKILL)  # the CLI, its scheduler and its worker processes
    assert proc.returncode == -signal.SIGKILL
    done, total = store.progress(BETAS)
    assert 1 <= done < total == len(SESSIONS), (done, total)

    rerun = subprocess.run([sys.executable, "-m", "fmri2img.cli.main", *_ingest_args(mini_nsd, url, "local")],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{total - done} sessions written, {done} already done" in rerun.stdout, rerun.stdout
    assert_same_store(store, reference)


# -- the scheduler dies ----------------------------------------------------------------------------

@pytest.mark.slow
def test_scheduler_gone_gives_one_clear_error_and_the_rerun_completes(mini_nsd, reference, tmp_path):
    preload = _write_slow_sessions(tmp_path, delay=1.5)
    url = str(tmp_path / "store.zarr")
    store = Store(url)
    with dask_processes(tmp_path, 1, worker_args=("--preload", str(preload))) as procs:
        cli = subprocess.Popen([sys.executable, "-m", "fmri2img.cli.main", *_ingest_args(mini_nsd, url, procs["address"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               start_new_session=True)
        try:
            _wait_for_regions(store, cli)
            kill_group(procs["scheduler"], signal.SIGKILL)
            out, err = cli.communicate(timeout=120)
        finally:
            kill_group(cli)
        for worker in procs["workers"]:  # a worker still finishing its region would race the rerun
            kill_group(worker)
    assert cli.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    message = errors[0]
    assert procs["address"] in message and "went away during stage ingest-subj01" in message
    assert "The store is resumable" in message and "rerun the same command" in message
    done, total = store.progress(BETAS)
    assert done < total

    rerun = subprocess.run([sys.executable, "-m", "fmri2img.cli.main", *_ingest_args(mini_nsd, url, "local")],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already done" in rerun.stdout
    assert_same_store(store, reference)
