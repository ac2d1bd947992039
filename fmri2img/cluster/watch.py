"""Watching a batch-job cluster, so that its failures end a run with one clear error.

dask-jobqueue submits worker jobs and otherwise trusts them: a job the batch
system refuses is logged as a traceback and the run waits for a worker that
will never come; a job that ends (walltime, memory, preemption) is not replaced
in a fixed-size cluster.  :class:`JobWatch` checks the cluster every second on
its own event loop:

- a refused submission (sbatch/qsub's message, and the options that shaped the
  request) fails the run at once;
- a job that ends before its worker connects (SLURM is asked every few seconds)
  fails the run then, quoting the end of the job's log;
- work that waits ``worker_timeout`` with no worker connected fails the run,
  with each job's state from the batch system and its log file;
- a job that ends under running work is replaced when tasks finished during
  its life, and fails the run when none did (its walltime is too short for one
  task, or it dies on start), naming why its log says it ended.

A failure closes the cluster (its jobs are cancelled), which cancels the
client's pending work; :func:`cluster_failure` then gives the error to raise in
place of the cancellation (``fmri2img.cli.main`` and the task runner do so).
"""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from fmri2img.cluster.errors import WATCH_ATTR as ATTR
from fmri2img.cluster.errors import ClusterError, JobSubmitError, close_quietly

logger = logging.getLogger(__name__)

#: seconds between checks, and between asking the batch system whether jobs without a worker have ended
INTERVAL = 1.0
POLL = 5.0
#: a word in the submit command's error → the options that shape that part of the request, and what shows
#: what the cluster offers
SUBMIT_HINTS = (
    ("gres", ("gpus", "job_extra_directives"), "sinfo -o '%P %G' lists each partition's GPUs"),
    ("gpu", ("gpus", "job_extra_directives"), "sinfo -o '%P %G' lists each partition's GPUs"),
    ("partition", ("queue",), "sinfo -s lists the partitions"),
    ("queue", ("queue",), "qstat -Q lists the queues"),
    ("account", ("account",), "sacctmgr show assoc user=$USER lists your accounts"),
    ("qos", ("qos",), "sacctmgr show qos lists the QOS names"),
    ("time limit", ("walltime",), "sinfo -o '%P %l' lists each partition's time limit"),
    ("walltime", ("walltime",), "qstat -Qf lists each queue's limits"),
    ("memory", ("memory",), "sinfo -o '%P %m' lists each partition's memory per node"),
    ("cpu", ("cores", "processes"), "sinfo -o '%P %c' lists each partition's CPUs per node"),
    ("node configuration", ("cores", "memory", "gpus", "job_extra_directives"),
     "sinfo -o '%P %c %m %G' lists what the nodes have"),
)
#: the options that shape a job's request (named when no hint matches)
REQUEST_OPTIONS = ("queue", "account", "qos", "cores", "memory", "processes", "walltime", "gpus",
                   "job_extra_directives")


@dataclass
class _Job:
    """What the watch knows of one worker job."""

    name: str
    job_id: str = ""
    submitted: float = field(default_factory=time.monotonic)
    arrived: float | None = None
    done_at_arrival: int = 0
    #: when its last worker disconnected (it counts as ended after distributed's lost-worker-timeout)
    gone_since: float | None = None
    handled: bool = False


def _progress_plugin():
    """A scheduler plugin counting finished tasks (so a lost job's life can be judged)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Progress(SchedulerPlugin):
        name = "fmri2img-progress"

        def __init__(self) -> None:
            self.finished = 0

        def transition(self, key, start, finish, *args, **kwargs) -> None:  # noqa: ANN001 - the plugin API
            if finish == "memory":
                self.finished += 1

    return Progress()


class JobWatch:
    """Watches one dask-jobqueue cluster; see the module docstring.

    Work that has waited :attr:`notice_after_s` with no worker connected is reported once as a
    warning naming the cluster, the jobs' states and what to check, long before ``worker_timeout``
    (which may be long: a busy queue can hold jobs for hours) ends the run.

    Parameters
    ----------
    kind : fmri2img.cluster.jobqueue.QueueKind
    job : dict
        The arguments the Job class gets (walltime, log_directory, job_name, ...).
    options : mapping
        The options as the user gave them (named in messages).
    worker_timeout : float or str
        How long work may wait with no worker connected.
    adaptive : bool
        Whether the cluster scales adaptively (then lost jobs are left to the scaler).
    """

    def __init__(self, kind, *, job: Mapping[str, Any], options: Mapping[str, Any], worker_timeout,
                 adaptive: bool) -> None:
        import dask
        from dask.utils import parse_timedelta

        self.kind, self.job, self.options, self.adaptive = kind, dict(job), dict(options), adaptive
        self.worker_timeout = float(parse_timedelta(worker_timeout, default="seconds"))
        self.failure: ClusterError | None = None
        self.jobs: dict[str, _Job] = {}
        self.n_workers = 0
        self._idle_since: float | None = None
        self._noticed = False
        self._connected: set = set()
        self._polled = 0.0
        self.lost_after = float(parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout")))
        self._progress = _progress_plugin()
        self._cluster = None
        _install_log_filter()

    # -- wiring ------------------------------------------------------------------------------

    def job_class(self, base: type) -> type:
        """``base`` (a dask-jobqueue Job class) reporting refused submissions to this watch."""
        watch = self

        class WatchedJob(base):
            async def start(self):
                try:
                    await super().start()
                except Exception as exc:  # noqa: BLE001 - every way a submission fails
                    from distributed.core import Status

                    self.status = Status.failed  # so that closing the cluster accepts this job as ended
                    raise watch._refused(self, exc) from None
                watch._submitted(self)

        WatchedJob.__name__ = WatchedJob.__qualname__ = base.__name__
        return WatchedJob

    def attach(self, cluster) -> None:
        """Start checking ``cluster`` every :data:`INTERVAL` seconds on its event loop."""
        from tornado.ioloop import PeriodicCallback

        self._cluster = cluster
        setattr(cluster, ATTR, self)
        cluster.scheduler.add_plugin(self._progress)
        pc = PeriodicCallback(self._check, INTERVAL * 1000)
        cluster.periodic_callbacks["fmri2img-watch"] = pc  # stopped when the cluster closes
        cluster.loop.add_callback(pc.start)

    def wait_for_workers(self, client, n: int = 1) -> None:
        """Block until ``n`` workers are connected; raise (after closing the cluster) when the watch fails
        or none arrives within ``worker_timeout``."""
        t0 = time.monotonic()
        while self.failure is None:
            if self.n_workers >= n:
                return
            if time.monotonic() - t0 > self.worker_timeout:
                self.failure = ClusterError(self._no_worker_message(time.monotonic() - t0))
                break
            time.sleep(0.2)
        close_quietly(client)
        raise self.failure

    # -- events from the jobs ----------------------------------------------------------------

    def _submitted(self, job) -> None:
        self.jobs[str(job.name)] = _Job(str(job.name), str(job.job_id))  # an adaptive cluster reuses names
        logger.info("%s worker job %s submitted (%s)", self.kind.name, job.job_id, job.name)

    def _refused(self, job, exc: BaseException) -> JobSubmitError:
        text = str(exc)
        said = [line.strip() for line in text.splitlines() if "error" in line.lower() and ":" in line]
        said = said or [line.strip() for line in text.split("stderr:", 1)[-1].splitlines() if line.strip()]
        detail = "; ".join(dict.fromkeys(said)) or text.strip().replace("\n", " ")
        word, names, check = self._suspects(detail)
        given = ", ".join(f"{k}={self.options[k]!r}" for k in names if k in self.options)
        asked = [d for d in self.job.get("job_extra_directives") or [] if word and word in d.lower()]
        shaped = (f"the options that shape this part of the request: {given}" if given else
                  f"check the options {', '.join(names)}") + (f" (directives {asked})" if asked else "")
        message = (f"{self.kind.name} cluster: {self.kind.submit} refused the worker job: {detail} — {shaped}; "
                   f"{check} (`fmri2img ... -v` logs the job script)")
        self._fail(message)
        return JobSubmitError(message)

    def _suspects(self, detail: str) -> tuple[str, tuple, str]:
        low = detail.lower()
        for word, names, check in SUBMIT_HINTS:
            if word in low:
                return word, names, check
        return "", REQUEST_OPTIONS, f"`{self.kind.submit}` refused it as sent"

    # -- the periodic check ------------------------------------------------------------------

    async def _check(self) -> None:
        cluster = self._cluster
        if self.failure is not None or cluster is None or cluster.status.name in ("closing", "closed"):
            return
        try:
            self._observe(cluster)
            self._check_lost(cluster)
            self._check_no_worker(cluster)
            await self._check_never_connected(cluster)
        except Exception as exc:  # noqa: BLE001 - a watch bug must not take the run down
            logger.debug("cluster watch: %s", exc, exc_info=True)

    def _observe(self, cluster) -> None:
        """Record job ids and which jobs have a connected worker."""
        for name, job in list(cluster.workers.items()):
            if getattr(job, "job_id", None):
                self.jobs.setdefault(str(name), _Job(str(name))).job_id = str(job.job_id)
        workers = cluster.scheduler.workers.values()
        self.n_workers = len(workers)
        connected = {self._job_of(str(ws.name), cluster) for ws in workers}
        for name in connected - {None}:
            rec = self.jobs.setdefault(name, _Job(name))
            if rec.arrived is None:
                rec.arrived, rec.done_at_arrival = time.monotonic(), self._progress.finished
                logger.info("%s worker job %s (%s) connected", self.kind.name, rec.job_id or "?", name)
        self._connected = connected

    @staticmethod
    def _job_of(worker_name: str, cluster) -> str | None:
        """The job a worker belongs to (a job with processes > 1 names its workers ``<job>-<i>``)."""
        if worker_name in cluster.worker_spec:
            return worker_name
        head, _, tail = worker_name.rpartition("-")
        return head if tail.isdigit() and head in cluster.worker_spec else None

    def _unfinished(self, cluster) -> bool:
        return any(ts.state in ("processing", "queued", "no-worker", "waiting")
                   for ts in cluster.scheduler.tasks.values())

    def _check_lost(self, cluster) -> None:
        now = time.monotonic()
        for name, rec in list(self.jobs.items()):
            if rec.arrived is None or rec.handled or name not in cluster.worker_spec or name in self._connected:
                rec.gone_since = None
                continue
            rec.gone_since = rec.gone_since or now
            why = self._end_reason(rec)
            if not why and now - rec.gone_since < self.lost_after:  # a worker the nanny restarts comes back
                continue
            rec.handled = True
            lived = rec.gone_since - rec.arrived
            if self._unfinished(cluster) and self._progress.finished == rec.done_at_arrival:
                self._fail(
                    f"{self.kind.name} cluster: worker job {rec.job_id} ended after {lived:.0f} s while tasks were "
                    f"running and before any task finished{why}; with walltime {self.job['walltime']!r} a task "
                    f"does not fit in one job: raise walltime (or give the job more cores/memory); its log: "
                    f"{self._logs(rec)}")
                return
            self._replace(cluster, name, rec, why)

    def _replace(self, cluster, name: str, rec: _Job, why: str) -> None:
        """Drop the ended job and, in a fixed-size cluster, submit a new one in its place."""
        if not self.adaptive:  # a new name (added while the old one is taken): SpecCluster's own clean-up of
            cluster.worker_spec.update(cluster.new_worker_spec())  # the old name must not touch the new job
        cluster.worker_spec.pop(name, None)
        job = cluster.workers.pop(name, None)
        logger.warning("%s worker job %s ended%s; %s (its log: %s)", self.kind.name, rec.job_id, why,
                       "the adaptive scaler submits more as work needs" if self.adaptive else
                       "submitted a replacement", self._logs(rec))
        if job is not None:
            asyncio.ensure_future(job.close())
        asyncio.ensure_future(cluster._correct_state())

    #: seconds of work waiting with no worker before the warning (issue: "says so within 2 minutes")
    notice_after_s: float = 110.0

    def _check_no_worker(self, cluster) -> None:
        waiting = self.n_workers == 0 and bool(cluster.worker_spec) and self._unfinished(cluster)
        if not waiting:
            self._idle_since, self._noticed = None, False
            return
        now = time.monotonic()
        self._idle_since = self._idle_since or now
        waited = now - self._idle_since
        if waited > self.worker_timeout:
            self._fail(self._no_worker_message(waited))
        elif waited > self.notice_after_s and not self._noticed:
            self._noticed = True
            logger.warning("still waiting: %s", self._no_worker_message(waited).replace(
                "no Dask worker connected within", "no Dask worker has connected for", 1))

    async def _check_never_connected(self, cluster) -> None:
        """Fail at once when every job waiting for its worker has ended (the worker could not start: python,
        interface, prologue), instead of waiting ``worker_timeout`` for workers that cannot come."""
        now = time.monotonic()
        if not self.kind.active_states or self.n_workers or now - self._polled < POLL:
            return
        waiting = [r for r in self.jobs.values() if r.job_id and r.arrived is None and not r.handled
                   and r.name in cluster.worker_spec and now - r.submitted > POLL]
        if not waiting:
            return
        self._polled = now
        active = await self._active_ids([r.job_id for r in waiting])
        if active is None or any(r.job_id in active for r in waiting):
            return
        rec = waiting[-1]
        self._fail(f"{self.kind.name} cluster: worker job {rec.job_id} ended before its Dask worker connected"
                   f"{self._log_tail(rec)}: the worker could not start on the node; check python (the Python on "
                   f"the nodes: {self.job.get('python') or 'the one running fmri2img'}), interface and "
                   f"job_script_prologue; its log: {self._logs(rec)}")

    async def _active_ids(self, ids: list) -> set | None:
        """The ids among ``ids`` the batch system lists as not ended; None when it cannot tell."""
        cmd = list(self.kind.status) + [",".join(ids)]
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 15)
        except (OSError, asyncio.TimeoutError):
            return None
        if proc.returncode != 0:
            return set() if self.kind.gone and self.kind.gone in err.decode(errors="replace") else None
        active = set()
        for line in out.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] in self.kind.active_states:
                active.add(parts[0])
        return active

    def _log_tail(self, rec: _Job) -> str:
        """``"; its log ends: '...'"``: the job log's last line, where the worker's failure is written."""
        if not self.job.get("log_directory") or not rec.job_id:
            return ""
        for path in self.kind.log_files(self._log_dir(), self.job.get("job_name", "worker"), rec.job_id):
            try:
                with open(path, errors="replace") as f:
                    lines = [x.strip() for x in f.read()[-20000:].splitlines() if x.strip()]
            except OSError:
                continue
            if lines:
                return f"; its log ends: {lines[-1][:300]!r}"
        return ""

    # -- messages ----------------------------------------------------------------------------

    def _no_worker_message(self, waited: float) -> str:
        ids = [r.job_id for r in self.jobs.values() if r.job_id and not r.handled]
        states = self._states(ids)
        status = f"`{self.kind.status_hint.format(ids=','.join(ids) or '<job id>')}`"
        jobs = "; ".join(f"job {j}: {states.get(j, 'no longer queued (ended)')}" for j in ids) or "no job submitted"
        logs = self._log_dir()
        return (f"{self.kind.name} cluster: no Dask worker connected within {waited:.0f} s (worker_timeout "
                f"{self.worker_timeout:.0f} s) — {jobs}. Check {status} for why a job waits, and the job logs in "
                f"{logs} for why a worker did not start (python, interface, scheduler address); raise "
                f"worker_timeout if the queue is just slow")

    def _states(self, ids: list) -> dict:
        if not ids:
            return {}
        cmd = list(self.kind.status) + ([",".join(ids)] if self.kind.name == "slurm" else ids)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
        states, short = {}, {j.split(".")[0]: j for j in ids}
        for line in out.splitlines():
            parts = line.split(None, 1)
            if parts and parts[0].split(".")[0] in short:
                state, _, reason = (parts[1].strip() if len(parts) > 1 else "listed").partition(" ")
                states[short[parts[0].split(".")[0]]] = f"{state} ({reason})" if reason else state
        return states

    def _log_dir(self) -> str:
        d = self.job.get("log_directory")
        return os.path.abspath(os.path.expandvars(d)) if d else f"the directory {self.kind.submit} ran in"

    def _logs(self, rec: _Job) -> str:
        d = self.job.get("log_directory")
        if not d or not rec.job_id:
            return self._log_dir()
        return " and ".join(self.kind.log_files(self._log_dir(), self.job.get("job_name", "worker"), rec.job_id))

    def _end_reason(self, rec: _Job) -> str:
        """``" (its log says: ...)"`` from the job's log, when a line there says why it ended."""
        if not self.job.get("log_directory") or not rec.job_id:
            return ""
        for path in self.kind.log_files(self._log_dir(), self.job.get("job_name", "worker"), rec.job_id):
            try:
                with open(path, errors="replace") as f:
                    lines = f.read()[-20000:].splitlines()
            except OSError:
                continue
            hits = [x.strip() for x in lines if self.kind.end_line.search(x)]
            if hits:
                return f" (its log says: {hits[-1][:200]})"
        return ""

    def _fail(self, message: str) -> None:
        if self.failure is not None:
            return
        self.failure = ClusterError(message)
        logger.debug("cluster watch: %s", message)
        cluster = self._cluster
        if cluster is not None:  # cancels the jobs; the client's waiting work is cancelled with it
            asyncio.ensure_future(cluster._close())


class _SubmitNoise(logging.Filter):
    """Drops the event loop's tracebacks of refused submissions (the watch reports them once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # a record factory may have formatted the traceback already (fmri2img.storage.secrets does)
        text = record.exc_text or ""
        return not isinstance(exc, JobSubmitError) and f"{JobSubmitError.__module__}.JobSubmitError" not in text


_NOISE = _SubmitNoise()


def _install_log_filter() -> None:
    for name in ("tornado.application", "asyncio", "distributed.deploy.spec", "distributed.utils"):
        log = logging.getLogger(name)
        if _NOISE not in log.filters:
            log.addFilter(_NOISE)
