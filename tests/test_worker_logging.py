"""The workers' logging (issue 23, points 1 and 5): redacted like the command's, as verbose as the command;
a local cluster's worker records stay off the console at the default verbosity."""
from __future__ import annotations

import logging

import pytest

from fmri2img.cluster import workerlog
from fmri2img.storage import secrets

SECRET = "fmri2img-worker-secret-p2x9"  # follows no pattern: only the literal-value redaction catches it


def _log_on_worker(level: int, text: str) -> None:
    logging.getLogger("fmri2img.pipeline.tasks").log(level, "storage options %s", text)
    logging.getLogger("distributed.worker").warning("a worker warning with %s", text)


def test_the_plugin_is_picklable_and_its_repr_holds_no_secret():
    import pickle

    plugin = workerlog.WorkerLogging(2, [SECRET], console=True, log_file="/tmp/x.log")
    assert SECRET not in repr(plugin)
    back = pickle.loads(pickle.dumps(plugin))
    assert back.known == [SECRET] and back.level == 2


@pytest.mark.slow
def test_local_worker_records_are_redacted_and_quiet_by_default(tmp_path, capfd):
    from fmri2img.cluster import connect
    from fmri2img.cluster.errors import close_quietly

    secrets.add_secrets([SECRET])
    previous = logging.getLogger("fmri2img").level
    logging.getLogger("fmri2img").setLevel(logging.WARNING)  # the default verbosity (an earlier main() may differ)
    try:
        client = connect("local", n_workers=1, processes=True, dashboard_address="127.0.0.1:0", logs=str(tmp_path),
                         command=True)
        try:
            client.submit(_log_on_worker, logging.WARNING, f"{{'secret': '{SECRET}'}}", pure=False).result()
        finally:
            close_quietly(client)
            workerlog.undo()
    finally:
        logging.getLogger("fmri2img").setLevel(previous)
    err = capfd.readouterr().err
    assert SECRET not in err and "a worker warning" not in err  # off the console at the default verbosity
    log = (tmp_path / workerlog.LOG_FILE).read_text()
    assert "a worker warning with {'secret': '***'}" in log and SECRET not in log


@pytest.mark.slow
def test_at_v_worker_records_show_on_the_console_redacted(tmp_path, capfd):
    from fmri2img.cluster import connect
    from fmri2img.cluster.errors import close_quietly

    secrets.add_secrets([SECRET])
    previous = logging.getLogger("fmri2img").level
    logging.getLogger("fmri2img").setLevel(logging.INFO)  # what -v sets
    try:
        client = connect("local", n_workers=1, processes=True, dashboard_address="127.0.0.1:0", logs=str(tmp_path),
                         command=True)
        try:
            client.submit(_log_on_worker, logging.INFO, f"key={SECRET}", pure=False).result()
        finally:
            close_quietly(client)
            workerlog.undo()
    finally:
        logging.getLogger("fmri2img").setLevel(previous)
    err = capfd.readouterr().err
    assert "a worker warning with key=***" in err and SECRET not in err
    assert "storage options key=***" in err  # fmri2img's INFO on the worker, as -v shows the command's


@pytest.mark.slow
def test_a_reached_scheduler_keeps_no_plugin_after_the_command(tmp_path):
    import types

    from distributed import Client, LocalCluster

    from fmri2img.cli.runtime import cluster_from

    def plugins(dask_scheduler=None):
        return sorted(dask_scheduler.worker_plugins)

    existing = LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0")
    with existing as cluster, Client(cluster) as owner:
        args = types.SimpleNamespace(cluster=cluster.scheduler_address, workers=None, cluster_option=[])
        with cluster_from(args) as client:
            assert workerlog.WorkerLogging.name in client.run_on_scheduler(plugins)
            assert client.submit(abs, -3).result() == 3
        assert workerlog.WorkerLogging.name not in owner.run_on_scheduler(plugins)
