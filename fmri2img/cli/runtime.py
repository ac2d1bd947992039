"""How an ``fmri2img`` command runs: its cluster, what it prints on the way, and how it ends.

- :func:`cluster_from`: the configured cluster's client, the dashboard line (the real port and
  its ssh tunnel), an orderly close after success and a quick, quiet one after a failure;
- :func:`stage_lines`: at the default verbosity the runner's stage lines show bare beside the
  progress bars (``-v`` shows the log instead);
- :func:`probe_configured`: a configured S3 store or source out of reach fails within seconds;
- :func:`os_error_line`, :func:`exit_promptly`: one error line, then the process ends.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger("fmri2img")


@contextmanager
def cluster_from(args, config_cluster=None, outputs: str | None = None) -> Iterator:
    """The configured cluster's client; batch-job logs go to ``<outputs>/cluster-logs``; a failure the
    cluster's watch reports replaces the cancellation it caused."""
    import dataclasses

    from fmri2img.cluster import cluster_failure, connect_section, dashboard_link, logs_under

    section = dataclasses.asdict(config_cluster) if config_cluster else {}
    if args.cluster:
        section["spec"] = args.cluster
    if args.workers:
        section["n_workers"] = args.workers
    section["options"] = {**(section.get("options") or {}), **dict(args.cluster_option)}
    # command=True: at the default verbosity the cluster's records go to <outputs>/cluster-logs/dask.log
    client = connect_section(section, logs=logs_under(outputs) if outputs else None, command=True)
    link = dashboard_link(client)
    if link:
        print(f"Dask dashboard: {link}{tunnel_hint(link)}", file=sys.stderr)
    ok = False
    from fmri2img.storage.lock import taking_over_stale

    try:
        with taking_over_stale(bool(getattr(args, "take_over_stale_lock", False))):  # the runner's lock
            yield client
        ok = True
    except BaseException:
        failure = cluster_failure(client)
        if failure is None:
            raise
        raise failure from None
    finally:
        from fmri2img.cluster.workerlog import undo, unregister

        if ok:
            unregister(client)  # a scheduler this command only reached keeps no plugin of ours
        close_cluster(client, orderly=ok)
        undo()  # the console as it was (commands run in-process: tests, notebooks)


#: seconds a local cluster's workers get to end on their own after a successful command
ORDERLY_CLOSE_S = 60


def close_cluster(client, *, orderly: bool) -> None:
    """Close ``client`` and the cluster it owns.

    After a successful command a local cluster is closed in order: its workers get
    :data:`ORDERLY_CLOSE_S` seconds to end (a loaded machine can take more than the nanny's
    default 4 s, after which it kills them with a warning per worker).  After a failure the
    close is quick (the failure's own error line says what happened) and the nannies'
    "killing" warnings are not shown.
    """
    from fmri2img.cluster.errors import close_quietly

    cluster = getattr(client, "cluster", None)
    if orderly and cluster is not None and getattr(cluster, "workers", None):
        import asyncio

        async def _close_workers() -> None:  # each nanny waits up to its timeout before it kills
            await asyncio.gather(*(w.close(timeout=ORDERLY_CLOSE_S) for w in list(cluster.workers.values())),
                                 return_exceptions=True)

        try:
            cluster.sync(_close_workers)
        except Exception as exc:  # noqa: BLE001 - the close below still ends everything
            logger.debug("closing the workers: %s", exc)
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        close_quietly(client)
    finally:
        nanny.setLevel(level)


def tunnel_hint(link: str) -> str:
    """For a dashboard on this machine's loopback: the ssh tunnel that shows it elsewhere, with its real port."""
    from urllib.parse import urlsplit

    parts = urlsplit(link)
    if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
        return ""
    return f" (from another machine: ssh -L {parts.port}:localhost:{parts.port} THIS-HOST)"


def probe_configured(path: str, stages: str | None) -> None:
    """A configured store or ingest source out of reach: one error line within seconds (see neterrors.probe).

    Reads only the TOML's ``[store]`` and ``[source]`` tables; anything unreadable is left to the
    configuration's own checks, which follow.
    """
    import tomllib

    from fmri2img.storage.neterrors import probe

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        wanted = [s for s in stages.split(",") if s] if stages else list(raw.get("stages") or ["ingest"])
        sections = (["source"] if "ingest" in wanted else []) + ["store"]
        targets = [(str(raw[k]["url"]), dict(raw[k].get("storage_options") or {})) for k in sections
                   if isinstance(raw.get(k), dict) and raw[k].get("url")]
    except (OSError, ValueError, TypeError, KeyError):
        return
    for url, options in targets:
        probe(url, options)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path, what happened and what to do."""
    from fmri2img.storage.urls import redact

    path = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    fix = {
        FileExistsError: "a file is where a directory is needed: choose another path or move that file",
        NotADirectoryError: "a part of the path is a regular file, not a directory: choose another path",
        IsADirectoryError: "a directory is where a file is expected: give the file's path",
        FileNotFoundError: "check the path",
        PermissionError: "check the permissions of the path, or choose a location you may write to",
    }.get(type(exc), "check the path and the disk (space, permissions, mounts)")
    where = f"{redact(str(path))}: " if path else ""
    return f"{where}{what} ({type(exc).__name__}). Fix: {fix}"


class _StageLines(logging.StreamHandler):
    """The runner's ``stage X: start`` / ``done in N s`` lines, bare, on the current ``sys.stderr``."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream: it flushes the previous stream, which may be closed
        super().emit(record)


def stage_lines(enabled: bool) -> None:
    """Show the runner's stage lines on their own at the default verbosity (with -v they are INFO records)."""
    runner = logging.getLogger("fmri2img.pipeline.runner")
    for h in [h for h in runner.handlers if isinstance(h, _StageLines)]:
        runner.removeHandler(h)
    runner.propagate = not enabled
    runner.setLevel(logging.INFO if enabled else logging.NOTSET)
    if enabled:
        runner.addHandler(_StageLines())


#: seconds the process may take to end after its error line before it is ended regardless
EXIT_GRACE_S = float(os.environ.get("FMRI2IMG_EXIT_GRACE_S", "10"))


def exit_promptly(code: int, grace: float | None = None) -> None:
    """End the process with ``code`` within ``grace`` seconds, even if threads or exit hooks hang.

    After an error nothing is left to save (finished regions are recorded as they finish), so a
    cluster that does not shut down, a thread stuck on a dead connection or an exit hook that
    waits must not keep a failed command alive with no further message.
    """
    import threading

    def _end() -> None:
        alive = [t.name for t in threading.enumerate()
                 if t is not threading.current_thread() and t is not threading.main_thread() and not t.daemon]
        print(f"fmri2img: exiting ({code}) {grace_s:.0f} s after the error"
              + (f"; still running: {', '.join(alive[:5])}" if alive else ""), file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)

    grace_s = EXIT_GRACE_S if grace is None else grace
    timer = threading.Timer(grace_s, _end)
    timer.daemon = True
    timer.start()


# -- argument types and options shared by the commands ------------------------------------------------

def kv(text: str) -> tuple[str, object]:
    """``key=value`` → (key, parsed value) for --source-option/--store-option."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    low = value.lower()
    parsed: object = value
    if low in ("true", "false"):
        parsed = low == "true"
    else:
        try:
            parsed = int(value)
        except ValueError:
            pass
    return key, parsed


def int_list(text: str) -> list[int]:
    """``1,2,5,7`` → [1, 2, 5, 7]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,5,7, got {text!r}") from None


def sessions_per_subject(text: str) -> dict[int, int]:
    """``3:1,4:2`` → {3: 1, 4: 2}."""
    try:
        return {int(s): int(k) for s, _, k in (part.partition(":") for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SUBJECT:SESSIONS pairs like 3:1,4:2, got {text!r}") from None


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """--cluster, --cluster-option, --workers, --no-progress and --take-over-stale-lock, as every command that
    runs stages takes them."""
    p.add_argument("--cluster", default=None,
                   help="'local' (default: one worker per core), 'slurm', 'pbs', 'kubernetes', or a scheduler "
                        "address tcp://HOST:PORT / tls://HOST:PORT")
    from fmri2img.cluster.connect import options_help

    p.add_argument("--cluster-option", type=kv, action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the cluster kind, e.g. cores=8 gpus=1 maximum=20 (overrides [cluster.options]; "
                        "README 'From laptop to cluster' says what each means). " + options_help())
    p.add_argument("--workers", type=int, default=None, help="local cluster: number of worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_lock_option(p)


def add_lock_option(p: argparse.ArgumentParser) -> None:
    """--take-over-stale-lock, for every command that writes to a store under its lock."""
    p.add_argument("--take-over-stale-lock", action="store_true",
                   help="take over the store's lock when its holder's lease is stale (not renewed for 4 periods of "
                        "30 s: that run is dead); without it such a lock is reported and the command stops")


def betas_scale(text: str) -> str | float:
    """``nsd`` or a positive number (``--betas-scale``)."""
    if text == "nsd":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'nsd' or a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
