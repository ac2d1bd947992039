"""What to tell people when the cluster fails under a running stage.

Workers that die are Dask's business: it reruns their tasks elsewhere
(``distributed.scheduler.allowed-failures``), and since every region is written
whole and then recorded, the result equals an uninterrupted run's.  A scheduler
that goes away takes every pending task with it; the client then sees a closed
connection, cancelled futures or a timeout.  :func:`scheduler_lost` recognises
that situation and :class:`SchedulerLost` says what happened and how to resume.
A task whose worker dies every time it runs it (distributed's ``KilledWorker``, after
``distributed.scheduler.allowed-failures`` retries) is most often a task that does not fit
in a worker's memory: :func:`killed_worker` says which task, on which worker, the worker's
memory limit against the task's expected size, and the options that fix it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from fmri2img.cluster.errors import SchedulerLost, WorkerKilled, cluster_failure
from fmri2img.storage import secrets

logger = logging.getLogger(__name__)


#: exceptions a client raises when its scheduler vanishes
_LOST = (OSError, TimeoutError, asyncio.CancelledError, concurrent.futures.CancelledError)
#: their names (and those of the subclasses distributed and tornado raise), as a formatted traceback ends
_LOST_NAMES = {"OSError", "TimeoutError", "CancelledError", "CommClosedError", "StreamClosedError", "ConnectionError",
               "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError"}


def _scheduler_gone(client: Any) -> bool:
    """Whether ``client`` has lost its scheduler connection (no network call)."""
    if getattr(client, "status", "running") != "running":
        return True
    comm = getattr(client, "scheduler_comm", None)
    inner = getattr(comm, "comm", None)
    return comm is None or (inner is not None and inner.closed())


def scheduler_lost(client: Any, exc: BaseException, *, stage: str, done: int, total: int) -> RuntimeError | None:
    """A :class:`SchedulerLost` explaining ``exc`` when it comes from a vanished scheduler, else ``None``.

    When the cluster's watch (:mod:`fmri2img.cluster.watch`) ended the cluster, its
    :class:`~fmri2img.cluster.connect.ClusterError` is returned instead: it says why.

    Parameters
    ----------
    client : distributed.Client
        The client the stage ran on.
    exc : BaseException
        What the stage's wait raised.
    stage : str
        The stage name, for the message.
    done, total : int
        Regions finished (and recorded) in this run, and regions submitted.
    """
    failure = cluster_failure(client)
    if failure is not None:
        _silence_reconnect_noise()
        return failure
    if not isinstance(exc, _LOST) or not _scheduler_gone(client):
        return None
    _silence_reconnect_noise()
    address = secrets.redact(str(getattr(getattr(client, "scheduler", None), "address", "") or "the scheduler"))
    logger.debug("scheduler lost during %s", stage, exc_info=exc)
    return SchedulerLost(
        f"the Dask scheduler at {address} went away during stage {stage} ({done} of {total} regions finished in "
        f"this run; {type(exc).__name__}). The store is resumable: every finished region is recorded and "
        f"unfinished ones are not. Start a scheduler and workers again (or use --cluster local) and rerun the "
        f"same command: finished regions are skipped."
    )


class _ConnectionNoise(logging.Filter):
    """Drops the client's tracebacks about failing to reconnect to a scheduler already reported lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not isinstance(exc, _LOST)
        # a record factory may have formatted the traceback already (fmri2img.storage.secrets does)
        last = (record.exc_text or "").strip().rsplit("\n", 1)[-1]
        return last.split(":", 1)[0].rsplit(".", 1)[-1] not in _LOST_NAMES


_NOISE = _ConnectionNoise()


def _silence_reconnect_noise() -> None:
    """After :class:`SchedulerLost` is raised, the client's reconnect attempts only repeat it."""
    for name in ("distributed.client", "distributed.utils"):
        log = logging.getLogger(name)
        if _NOISE not in log.filters:
            log.addFilter(_NOISE)




def _size(nbytes: float | None) -> str:
    if not nbytes:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def killed_worker(exc: BaseException, *, stage: str, label: str | None = None, nbytes: float | None = None,
                  option: str | None = None) -> WorkerKilled | None:
    """A :class:`WorkerKilled` explaining ``exc`` when it is distributed's ``KilledWorker``, else ``None``.

    Parameters
    ----------
    exc : BaseException
        What the task's future raised.
    stage : str
        The stage's name (the dashboard's).
    label : str, optional
        The task's region label (default: its key).
    nbytes : float, optional
        The task's expected peak memory, when the stage knows it.
    option : str, optional
        The configuration option that makes each task smaller (e.g. ``"[reconstruct] images_per_task (now 8)"``).
    """
    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    if not isinstance(exc, KilledWorker):
        return None
    worker = exc.args[1] if len(exc.args) > 1 else None
    tries = int(exc.args[2]) + 1 if len(exc.args) > 2 and isinstance(exc.args[2], int) else None
    address = secrets.redact(str(getattr(worker, "address", worker) or "?"))
    name = getattr(worker, "name", None)
    where = f"worker {address}" + (f" (name {name})" if name not in (None, "", address) else "")
    limit = getattr(worker, "memory_limit", None)
    if limit:
        cause = f"memory: the worker's limit is {_size(limit)}"
        cause += (f" and this task is expected to need about {_size(nbytes)}" if nbytes else
                  " (this task's size is not estimated)")
        if nbytes and nbytes < 0.5 * limit:
            cause += "; if memory is not it, the task crashed its process: see the worker's log"
    else:
        cause = "the worker has no memory limit, so the machine ran out of memory or the task crashed its process"
    smaller = f", or make each task smaller: lower {option}" if option else ""
    times = f"{tries} times" if tries else "every time"
    return WorkerKilled(
        f"stage {stage}: task {label or exc.args[0]} killed its worker {times} (last on {where}; Dask gives up after "
        f"distributed.scheduler.allowed-failures + 1). Likely cause: {cause}. Fix: give each worker more memory "
        f"(local: [cluster] memory_limit or --cluster-option memory_limit=8GB, or fewer --workers; SLURM/PBS: "
        f"--cluster-option memory=32GB per job, or fewer processes per job){smaller}. Finished regions are "
        f"recorded: rerun the same command to resume."
    )
