"""A real one-node SLURM (tests/slurmlab.py): the pipeline on batch-job workers equals a local run, and
each way a batch cluster fails ends in one clear error within the configured time.

The lab is installed (root + apt-get, as on CI) and started once for this module; every daemon it
started is stopped by PID afterwards, even when a test fails.  Without root or apt-get the module is
skipped with the reason; on CI (CI=true) a failed install fails instead of skipping.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401  (mini_nsd is a fixture)
from tests.slurmlab import SlurmLab, install_reason

#: every worker job: one core, loopback addresses, generous but bounded waits for a loaded 2-core machine
JOB = {"cores": 1, "memory": "2GB", "interface": "lo", "dashboard_address": "127.0.0.1:0"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = install_reason()
    if reason:
        if os.environ.get("CI") == "true" and os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"CI could not install SLURM: {reason}")
        pytest.skip(reason)
    lab = SlurmLab(tmp_path_factory.mktemp("slurm"))
    with pytest.MonkeyPatch.context() as mp:
        try:
            lab.start()
            mp.setenv("SLURM_CONF", str(lab.conf))
            yield lab
        finally:
            lab.stop()


def _cli_options(**options) -> list[str]:
    out = []
    for key, value in {**JOB, **options}.items():
        out += ["--cluster-option", f"{key}={value}"]
    return out


def _progress_note(line: str) -> bool:
    """A line the CLI prints on the way (log records with -v; by default stage lines and the dashboard link)."""
    return " INFO fmri2img" in line or line.startswith(("stage ", "Dask dashboard: "))


def _no_jobs_left(lab: SlurmLab, timeout: float = 60) -> list[str]:
    """The lab's jobs once cancelled ones have left the queue (a job is COMPLETING for a moment)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        jobs = lab.jobs()
        if not jobs:
            return []
        time.sleep(1)
    return lab.jobs()


def _config(tmp_path, mini_nsd, name: str) -> str:  # noqa: F811
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'stages = ["ingest", "features", "regress"]\n'
        f'[store]\nurl = "{tmp_path / name / "store.zarr"}"\n'
        f'[outputs]\nurl = "{tmp_path / name / "outputs"}"\n'
        f'[source]\nurl = "{mini_nsd}"\n'
        f'[ingest]\nsubjects = [1]\nsessions = "{SESSIONS[0]}-{SESSIONS[-1]}"\n'
        f'[features]\nimages_per_task = 32\n[features.extractors.pixels]\nside = 8\n'
        f'[regress.targets.pixels]\nalpha = 1000.0\ncalibration = "none"\n')
    return str(path)


@pytest.mark.slow
def test_pipeline_on_slurm_equals_local(slurm, mini_nsd, tmp_path, capsys):  # noqa: F811
    """ingest → features → regress of mini-NSD with workers as SLURM batch jobs: the same store as a local run,
    and the worker job's log under the run's outputs."""
    from fmri2img.cli.main import main
    from fmri2img.storage.store import Store
    from tests.storecompare import assert_same_arrays

    local, remote = _config(tmp_path, mini_nsd, "local"), _config(tmp_path, mini_nsd, "slurm")
    assert main(["run", local, "--cluster", "local", "--workers", "1", "--no-progress"]) == 0
    t0 = time.monotonic()
    code = main(["run", remote, "--cluster", "slurm", "--no-progress"]
                + _cli_options(walltime="00:20:00", worker_timeout=180))
    seconds = time.monotonic() - t0
    out = capsys.readouterr()
    assert code == 0, out.err
    print(f"slurm run: {seconds:.1f} s")
    assert_same_arrays(Store(str(tmp_path / "local" / "store.zarr")), Store(str(tmp_path / "slurm" / "store.zarr")))
    logs = sorted(p.name for p in (tmp_path / "slurm" / "outputs" / "cluster-logs").iterdir())
    assert logs and all(p.startswith("fmri2img-") for p in logs), logs
    assert any(p.endswith(".err") for p in logs)
    assert _no_jobs_left(slurm) == []


def test_bad_gres_is_one_error_line(slurm, mini_nsd, tmp_path):  # noqa: F811
    """gpus=1 on a cluster without GPUs: sbatch refuses the job; the command prints one `error:` line naming
    sbatch's message and the option to change, and exits at once (no tracebacks, no waiting)."""
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fmri2img.cli.main", "ingest", "--source", str(mini_nsd), "--store",
         str(tmp_path / "store.zarr"), "--subject", "1", "--cluster", "slurm", "--no-progress"]
        + _cli_options(gpus=1, worker_timeout=120),
        capture_output=True, text=True, timeout=300, env={**os.environ})
    seconds = time.monotonic() - t0
    print(f"bad gres: {seconds:.1f} s")
    lines = [x for x in done.stderr.strip().splitlines() if not _progress_note(x)]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("error: slurm cluster: sbatch refused the worker job: ")
    assert "Invalid generic resource (gres) specification" in lines[0] and "gpus=1" in lines[0]
    assert "--gres=gpu:1" in lines[0]
    assert "sinfo" in lines[0]
    assert seconds < 120  # the interpreter's start-up; the refusal itself is immediate
    assert _no_jobs_left(slurm) == []


def test_workers_that_never_arrive_time_out(slurm, mini_nsd, tmp_path, capsys):  # noqa: F811
    """A job that waits in the queue (here: --begin an hour from now) fails the run after worker_timeout,
    naming the job's state, squeue and the job-log directory under the outputs."""
    from fmri2img.cli.main import main

    t0 = time.monotonic()
    code = main(["ingest", "--source", str(mini_nsd), "--store", str(tmp_path / "store.zarr"), "--subject", "1",
                 "--cluster", "slurm", "--no-progress"]
                + _cli_options(job_extra_directives="--begin=now+1hour", worker_timeout=15))
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    print(f"no worker: {seconds:.1f} s")
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip() and not _progress_note(x)]
    assert len(lines) == 1 and lines[0].startswith("error: slurm cluster: no Dask worker connected within "), err
    assert "PENDING (BeginTime)" in err and "`squeue -j " in err
    assert str(tmp_path / "outputs" / "cluster-logs") in err
    assert 15 <= seconds < 75
    assert _no_jobs_left(slurm) == []


def test_a_worker_that_cannot_start_fails_at_once_with_its_log(slurm, tmp_path):
    """A job whose worker cannot start (here: a wrong python on the nodes) ends at once; the run fails then,
    not after worker_timeout, quoting the end of the job's log."""
    from fmri2img.cluster import ClusterError, connect

    t0 = time.monotonic()
    with pytest.raises(ClusterError) as info:
        connect("slurm", **JOB, python="/nonexistent/python", worker_timeout=300, log_directory=str(tmp_path))
    seconds = time.monotonic() - t0
    message = str(info.value)
    print(f"worker cannot start: {seconds:.1f} s")
    assert message.startswith("slurm cluster: worker job ") and "ended before its Dask worker connected" in message
    assert "/nonexistent/python: No such file or directory" in message and "check python" in message
    assert str(tmp_path / "fmri2img-") in message
    assert seconds < 60  # the batch system is asked every 5 s; worker_timeout (300 s) is not waited for
    assert _no_jobs_left(slurm) == []


def test_walltime_shorter_than_a_task_fails_clearly(slurm, tmp_path):
    """A 1-minute walltime and a task that needs longer: the job ends at its limit before any task finished,
    and the run fails naming the walltime and the job's log (which says why it ended)."""
    from fmri2img.cluster import ClusterError, connect
    from fmri2img.cluster.errors import close_quietly
    from fmri2img.pipeline.tasks import Task, run_tasks

    client = connect("slurm", **JOB, walltime="1", worker_timeout=120, log_directory=str(tmp_path / "logs"))
    try:
        t0 = time.monotonic()
        with pytest.raises(ClusterError) as info:
            run_tasks([Task("long", time.sleep, (600,))], stage="walltime", client=client, progress=False)
        seconds = time.monotonic() - t0
    finally:
        close_quietly(client)
    message = str(info.value)
    print(f"walltime: {seconds:.1f} s; {message}")
    assert "\n" not in message
    assert message.startswith("slurm cluster: worker job ") and "before any task finished" in message
    assert "DUE TO TIME LIMIT" in message and "walltime '1'" in message and "raise walltime" in message
    assert str(tmp_path / "logs" / "fmri2img-") in message
    assert seconds < 240  # SLURM checks limits every 30 s and gives the job KillWait (5 s here)
    assert _no_jobs_left(slurm) == []


def test_a_lost_job_is_replaced_and_the_run_completes(slurm, tmp_path):
    """A fixed-size cluster whose job ends under running work (scancel, as a preemption would) gets a new job,
    and the run finishes with every result."""
    from fmri2img.cluster import connect
    from fmri2img.cluster.errors import close_quietly
    from fmri2img.pipeline.tasks import Task, run_tasks

    client = connect("slurm", **JOB, walltime="00:20:00", worker_timeout=120, log_directory=str(tmp_path / "logs"))
    watch = client.cluster._fmri2img_watch
    try:
        first = [r.job_id for r in watch.jobs.values()]

        def cancel_when_some_finished() -> None:
            t0 = time.monotonic()
            while watch._progress.finished < 2 and time.monotonic() - t0 < 120:
                time.sleep(0.2)
            slurm.run(["scancel", *first])

        killer = threading.Thread(target=cancel_when_some_finished, daemon=True)
        killer.start()
        t0 = time.monotonic()
        results = run_tasks([Task(f"t{i}", _slow_square, (i,)) for i in range(10)], stage="lost", client=client,
                            progress=False)
        seconds = time.monotonic() - t0
        killer.join(timeout=5)
    finally:
        close_quietly(client)
    print(f"lost job replaced: {seconds:.1f} s, jobs {[r.job_id for r in watch.jobs.values()]}")
    assert results == [i * i for i in range(10)]
    assert watch.failure is None
    assert len(watch.jobs) == 2 and first[0] not in [r.job_id for r in watch.jobs.values() if not r.handled]
    assert _no_jobs_left(slurm) == []


def _slow_square(i: int) -> int:
    time.sleep(1.5)
    return i * i


def test_adaptive_cluster_scales_from_zero_and_its_failures_end_the_stage(slurm, tmp_path):
    """minimum = 0: no job until work arrives; then jobs come and the work is done.  A job the scaler submits
    and sbatch refuses, or one that never starts, ends the running stage with a one-line error (not a wait
    forever)."""
    from fmri2img.cluster import ClusterError, connect
    from fmri2img.cluster.errors import close_quietly
    from fmri2img.pipeline.tasks import Task, run_tasks

    client = connect("slurm", **JOB, minimum=0, maximum=1, walltime="00:10:00", worker_timeout=120,
                     log_directory=str(tmp_path / "logs"))
    try:
        assert slurm.jobs() == []
        assert run_tasks([Task(f"t{i}", abs, (-i,)) for i in range(3)], stage="adaptive", client=client,
                         progress=False) == [0, 1, 2]
    finally:
        close_quietly(client)
    client = connect("slurm", **JOB, minimum=0, maximum=1, gpus=1, worker_timeout=120)
    try:
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=r"^slurm cluster: sbatch refused the worker job: .*gres.*gpus=1"):
            run_tasks([Task("t", abs, (-1,))], stage="adaptive-gpu", client=client, progress=False)
        seconds = time.monotonic() - t0
    finally:
        close_quietly(client)
    print(f"adaptive refused job: {seconds:.1f} s")
    assert seconds < 60
    client = connect("slurm", **JOB, minimum=0, maximum=1, job_extra_directives=["--begin=now+1hour"],
                     worker_timeout=10)
    try:
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=r"^slurm cluster: no Dask worker connected within 1\d s .*"
                                               r"PENDING \(BeginTime\)"):
            run_tasks([Task("t", abs, (-1,))], stage="adaptive-wait", client=client, progress=False)
        seconds = time.monotonic() - t0
    finally:
        close_quietly(client)
    print(f"adaptive, no worker: {seconds:.1f} s")
    assert 10 <= seconds < 60
    assert _no_jobs_left(slurm) == []


@pytest.mark.slow
def test_worker_logs_are_redacted_at_vv(slurm, mini_nsd, s3_endpoint, tmp_path, capfd):  # noqa: F811
    """Issue 23, point 5: with -vv the batch-job workers log every library's DEBUG lines (botocore's request
    headers among them) into their job logs; a credential given in the storage options appears in none of
    them, nor on the console: the workers' records go through the same redaction as the command's."""
    from fmri2img.cli.main import main
    from tests.cloud_helpers import make_bucket

    key_id, secret = "fmri2img-slurm-key-id-4hq8", "fmri2img-slurm-secret-7vd3"  # no AWS pattern: literals only
    options = {"key": key_id, "secret": secret, "endpoint_url": s3_endpoint}
    make_bucket("s3://slurm-redact", options)
    logs = tmp_path / "logs"
    code = main(["-vv", "ingest", "--source", str(mini_nsd), "--store", "s3://slurm-redact/store.zarr",
                 "--subject", "1", "--sessions", "1-2", "--no-stimuli", "--cluster", "slurm", "--no-progress",
                 *[a for k, v in options.items() for a in ("--store-option", f"{k}={v}")]]
                + _cli_options(walltime="00:20:00", worker_timeout=180, log_directory=str(logs)))
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    files = sorted(logs.iterdir())
    text = "".join(p.read_text(errors="replace") for p in files)
    assert any(p.name.endswith(".err") for p in files) and "DEBUG" in text
    assert "botocore" in text and "'Authorization': ***" in text, text[-3000:]  # emitted at -vv, and redacted
    assert key_id not in text and secret not in text
    assert key_id not in out + err and secret not in out + err
    assert _no_jobs_left(slurm) == []
