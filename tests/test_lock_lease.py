"""The store's lock on an object store is a lease (issue 23, point 4), tested against a moto S3 server:
two runs started together, exactly one runs and the other is refused naming it; the holder renews its
lease while it lives; after a SIGKILL the lock is reported live, then stale (owner and last renewal),
and a run takes it over only with --take-over-stale-lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fmri2img.cli.main import main
from fmri2img.storage import lock
from fmri2img.storage.store import Store
from tests.cloud_helpers import make_bucket, s3_options
from tests.minifixtures import mini_nsd  # noqa: F401  (mini_nsd is a fixture)

LEASE_S = 1.0  # the holders' lease period here (30 s by default)

HOLDER = """
import json, os, socket, sys, time
socket.gethostname = lambda: "node-" + sys.argv[4]  # a run on another machine (on this one a dead pid is seen at once)
from fmri2img.storage import identity, lock
from fmri2img.storage.store import Store

url, options, go, name = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
store = Store(url, options)
identity.claim(store)  # as the runner does before it takes the lock
print("READY", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
try:
    with lock.held(store, f"fmri2img run {name}.toml"):
        print("HOLDING", flush=True)
        time.sleep(600)
except lock.StoreLockedError as exc:
    print("REFUSED", exc, flush=True)
    sys.exit(3)
"""


@pytest.fixture()
def s3_store(s3_endpoint, tmp_path):
    options = s3_options(s3_endpoint)
    url = f"s3://lease-{tmp_path.name.lower().replace('_', '-')[-40:]}/store.zarr"
    make_bucket(url, options)
    return url, options


def _holder(tmp_path: Path, url: str, options: dict, go: Path, name: str) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(HOLDER))
    env = {**os.environ, "FMRI2IMG_LOCK_LEASE_S": str(LEASE_S)}
    proc = subprocess.Popen([sys.executable, str(script), url, json.dumps(options), str(go), name],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.slow
def test_two_runs_started_together_exactly_one_holds_the_lock(s3_store, tmp_path):
    url, options = s3_store
    store = Store(url, options)
    for round_ in range(3):
        go = tmp_path / f"go-{round_}"
        a = _holder(tmp_path, url, options, go, "a")
        b = _holder(tmp_path, url, options, go, "b")
        try:
            go.touch()  # both acquire at once
            lines = {p.pid: p.stdout.readline().strip() for p in (a, b)}
            holding = [pid for pid, line in lines.items() if line == "HOLDING"]
            refused = [line for line in lines.values() if line.startswith("REFUSED")]
            assert len(holding) == 1 and len(refused) == 1, lines
            assert f"process {holding[0]}" in refused[0] and "is in use by" in refused[0]
            assert lock.read_holder(store)["pid"] == holding[0]
        finally:
            _stop(a, b)
        assert lock.unlock(store) is not None  # the killed holder's lock, for the next round


def _ingest(mini_nsd, url: str, options: dict, *extra: str) -> int:
    args = ["ingest", "--source", str(mini_nsd), "--store", url, "--subject", "1", "--sessions", "1-2",
            "--no-stimuli", "--cluster", "local", "--workers", "1", "--cluster-option", "processes=false",
            "--no-progress", *extra]
    for key, value in options.items():
        args += ["--store-option", f"{key}={value}"]
    return main(args)


@pytest.mark.slow
def test_a_killed_run_is_live_then_stale_then_taken_over_on_request(mini_nsd, s3_store, tmp_path, capsys):
    url, options = s3_store
    store = Store(url, options)
    holder = _holder(tmp_path, url, options, tmp_path / "go", "first")
    try:
        (tmp_path / "go").touch()
        assert holder.stdout.readline().strip() == "HOLDING"
        first = lock.read_holder(store)
        time.sleep(2.5 * LEASE_S)
        renewed = lock.read_holder(store)
        assert renewed["token"] == first["token"] and renewed["renewals"] >= 1 and renewed["renewed"] > first["renewed"]

        assert _ingest(mini_nsd, url, options) == 2  # a second run while the first lives: refused, naming it
        err = capsys.readouterr().err
        assert f"@node-first process {holder.pid}" in err and "fmri2img run first.toml" in err and "is in use by" in err
        assert "lease last renewed" in err

        holder.send_signal(signal.SIGKILL)
        holder.wait()
        killed_at = time.time()
        assert _ingest(mini_nsd, url, options) == 2  # just killed: the lease is not stale yet
        assert "is in use by" in capsys.readouterr().err

        time.sleep(max(0.0, killed_at + (lock.STALE_PERIODS + 1) * LEASE_S - time.time()))
        assert _ingest(mini_nsd, url, options) == 2  # stale: said so, with its owner and last renewal
        err = capsys.readouterr().err
        assert "lease is stale" in err and f"process {holder.pid}" in err and "--take-over-stale-lock" in err
        assert lock.read_holder(store)["token"] == first["token"]  # not taken over without the flag

        assert _ingest(mini_nsd, url, options, "--take-over-stale-lock") == 0  # the second run proceeds
        assert "subj01:" in capsys.readouterr().out
        assert lock.read_holder(store) is None
    finally:
        _stop(holder)


def test_status_says_who_holds_the_lock_and_whether_it_is_stale(tmp_path, capsys):
    from fmri2img.storage import identity

    store = Store(str(tmp_path / "s.zarr"))
    identity.claim(store)
    store.write_template("a", __import__("xarray").Dataset({"v": ("x", [1.0, 2.0])}),
                         [__import__("fmri2img.storage.store", fromlist=["Region"]).Region(0, "x", 0, 2, "all")])
    holder = {**lock.this_holder("fmri2img run other.toml"), "host": "node-9", "renewed": time.time() - 600}
    lock._write(store, holder)
    assert main(["status", store.url]) == 0
    out = capsys.readouterr().out
    assert "locked (stale: that run is most likely dead) by" in out and "node-9" in out and "s ago, every 30 s" in out
    with pytest.raises(lock.StoreLockedError, match="lease is stale"):
        lock.acquire(store)
    with lock.taking_over_stale():
        me = lock.acquire(store)
    assert lock.read_holder(store)["token"] == me["token"]
    lock.release(store, me)


@pytest.mark.parametrize("kind", ["local", "memory", "s3", "gs"])
def test_a_second_lock_is_refused_on_every_store_kind(kind, tmp_path, request):
    from fmri2img.storage import identity

    if kind == "s3":
        options = s3_options(request.getfixturevalue("s3_endpoint"))
        url = f"s3://lease-kinds-{os.getpid()}/s.zarr"
        make_bucket(url, options)
    elif kind == "gs":
        from tests.cloud_helpers import gcs_options

        options = gcs_options(request.getfixturevalue("gcs_endpoint"))
        url = f"gs://lease-kinds-{os.getpid()}/s.zarr"
        make_bucket(url, options)
    else:
        url, options = (str(tmp_path / "s.zarr"), {}) if kind == "local" else (f"memory://lease-{tmp_path.name}", {})
    store = Store(url, options)
    identity.claim(store)
    me = lock.acquire(store, "fmri2img run first.toml")
    with pytest.raises(lock.StoreLockedError, match="first.toml"):
        lock.acquire(store, "fmri2img run second.toml")
    assert lock.read_holder(store)["token"] == me["token"]
    lock.release(store, me)
    assert lock.read_holder(store) is None
