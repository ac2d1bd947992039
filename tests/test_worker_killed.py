"""A task that kills its worker again and again (issue 23, point 6): the error says which task, on which
worker, the likely cause (the worker's memory limit against the task's expected size) and the fix (more
memory per worker, or the option that makes tasks smaller), as one line on the console."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest

from fmri2img.cluster.errors import WorkerKilled
from fmri2img.cluster.faults import killed_worker


def _killed(limit):
    from distributed.scheduler import KilledWorker

    worker = types.SimpleNamespace(address="tcp://10.0.0.7:40123", name="slurm-3-0", memory_limit=limit)
    return KilledWorker("reconstruct-subj01-bd-images-0003-1a2b3c4d", worker, 3)


def test_message_names_task_worker_memory_and_fix():
    err = killed_worker(_killed(4 * 2**30), stage="reconstruct-subj01-bd", label="images-0003", nbytes=6 * 2**30,
                        option="[reconstruct] images_per_task (now 8)")
    text = str(err)
    assert isinstance(err, WorkerKilled)
    assert "stage reconstruct-subj01-bd: task images-0003 killed its worker 4 times" in text
    assert "tcp://10.0.0.7:40123 (name slurm-3-0)" in text
    assert "the worker's limit is 4.0 GiB and this task is expected to need about 6.0 GiB" in text
    assert "memory_limit" in text and "memory=32GB per job" in text
    assert "lower [reconstruct] images_per_task (now 8)" in text


def test_without_a_limit_or_an_estimate_it_says_so():
    text = str(killed_worker(_killed(0), stage="features-vdvae"))
    assert "reconstruct-subj01-bd-images-0003-1a2b3c4d" in text and "no memory limit" in text
    text = str(killed_worker(_killed(2**30), stage="features-vdvae"))
    assert "1.0 GiB (this task's size is not estimated)" in text and "lower" not in text
    assert killed_worker(ValueError("x"), stage="s") is None


HOG = """
import sys, time, types
import numpy as np
import fmri2img.cli.main as cli

def hog(n):
    block = np.ones(n, np.uint8)  # touched pages: the worker's memory grows past its limit
    time.sleep(20)
    return int(block[0])

def cmd_hog(args):
    from fmri2img.cli.runtime import cluster_from
    from fmri2img.pipeline.tasks import Task, run_tasks  # after the command set up logging, as the stages are

    ns = types.SimpleNamespace(cluster="local", workers=1, cluster_option=[("memory_limit", "300MB")])
    with cluster_from(ns, outputs=sys.argv[-1]) as client:
        run_tasks([Task("rows-0000", hog, (700_000_000,), nbytes=700_000_000)], stage="hog", client=client,
                  progress=False, block_option="[hog] rows_per_task (now 9)")
    return 0

if __name__ == "__main__":  # worker processes start by importing this file
    cli.COMMANDS["status"] = cmd_hog
    sys.exit(cli.main(sys.argv[1:-1]))
"""


@pytest.mark.slow
def test_a_task_that_exhausts_its_worker_is_one_line_naming_the_fix(tmp_path):
    script = tmp_path / "hog.py"
    script.write_text(textwrap.dedent(HOG))
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    proc = subprocess.run([sys.executable, str(script), "status", "x", str(tmp_path / "outputs")], capture_output=True,
                          text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("Dask dashboard:")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: stage hog: task rows-0000 killed its worker 2 times"), \
        proc.stderr
    assert "the worker's limit is 286.1 MiB and this task is expected to need about 667.6 MiB" in lines[0]
    assert "lower [hog] rows_per_task (now 9)" in lines[0]
    log = (tmp_path / "outputs" / "cluster-logs" / "dask.log").read_text()
    assert "exceeded 95% memory budget" in log and "marked as failed because 2 workers died" in log
