"""A one-node SLURM on 127.0.0.1 for the test suite, started by hand (no systemd).

:func:`install_reason` installs Debian's ``slurm-wlm`` and ``munge`` where it can
(root and apt-get, as on CI) and otherwise says why it cannot; :class:`SlurmLab`
starts ``munged``, ``slurmctld`` and ``slurmd`` with every file (key, sockets,
state, spool, logs, slurm.conf) in one temporary directory and free ports, and
:meth:`SlurmLab.stop` ends exactly the processes it started, by PID.

Usable by hand too (the commands then see this SLURM through ``SLURM_CONF``)::

    python -m tests.slurmlab /tmp/slurm    # prints the exports; Ctrl-C stops it
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Debian packages that provide the daemons and the client commands
PACKAGES = ("slurm-wlm", "munge")
#: the programs the lab runs or the tests call
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def install_reason(timeout: float = 900) -> str | None:
    """Install SLURM and munge if needed; ``None`` when they are there, else why not (a skip reason)."""
    if not missing_programs():
        return None
    if os.name != "posix" or os.geteuid() != 0:
        return f"SLURM is not installed ({', '.join(missing_programs())} missing) and installing it needs root"
    if shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing_programs())} missing) and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    said = ""
    # package lists may be missing on a fresh machine: update only when the first try leaves programs
    # missing; a post-install script that fails (no init system) does not matter, the programs do
    for cmd in (install, ["apt-get", "update", "-qq"], install):
        if not missing_programs():
            return None
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        said = done.stderr.strip()[-300:] or said
    missing = missing_programs()
    return f"apt-get install {' '.join(PACKAGES)} left {missing} missing: {said}" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """``slurmd -C``'s description of this machine, addressed on loopback."""
    out = subprocess.run([_prog("slurmd"), "-C"], capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("NodeName="))
    return f"{line} NodeAddr=127.0.0.1 NodeHostname={_host()} State=UNKNOWN"


def _host() -> str:
    """This machine's short host name (what slurmctld compares SlurmctldHost with)."""
    return socket.gethostname().split(".")[0]


def _prog(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmLab:
    """munged + slurmctld + slurmd under ``root``; ``env`` points SLURM's commands at it."""

    root: Path
    pids: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    node: str = ""
    partition: str = "debug"

    def start(self, timeout: float = 120) -> "SlurmLab":
        """Start the three daemons and wait until the node is idle; stops them again on failure."""
        try:
            self._start_munge()
            self._write_conf()
            self._daemon("slurmctld", [_prog("slurmctld"), "-D", "-i"])
            self._daemon("slurmd", [_prog("slurmd"), "-D", "-N", self.node])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)  # munged refuses a socket directory others can write to
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.socket = d / "munge.socket"
        self._daemon("munged", [_prog("munged"), "-F", "--force", f"--socket={self.socket}", f"--key-file={key}",
                                f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
                                f"--seed-file={d / 'munged.seed'}"])
        self._wait(lambda: self.socket.exists(), 30, "munged did not create its socket", d / "munged.log")

    def _write_conf(self) -> None:
        node_line = _node_line()
        self.node = node_line.split()[0].split("=", 1)[1]
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        r = self.root
        conf = f"""\
ClusterName=fmri2img-test
SlurmctldHost={_host()}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
{node_line}
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf = r / "slurm.conf"
        self.conf.write_text(conf)
        self.env = {"SLURM_CONF": str(self.conf)}

    def _daemon(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.stdout", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                start_new_session=True)
        log.close()
        self.pids[name] = proc

    def _wait(self, ready, timeout: float, what: str, log: Path | None = None) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            dead = [n for n, p in self.pids.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited (code {self.pids[dead[0]].returncode}): {self.tail(dead[0])}")
            if ready():
                return
            time.sleep(0.5)
        tail = log.read_text()[-800:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} within {timeout:.0f} s {tail}")

    def _wait_idle(self, timeout: float) -> None:
        def idle() -> bool:
            out = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip()
            return out.startswith("idle")

        self._wait(idle, timeout, "the SLURM node did not become idle", self.root / "log" / "slurmctld.log")

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM command against this lab."""
        return subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout,
                              check=check)

    def tail(self, name: str, n: int = 800) -> str:
        for path in (self.root / "log" / f"{name}.log", self.root / f"{name}.stdout", self.root / name / f"{name}.log"):
            if path.exists() and path.stat().st_size:
                return path.read_text(errors="replace")[-n:]
        return ""

    def jobs(self) -> list[str]:
        """``"ID STATE"`` of every job slurmctld still knows."""
        out = self.run(["squeue", "-h", "-o", "%i %T"], check=False).stdout
        return [x.strip() for x in out.splitlines() if x.strip()]

    def cancel_all(self) -> None:
        self.run(["scancel", "--full", "-u", str(os.getuid())], check=False)

    def stop(self) -> None:
        """Cancel the lab's jobs and end the daemons it started (their PIDs, TERM then KILL)."""
        if "slurmctld" in self.pids and self.pids["slurmctld"].poll() is None:
            try:
                self.cancel_all()
            except Exception:  # noqa: BLE001 - stopping must go on
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.pids.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def main(argv: list[str]) -> int:  # pragma: no cover - a manual tool
    root = Path(argv[0] if argv else "/tmp/fmri2img-slurm").resolve()
    root.mkdir(parents=True, exist_ok=True)
    reason = install_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    lab = SlurmLab(root).start()
    print(f"export SLURM_CONF={lab.conf}\n# daemons: {({n: p.pid for n, p in lab.pids.items()})}; Ctrl-C stops")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
