"""Run a list of independent region tasks on a Dask client (or in-process) with progress.

Every stage shows its progress the same way: one tqdm line on stderr named after the stage
(:func:`progress_bar`), whether its work is a list of :class:`Task` (:func:`run_tasks`) or a
collection of Dask writes (:func:`compute_writes`).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args, **kwargs)`` named ``stage-label`` in the dashboard."""

    label: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    #: the task's expected peak memory in bytes, when the stage knows it (named when its worker dies)
    nbytes: int | None = None


class TaskFailed(RuntimeError):
    """A region task failed; the message names the region and the cause."""


def run_tasks(
    tasks: Sequence[Task], *, stage: str, client=None, progress: bool = True,
    resources: dict | None = None, retries: int = 0, block_option: str | None = None,
) -> list[Any]:
    """Run ``tasks`` and return their results in order.

    With a :class:`distributed.Client` each task is submitted under the key
    ``f"{stage}-{label}"`` (so the dashboard groups them by stage); without one
    they run one after another in this process.  The first failure cancels the
    remaining tasks and is re-raised with the region named; regions already
    written keep their completion records, so a rerun resumes.  A task that kills
    its worker every time (``KilledWorker``) is reported with its worker, the
    worker's memory limit, the task's ``nbytes`` and ``block_option``, the option
    that makes tasks smaller (:func:`fmri2img.cluster.faults.killed_worker`).
    """
    if not tasks:
        return []
    bar = progress_bar(len(tasks), stage, progress)
    t0 = time.perf_counter()
    try:
        if client is None:
            results = []
            for task in tasks:
                results.append(_call(task, stage))
                bar.update(1)
        else:
            results = _run_distributed(tasks, stage, client, bar, resources, retries, block_option)
    finally:
        bar.close()
    logger.info("%s: %d tasks in %.1f s", stage, len(tasks), time.perf_counter() - t0)
    return results


def tree_sum(tasks: Sequence[Task], combine: Callable[[Any, Any], Any], *, stage: str, client=None,
             progress: bool = True) -> Any:
    """``combine`` the results of ``tasks`` pairwise, level by level, and return the total.

    The pairing is fixed by the tasks' order (level 1 adds results 0+1, 2+3, ...; an odd last one
    goes up unpaired), with or without a client, so the floating-point sum does not depend on
    the workers. With a client the partial results stay on the workers (a tree reduction: no
    process holds more than a pair of them and the total); without one the results are computed
    here one by one and combined in the same order.
    """
    if not tasks:
        raise ValueError(f"{stage}: nothing to sum")
    if client is None:
        parts = run_tasks(tasks, stage=stage, client=None, progress=progress)
        while len(parts) > 1:
            parts = [combine(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                     for i in range(0, len(parts), 2)]
        return parts[0]
    return _tree_sum_distributed(tasks, combine, stage, client, progress)


def _tree_sum_distributed(tasks, combine, stage, client, progress):
    from distributed import as_completed, span

    with span(stage):
        leaves = [client.submit(_call, t, stage, key=f"{stage}-{t.label}-{_token(t)}", pure=False) for t in tasks]
        level = list(leaves)
        while len(level) > 1:
            level = [client.submit(combine, level[i], level[i + 1], key=f"{stage}-sum-{_token(tasks[0])}", pure=False)
                     if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    with progress_bar(len(leaves), stage, progress) as bar:
        try:
            for fut in as_completed(leaves):
                if fut.status == "error":
                    _raise_killed(fut.exception(), stage, None, None, None)
                    raise fut.exception()
                bar.update(1)
            return level[0].result()
        except BaseException as exc:
            from fmri2img.cluster.faults import scheduler_lost

            lost = scheduler_lost(client, exc, stage=stage, done=bar.n, total=len(leaves))
            if lost is not None:
                raise lost from None
            client.cancel(leaves + level)
            raise


def progress_bar(total: int, stage: str, enabled: bool = True, unit: str = "region") -> tqdm:
    """The one progress style of every stage: a tqdm line on stderr, named after the stage, cleared when done."""
    return tqdm(total=total, desc=stage, unit=unit, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True, delay=0.5)  # a step done within 0.5 s shows no bar


def compute_writes(writes: Sequence[Any], *, stage: str, client=None, progress: bool = True,
                   block_option: str | None = None, nbytes: int | None = None) -> None:
    """Compute Dask collections whose tasks write regions, with the stages' progress line.

    With a client the collections run on the cluster and the bar counts finished
    collections; without one they run on the threaded scheduler and the bar counts
    finished graph tasks.  The first failure is re-raised (a ``KilledWorker`` explained as in
    :func:`run_tasks`, with ``nbytes`` the expected memory of one write task).
    """
    import dask

    if not writes:
        return
    if client is not None:
        from distributed import as_completed

        futures = client.compute(list(writes), optimize_graph=False)
        with progress_bar(len(futures), stage, progress) as bar:
            try:
                for fut in as_completed(futures):
                    fut.result()  # re-raise the first failure
                    bar.update(1)
            except BaseException as exc:
                client.cancel(futures)
                _raise_killed(exc, stage, None, nbytes, block_option)
                raise
        return
    from dask.callbacks import Callback

    class _Bar(Callback):
        def _start_state(self, dsk, state):
            self.bar.total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self.bar.refresh()

        def _posttask(self, key, result, dsk, state, worker_id):
            self.bar.update(1)

    with progress_bar(0, stage, progress, unit="task") as bar:
        cb = _Bar()
        cb.bar = bar
        with cb:
            dask.compute(*writes, scheduler="threads")


def _call(task: Task, stage: str) -> Any:
    try:
        return task.fn(*task.args, **task.kwargs)
    except Exception as exc:  # noqa: BLE001 - add the region to anything but our clear input errors
        message = f"{stage} {task.label} failed: {type(exc).__name__}: {exc}"
        if _ships(exc):
            if isinstance(exc, ValueError):
                raise  # our clear input errors already name the file/region
            raise TaskFailed(message) from exc
    # an error that would not survive the trip back from a worker as itself: its message alone, raised
    # here, outside the handler, so that it carries no context that fails to pickle
    raise TaskFailed(message)


def _ships(exc: BaseException) -> bool:
    """Whether ``exc`` (with its causes) arrives from a worker as itself (distributed's own round trip)."""
    try:
        from distributed.core import clean_exception, error_message

        msg = error_message(exc)
        _, back, _ = clean_exception(msg["exception"].data)
        return type(back) is type(exc)
    except Exception:  # noqa: BLE001 - anything that fails here would fail on the way back too
        return False


def _raise_killed(exc: BaseException, stage: str, task: Task | None, nbytes: int | None, option: str | None) -> None:
    """Raise the explained error when ``exc`` is a worker that died again and again (else return)."""
    from fmri2img.cluster.faults import killed_worker

    killed = killed_worker(exc, stage=stage, label=task.label if task else None,
                           nbytes=task.nbytes if task else nbytes, option=option)
    if killed is not None:
        raise killed from None


def _run_distributed(tasks, stage, client, bar, resources, retries, block_option=None):
    from distributed import as_completed, span

    from fmri2img.cluster.faults import scheduler_lost

    futures = []
    index = {}
    with span(stage):  # names the stage in the dashboard's span views
        for i, task in enumerate(tasks):
            fut = client.submit(
                _call, task, stage, key=f"{stage}-{task.label}-{_token(task)}", pure=False,
                resources=resources, retries=retries,
            )
            futures.append(fut)
            index[fut.key] = i
    results: list[Any] = [None] * len(tasks)
    done = 0
    try:
        for fut in as_completed(futures):
            if fut.status == "error":
                exc = fut.exception()
                _raise_killed(exc, stage, tasks[index[fut.key]], None, block_option)
                raise exc
            results[index[fut.key]] = fut.result()
            fut.release()  # the result is here: a worker job that ends later must not take it (and its rerun) along
            done += 1
            bar.update(1)
    except BaseException as exc:
        lost = scheduler_lost(client, exc, stage=stage, done=done, total=len(tasks))
        if lost is not None:  # one clear error: what happened, that the store is resumable, how to resume
            raise lost from None
        client.cancel(futures)
        raise
    return results


def _token(task: Task) -> str:
    import uuid

    return uuid.uuid4().hex[:8]
