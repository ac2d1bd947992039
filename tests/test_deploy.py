"""A real multi-process deployment: `dask scheduler` + two `dask worker` processes on 127.0.0.1,
and `fmri2img demo --cluster tcp://...` against them.

:func:`dask_processes` is shared with the fault tests.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest

BIN = Path(sys.executable).parent
#: quiet subprocesses that still say why they failed
ENV = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning", "PYTHONUNBUFFERED": "1"}


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group started for ``proc`` (it and its children) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextmanager
def dask_processes(tmp_path: Path, n_workers: int, *, worker_args: tuple = ()) -> Iterator[dict]:
    """`dask scheduler` on 127.0.0.1 (free ports) and ``n_workers`` `dask worker` processes.

    Yields ``{"address": ..., "scheduler": Popen, "workers": [Popen], "scheduler_file": path}``;
    every process is killed on exit.
    """
    scheduler_file = tmp_path / "scheduler.json"
    logs = tmp_path / "dask-logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path,
                                start_new_session=True)
        out.close()
        procs.append(proc)
        return proc

    try:
        scheduler = start("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                        "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)])
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {(logs / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but give the writer a moment
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [start(f"worker-{i}", [str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file),
                                         "--nthreads", "1", "--host", "127.0.0.1", "--memory-limit", "3GiB",
                                         "--name", f"w{i}", *worker_args])
                   for i in range(n_workers)]
        _wait_for_workers(address, n_workers)
        yield {"address": address, "scheduler": scheduler, "workers": workers, "scheduler_file": scheduler_file,
               "logs": logs}
    finally:
        for proc in reversed(procs):
            kill_group(proc)


def _wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=120)


@pytest.mark.slow
def test_scheduler_processes_bind_to_loopback(tmp_path):
    from distributed import Client

    with dask_processes(tmp_path, 1) as procs:
        assert urlparse(procs["address"]).hostname == "127.0.0.1"
        with Client(procs["address"], timeout="30s") as client:
            workers = client.scheduler_info()["workers"]
            assert [urlparse(a).hostname for a in workers] == ["127.0.0.1"]
            assert urlparse(client.dashboard_link).hostname == "127.0.0.1"


@pytest.mark.slow
def test_demo_on_a_scheduler_and_two_worker_processes(tmp_path):
    workdir = tmp_path / "demo"
    with dask_processes(tmp_path, 2) as procs:
        run = subprocess.run(
            [sys.executable, "-m", "fmri2img.cli.main", "demo", "--workdir", str(workdir), "--cluster", procs["address"],
             "--no-progress"],
            capture_output=True, text=True, env=ENV, timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "fmri2img demo finished" in run.stdout
        # the tasks ran on the two worker processes, not in the CLI's process
        from distributed import Client

        with Client(procs["address"], timeout="30s") as client:
            def executed(dask_worker):
                return len(dask_worker.data) + dask_worker.state.transition_counter

            counts = client.run(executed)
        assert len(counts) == 2 and all(c > 0 for c in counts.values()), counts
    status = subprocess.run([sys.executable, "-m", "fmri2img.cli.main", "status", str(workdir / "store.zarr"), "--json"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    groups = {r["group"] for r in rows}
    assert {"stimuli", "subjects/subj01/betas", "subjects/subj02/train", "features/pixels"} <= groups, groups
    assert any(g.startswith("predictions/") for g in groups), groups
    incomplete = [r for r in rows if not r["total"] or r["done"] != r["total"]]
    assert not incomplete, incomplete
