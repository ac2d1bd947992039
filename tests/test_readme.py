"""The README's configuration examples are valid configurations."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fmri2img import config as cfg

README = Path(__file__).resolve().parents[1] / "README.md"


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_toml_blocks())))
def test_readme_toml_blocks_validate(index):
    config = cfg.loads(_toml_blocks()[index])
    assert config.store.url
    assert cfg.loads(cfg.dumps(config)).to_dict().keys() == config.to_dict().keys()


def _cluster_recipe() -> list[str]:
    """The `dask scheduler` / `dask worker` lines of the README's manual-cluster recipe."""
    lines = [line.strip().rstrip("&").strip() for block in re.findall(r"```bash\n(.*?)```", README.read_text(),
                                                                      flags=re.S) for line in block.splitlines()]
    return [line for line in lines if line.startswith(("dask scheduler", "dask worker"))]


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    import psutil

    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.pid in pids and c.status == psutil.CONN_LISTEN:
            out.append((c.pid, c.laddr.ip, c.laddr.port))
    return out


@pytest.mark.slow
def test_readme_manual_cluster_listens_on_loopback_only(tmp_path):
    """Run the recipe (on free ports): every listening socket of scheduler, nannies and workers is 127.0.0.1."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time

    import psutil

    recipe = _cluster_recipe()
    assert len(recipe) == 2 and all("--host 127.0.0.1" in line for line in recipe)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    dask = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"
    procs = []
    try:
        for line in recipe:
            args = line.replace("8786", str(ports[0])).replace("8787", str(ports[1])).split()
            if args[1] == "scheduler" and "--port" not in args:  # its default port is 8786
                args += ["--port", str(ports[0])]
            procs.append(subprocess.Popen([dask, *args[1:]], cwd=tmp_path, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1)
        deadline, found = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            pids = {p.pid for p in procs}
            pids |= {c.pid for p in procs for c in psutil.Process(p.pid).children(recursive=True)}
            found = _listening(pids)
            # scheduler (comm + dashboard), 2 nannies, 2 workers (comm + dashboard each)
            if len(found) >= 8:
                break
            time.sleep(1)
        assert len(found) >= 8, found
        assert {ip for _, ip, _ in found} == {"127.0.0.1"}, found
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
