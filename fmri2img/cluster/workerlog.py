"""The workers' logging: redacted like the client's, as verbose as the command, and off the console.

A command's own process redacts every log record (:func:`fmri2img.storage.secrets.install`).
Its workers are other processes (a local cluster's worker processes, SLURM/PBS batch jobs,
Kubernetes pods) whose records, distributed's included ("Compute Failed" prints a task's
exception, ``-vv`` prints botocore's request headers), go to their own stderr: a batch job's
log file, or for a local cluster the user's terminal. :class:`WorkerLogging` is a worker plugin
that :func:`fmri2img.cluster.connect` registers on every cluster it starts; on each worker it

- redacts every record (the record factory of :func:`~fmri2img.storage.secrets.install`, with
  the literal credentials this command was given, plus a redacting filter on every handler);
- sets the worker's log levels from the command's verbosity (``-v``: fmri2img's INFO, ``-vv``:
  every library's DEBUG), on the kinds this command started (not on a scheduler it only reached);
- keeps a local cluster's worker records off the console at the default verbosity: they go to
  ``<outputs>/cluster-logs/dask.log`` (when the outputs are a local directory), and ``-v`` shows
  them as well. The console then shows a failed task as one ``error:`` line.

For the command line (``connect(..., command=True)``) the same holds in the command's own
process, where the scheduler of a local or batch cluster and a local cluster's nannies run:
at the default verbosity distributed's records there ("Task ... marked as failed because 2
workers died", "Restarting worker") go to ``dask.log`` too; :func:`undo` restores the console
when the command's cluster closes.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

from distributed.diagnostics.plugin import WorkerPlugin

from fmri2img.storage import secrets

__all__ = ["WorkerLogging", "verbosity", "register", "unregister", "configure", "quiet_command", "undo", "LOG_FILE"]

logger = logging.getLogger(__name__)

#: the file a local cluster's workers (and the command's scheduler) log to, in the command's ``cluster-logs``
LOG_FILE = "dask.log"
#: loggers of a worker's own machinery (in a local in-process cluster they share the command's process)
_WORKER_SIDE = ("distributed.worker", "distributed.nanny", "distributed.core", "distributed.utils_perf",
                "distributed.shuffle", "distributed.spill")
_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


def verbosity() -> int:
    """This process's verbosity as the command line set it: 0 (default), 1 (``-v``) or 2 (``-vv``)."""
    level = logging.getLogger("fmri2img").getEffectiveLevel()
    return 2 if level <= logging.DEBUG else 1 if level <= logging.INFO else 0


class _Quiet(logging.Filter):
    """Drops the worker machinery's records below CRITICAL (a console handler at the default verbosity)."""

    def __init__(self, every_distributed: bool) -> None:
        super().__init__()
        self.every_distributed = every_distributed

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        name = record.name
        if self.every_distributed:
            return not (name == "distributed" or name.startswith("distributed."))
        return not any(name == w or name.startswith(w + ".") for w in _WORKER_SIDE)


class WorkerLogging(WorkerPlugin):
    """Redaction, log levels and log destination for each worker (see the module docstring).

    Parameters
    ----------
    level : int or None
        The command's verbosity (0, 1, 2); ``None`` leaves the workers' levels alone (a scheduler
        this command did not start).
    known : sequence of str
        Literal credentials to replace wherever they appear (sent to the workers with the plugin,
        as the tasks' own storage options are; never shown by its repr).
    console : bool
        The workers' stderr is the user's terminal (a local cluster), not a log file.
    log_file : str, optional
        Where a local cluster's workers log (all levels from WARNING, or as verbose as the command).
    """

    name = "fmri2img-logging"
    idempotent = False  # a later command's settings replace an earlier one's

    def __init__(self, level: int | None, known: Sequence[str] = (), *, console: bool = False,
                 log_file: str | None = None) -> None:
        self.level = level
        self.known = list(known)
        self.console = console
        self.log_file = log_file
        self.client_pid = os.getpid()

    def __repr__(self) -> str:
        return (f"WorkerLogging(level={self.level}, {len(self.known)} known secret(s), console={self.console}, "
                f"log_file={self.log_file!r})")

    def setup(self, worker: Any = None) -> None:
        configure(self.level, self.known, console=self.console, log_file=self.log_file,
                  in_process=os.getpid() == self.client_pid)

    def teardown(self, worker: Any = None) -> None:
        if os.getpid() == self.client_pid:  # in-process: the command's process lives on (tests, notebooks)
            undo()


#: (handler or logger, filter or handler) this process added, for :func:`undo`
_added: list[tuple[Any, Any]] = []


def undo() -> None:
    """Remove the filters and file handlers :func:`configure` added in this process."""
    while _added:
        owner, item = _added.pop()
        if isinstance(item, logging.Handler):
            owner.removeHandler(item)
            item.close()
        else:
            owner.removeFilter(item)


def configure(level: int | None, known: Sequence[str] = (), *, console: bool = False, log_file: str | None = None,
              in_process: bool = False) -> None:
    """Set up this worker process's logging (what :meth:`WorkerLogging.setup` does on each worker)."""
    secrets.install(known)
    if level is not None and not in_process:  # in-process workers share the command's levels already
        _set_levels(level)
    if level is not None and log_file:
        _log_to_file(log_file, level)
    if console and level == 0:
        quiet = _Quiet(every_distributed=not in_process)
        for handler in _handlers():
            if not isinstance(handler, logging.FileHandler) and not any(isinstance(f, _Quiet) for f in handler.filters):
                handler.addFilter(quiet)
                _added.append((handler, quiet))
    for handler in _handlers():
        if not any(isinstance(f, secrets.RedactingFilter) for f in handler.filters):
            redacting = secrets.RedactingFilter()
            handler.addFilter(redacting)
            _added.append((handler, redacting))


def _handlers() -> list[logging.Handler]:
    """Every handler of the root logger and of the loggers distributed configured (they do not propagate)."""
    names = [None, "distributed"] + [n for n, lg in logging.root.manager.loggerDict.items()
                                     if isinstance(lg, logging.Logger) and lg.handlers]
    seen: list[logging.Handler] = []
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if handler not in seen:
                seen.append(handler)
    return seen


def _set_levels(level: int) -> None:
    """-v: fmri2img's INFO records (a handler on the root logger shows them); -vv: every library's DEBUG."""
    logging.getLogger("fmri2img").setLevel({0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG))
    root = logging.getLogger()
    if level >= 1 and not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    if level >= 2:  # every library's debug output, as the command's -vv shows it
        root.setLevel(logging.DEBUG)
        logging.getLogger("distributed").setLevel(logging.DEBUG)


class _LogFile(logging.FileHandler):
    """A log file (and its directory) created at its first record; one that cannot be written is skipped."""

    def __init__(self, path: str) -> None:
        super().__init__(path, delay=True)

    def _open(self):
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except OSError:  # an unwritable log must not stop the worker
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _log_to_file(path: str, level: int, names: Sequence[str] = ("distributed", "fmri2img")) -> None:
    """Append this process's records (distributed's and fmri2img's) to ``path``."""
    target = os.path.abspath(path)
    for name in names:
        log = logging.getLogger(name)
        if any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in log.handlers):
            continue
        handler = _LogFile(target)
        handler.setLevel(logging.DEBUG if level >= 2 else logging.INFO if level == 1 else logging.WARNING)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(secrets.RedactingFilter())
        log.addHandler(handler)
        _added.append((log, handler))


def quiet_command(log_file: str | None) -> None:
    """In the command's process: distributed's records below CRITICAL leave the console for ``log_file``."""
    quiet = _Quiet(every_distributed=True)
    for handler in _handlers():
        if not isinstance(handler, logging.FileHandler) and not any(isinstance(f, _Quiet) for f in handler.filters):
            handler.addFilter(quiet)
            _added.append((handler, quiet))
    if log_file:
        _log_to_file(log_file, 0, names=("distributed",))


def register(client: Any, kind: str, logs: str | None = None, *, command: bool = False) -> WorkerLogging:
    """Register :class:`WorkerLogging` on ``client``'s workers (those running and those to come).

    ``kind`` is the cluster kind: a local cluster's workers print on the console, batch jobs and
    pods into their own logs; a scheduler this command only reached (``tcp``/``tls``) keeps its
    levels. ``logs`` is the command's ``cluster-logs`` directory (local clusters log there).
    ``command``: this is the command line's process; at the default verbosity it is quieted too
    (:func:`quiet_command`).
    """
    started = kind not in ("tcp", "tls")
    local = kind == "local"
    level = verbosity() if started else None
    log_file = os.path.join(logs, LOG_FILE) if logs else None
    quiet = command and verbosity() == 0
    if quiet:  # before the plugin: an in-process worker's setup then finds the console already quiet
        quiet_command(log_file)
    plugin = WorkerLogging(level, secrets.known_secrets(), console=local and quiet,
                           log_file=log_file if local else None)
    client.register_plugin(plugin, name=WorkerLogging.name)
    return plugin


def unregister(client: Any) -> None:
    """Take the plugin (and the credentials it carries) off a scheduler this command only reached.

    A cluster the command started ends with it; a running scheduler (``tcp://``, ``tls://``) would
    otherwise keep the plugin for the workers that join it later.
    """
    if getattr(client, "cluster", None) is not None:
        return
    try:
        client.unregister_worker_plugin(WorkerLogging.name)
    except Exception as exc:  # noqa: BLE001 - the scheduler may be gone already
        logger.debug("could not unregister %s: %s", WorkerLogging.name, exc)
