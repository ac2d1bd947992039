"""One writer per store, named when refused (issue 12 item 8)."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from fmri2img.cli.main import main
from fmri2img.config import Config, IngestConfig, SourceConfig, StoreConfig
from fmri2img.pipeline.runner import run
from fmri2img.storage import lock
from fmri2img.storage.store import Store
from tests import storecompare
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401  (mini_nsd is a fixture)


def _config(mini_nsd, url: str) -> Config:
    return Config(stages=["ingest"], store=StoreConfig(url), source=SourceConfig(str(mini_nsd)),
                  ingest=IngestConfig(subjects=[1], sessions=",".join(map(str, SESSIONS))))


def _plant_lock(store: Store, pid: int, host: str | None = None, command: str = "fmri2img run other.toml") -> None:
    holder = {**lock.this_holder(command), "pid": pid, "pid_started": lock._process_started(pid)}
    if host:
        holder["host"] = host
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    sync(store.zarr_store().set(lock.LOCK_KEY, default_buffer_prototype().buffer.from_bytes(lock._document(holder))))


@pytest.fixture()
def ingested(mini_nsd, tmp_path):
    store = Store(str(tmp_path / "store.zarr"))
    run(_config(mini_nsd, store.url), progress=False)
    assert lock.read_holder(store) is None  # released after the run
    return store


def test_a_second_run_is_refused_naming_the_holder_and_changes_nothing(mini_nsd, ingested, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _plant_lock(ingested, other.pid)
        before = storecompare.files(ingested.url)
        with pytest.raises(lock.StoreLockedError) as err:
            run(_config(mini_nsd, ingested.url), progress=False)
        message = str(err.value)
        assert f"process {other.pid}" in message and socket.gethostname() in message
        assert "fmri2img run other.toml" in message and f"fmri2img unlock {ingested.url}" in message
        assert storecompare.files(ingested.url) == before

        assert main(["unlock", ingested.url]) == 0
        assert f"process {other.pid}" in capsys.readouterr().out
        assert lock.read_holder(ingested) is None
        run(_config(mini_nsd, ingested.url), progress=False)
    finally:
        other.kill()
        other.wait()


def test_a_lock_from_a_dead_process_on_this_host_is_taken_over(mini_nsd, ingested, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant_lock(ingested, dead.pid)
    run(_config(mini_nsd, ingested.url), progress=False)
    assert "taking over the lock" in caplog.text
    assert lock.read_holder(ingested) is None


def test_a_lock_from_another_host_is_never_taken_over(mini_nsd, ingested):
    _plant_lock(ingested, 1, host="node-17.cluster")
    with pytest.raises(lock.StoreLockedError, match="node-17.cluster"):
        run(_config(mini_nsd, ingested.url), progress=False)


def test_the_lock_is_not_a_group_of_data(ingested):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _plant_lock(ingested, other.pid)
        assert not any(g.startswith("_lock") for g in ingested.list_groups())
        assert main(["status", ingested.url]) == 0
    finally:
        other.kill()
        other.wait()
