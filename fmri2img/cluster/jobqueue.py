"""SLURM and PBS clusters through dask-jobqueue (``pip install 'fmri2img[hpc]'``).

The client (a login node, a laptop with ssh tunnels) runs the scheduler; each
batch job runs ``processes`` ``dask worker`` processes.  Options (the
``[cluster.options]`` table, or ``--cluster-option KEY=VALUE``)::

    cores = 8                 # per job (shared by its worker processes as threads)
    memory = "32GB"           # per job
    processes = 1             # worker processes per job
    walltime = "04:00:00"
    queue = "gpu"             # SLURM partition / PBS queue (alias: partition)
    account = "lab-nsd"
    qos = "normal"            # SLURM only
    gpus = 1                  # per job: --gres=gpu:N on SLURM and --resources GPU=N, so GPU stages land only there
    job_extra_directives = ["--constraint=a100"]
    job_script_prologue = ["module load cuda"]
    interface = "ib0"         # network interface of the scheduler and the workers
    local_directory = "$TMPDIR"  # the workers' scratch space on the node
    python = "/shared/envs/fmri2img/bin/python"  # the Python on the nodes (default: this one)
    log_directory = "/shared/logs"  # default: <outputs>/cluster-logs (set by the command line)
    worker_timeout = "30 minutes"  # fail when work waits this long with no worker connected
    n_workers = 2             # jobs (fixed size; lost jobs are replaced) ...
    minimum = 0               # ... or adaptive scaling between minimum and maximum jobs
    maximum = 20

:func:`job_script` returns the batch script without starting anything;
:func:`connect_jobqueue` starts the cluster and hands it to
:class:`~fmri2img.cluster.watch.JobWatch`, which turns refused submissions,
workers that never arrive and jobs that end under running tasks into one clear
:class:`~fmri2img.cluster.connect.ClusterError`.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fmri2img.storage import secrets
from fmri2img.cluster.security import make_security

logger = logging.getLogger(__name__)


class JobQueueError(ValueError):
    """A job-queue option is unknown or inconsistent; the message names it."""


def _is_int(value: Any, lo: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _is_word(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not any(c.isspace() for c in value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_lines(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)


def _is_bytes(value: Any) -> bool:
    from dask.utils import parse_bytes

    try:
        return parse_bytes(value) > 0
    except (ValueError, TypeError):
        return False


def _is_duration(value: Any) -> bool:
    from dask.utils import parse_timedelta

    if isinstance(value, bool):
        return False
    try:
        return parse_timedelta(value, default="seconds") > 0
    except (ValueError, TypeError, KeyError):
        return False


#: SLURM's --time formats: m, m:s, h:m:s, d-h, d-h:m, d-h:m:s; PBS: [[h:]m:]s
_WALLTIME = {"slurm": re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$"),
             "pbs": re.compile(r"^\d+(:\d{2}){0,2}$")}

#: option → (check, what it expects); the same for every kind unless a kind leaves the option out
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "cores": (lambda v: _is_int(v, 1), "a number of cores per job ≥ 1"),
    "memory": (_is_bytes, "an amount of memory per job like '32GB'"),
    "processes": (lambda v: _is_int(v, 1), "a number of worker processes per job ≥ 1"),
    "walltime": (lambda v: isinstance(v, str), "a time limit like '04:00:00'"),
    "queue": (_is_word, "a partition/queue name"),
    "account": (_is_word, "an account name"),
    "qos": (_is_word, "a quality-of-service name"),
    "gpus": (lambda v: _is_int(v, 0), "a number of GPUs per job ≥ 0"),
    "job_extra_directives": (_is_lines, "a list of directives like ['--constraint=a100']"),
    "job_script_prologue": (_is_lines, "a list of shell lines like ['module load cuda']"),
    "worker_extra_args": (_is_lines, "a list of `dask worker` arguments"),
    "interface": (_is_word, "a network interface name like 'ib0'"),
    "local_directory": (_is_text, "a directory on the nodes like '$TMPDIR'"),
    "log_directory": (_is_text, "a directory the nodes and this machine share"),
    "python": (_is_text, "the path of Python on the nodes"),
    "death_timeout": (_is_duration, "seconds a worker waits for the scheduler"),
    "worker_timeout": (_is_duration, "a duration like 1800 or '30 minutes'"),
    "job_name": (_is_word, "a job name without spaces"),
    "n_workers": (lambda v: _is_int(v, 1), "a number of jobs ≥ 1"),
    "minimum": (lambda v: _is_int(v, 0), "a number of jobs ≥ 0"),
    "maximum": (lambda v: _is_int(v, 1), "a number of jobs ≥ 1"),
    "dashboard_address": (_is_word, "an address like '127.0.0.1:8787'"),
    "security": (lambda v: True, ""),
}
#: options passed straight to dask-jobqueue (their meaning is theirs); the rest are ours
PASSED = ("cores", "memory", "processes", "walltime", "queue", "account", "job_extra_directives",
          "job_script_prologue", "interface", "local_directory", "log_directory", "python", "death_timeout",
          "job_name")
DEFAULTS: dict[str, Any] = {"cores": 1, "memory": "4GB", "processes": 1, "walltime": "01:00:00",
                            "job_name": "fmri2img"}
#: how long work may wait with no worker connected (a batch queue can be slow: raise it on busy clusters)
WORKER_TIMEOUT = "30 minutes"
#: what the SLURM and PBS directives call the queue
ALIASES = {"partition": "queue"}


@dataclass(frozen=True)
class QueueKind:
    """One batch system: its dask-jobqueue classes, commands and directives."""

    name: str
    job_class: str
    cluster_class: str
    #: the submit command, the command that lists jobs' states (job ids appended) and how a person asks
    submit: str
    status: tuple
    status_hint: str
    #: the states ``status`` lists for a job that has not ended, and the words of its "no such job" error
    #: (empty: the watch does not ask the batch system whether a job ended)
    active_states: tuple
    gone: str
    #: options this kind does not take (with the reason the error gives)
    refused: Mapping[str, str]
    #: directives for gpus=N and qos=Q ({n}/{q} filled in), None where the site decides
    gpu_directive: str | None
    qos_directive: str | None
    #: the files a job's output lands in: (log_directory, job_name, job_id) → paths
    log_files: Callable[[str, str, str], list]
    #: the line the batch system writes into a job's log when it ends the job (walltime, cancelled)
    end_line: re.Pattern

    def load(self, which: str):
        module, _, name = getattr(self, which).rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # pragma: no cover - the [hpc] extra is installed in CI
            raise JobQueueError(f"cluster spec {self.name!r} needs dask-jobqueue: pip install 'fmri2img[hpc]'") from None

    def options(self) -> tuple:
        return tuple(k for k in CHECKS if k not in self.refused)


KINDS: dict[str, QueueKind] = {
    "slurm": QueueKind(
        "slurm", "dask_jobqueue.slurm.SLURMJob", "dask_jobqueue.SLURMCluster", "sbatch",
        ("squeue", "-h", "-o", "%i %T %r", "-j"), "squeue -j {ids}",
        ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
         "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"), "Invalid job id", {}, "--gres=gpu:{n}", "--qos={q}",
        lambda d, name, jid: [f"{d}/{name}-{jid}.err", f"{d}/{name}-{jid}.out"],
        re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED")),  # slurmstepd's line: time limit, scancel, preemption
    "pbs": QueueKind(
        "pbs", "dask_jobqueue.pbs.PBSJob", "dask_jobqueue.PBSCluster", "qsub", ("qstat", "-x"), "qstat -x {ids}", (), "",
        {"qos": "qos is a SLURM option; give your PBS site's directive in job_extra_directives"},
        None, None, lambda d, name, jid: [f"{d}/{name}.o{jid.split('.')[0]}", f"{d}/{name}.e{jid.split('.')[0]}"],
        re.compile(r"PBS: job killed", re.I)),
}


def option_names(kind: str) -> set:
    """Every option name ``kind`` takes (incl. the ``partition`` alias)."""
    return set(KINDS[kind].options()) | set(ALIASES)


def job_options(kind: str, options: Mapping[str, Any]) -> tuple[dict, dict]:
    """Check ``options`` and split them: (arguments of the dask-jobqueue Job, our own options).

    Raises
    ------
    JobQueueError
        An unknown option or a bad value (named, with what is expected), or bad scaling bounds.
    """
    entry = KINDS[kind]
    options = {ALIASES.get(k, k): _listed(k, v) for k, v in options.items()}
    for name in sorted(set(options) & set(entry.refused)):
        raise JobQueueError(f"cluster option {name}: {entry.refused[name]}")
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise JobQueueError(f"cluster spec {kind!r}: unknown option(s) {unknown}; valid options are "
                            f"{sorted(option_names(kind))}")
    for name, value in options.items():
        check, expected = CHECKS[name]
        if not check(value):
            raise JobQueueError(f"cluster option {name}: expected {expected}, got {value!r}")
    job = {**DEFAULTS, **{k: options[k] for k in PASSED if k in options}}
    own = {k: v for k, v in options.items() if k not in PASSED}
    _check_together(kind, job, own)
    job["job_extra_directives"] = _directives(entry, job, own)
    extra = list(own.get("worker_extra_args") or [])
    if own.get("gpus"):
        extra += ["--resources", f"GPU={own['gpus']}"]
    job["worker_extra_args"] = extra
    return job, own


def _listed(name: str, value: Any) -> Any:
    """A list option given as one string (``--cluster-option job_extra_directives=--exclusive``) → a list."""
    if isinstance(value, str) and name in ("job_extra_directives", "job_script_prologue"):
        return [value]
    if isinstance(value, str) and name == "worker_extra_args":
        return shlex.split(value)
    return value


def _check_together(kind: str, job: dict, own: dict) -> None:
    if not _WALLTIME[kind].match(job["walltime"]):
        form = "'HH:MM:SS', 'D-HH:MM:SS' or minutes" if kind == "slurm" else "'HH:MM:SS' or seconds"
        raise JobQueueError(f"cluster option walltime: expected {form}, got {job['walltime']!r}")
    if job["processes"] > job["cores"]:
        raise JobQueueError(f"cluster options processes={job['processes']} > cores={job['cores']}: each worker "
                            f"process needs at least one core; raise cores or lower processes")
    if own.get("gpus") and job["processes"] > 1:
        raise JobQueueError(f"cluster options gpus={own['gpus']} with processes={job['processes']}: every worker "
                            f"process of a job would see all its GPUs; use processes = 1 for GPU jobs")
    for d in job.get("job_extra_directives") or []:
        if d.lstrip().startswith("#"):
            raise JobQueueError(f"cluster option job_extra_directives: give {d!r} without its '#SBATCH'/'#PBS' "
                                f"prefix (it is added)")
    lo, hi = own.get("minimum"), own.get("maximum")
    if (lo is None) != (hi is None):
        raise JobQueueError("cluster options minimum/maximum: give both (adaptive scaling between them) or neither")
    if lo is not None and lo > hi:
        raise JobQueueError(f"cluster options minimum/maximum: expected 0 ≤ minimum ≤ maximum, maximum > 0; "
                            f"got minimum={lo!r}, maximum={hi!r}")
    if lo is not None and "n_workers" in own:
        raise JobQueueError("cluster options n_workers and minimum/maximum: give a fixed number of jobs "
                            "(n_workers) or adaptive bounds (minimum/maximum), not both")


def _directives(entry: QueueKind, job: dict, own: dict) -> list:
    given = list(job.get("job_extra_directives") or [])
    out = list(given)
    if own.get("gpus") and entry.gpu_directive and not any("gpu" in d for d in given):
        out.append(entry.gpu_directive.format(n=own["gpus"]))
    if own.get("qos") and entry.qos_directive:
        out.append(entry.qos_directive.format(q=own["qos"]))
    return out


def check_interface(name: str | None) -> None:
    """Refuse a network interface this machine does not have (the scheduler listens on it)."""
    if not name:
        return
    import psutil

    have = sorted(psutil.net_if_addrs())
    if name not in have:
        raise JobQueueError(f"cluster option interface: this machine has no interface {name!r} (it has {have}); "
                            f"the scheduler listens on it and the workers connect through it")


def job_script(kind: str, scheduler: str = "tcp://SCHEDULER:8786", **options: Any) -> str:
    """The batch script one worker job of ``kind`` ("slurm" or "pbs") would run.

    Nothing is started or submitted.

    Parameters
    ----------
    kind : {"slurm", "pbs"}
    scheduler : str
        The scheduler address written into the worker command.
    **options
        As for :func:`connect_jobqueue` (cores, memory, walltime, queue, account, gpus, ...).

    Returns
    -------
    str
        The script (``#SBATCH`` / ``#PBS`` directives, then the ``dask worker`` command).
    """
    if kind not in KINDS:
        raise JobQueueError(f"job-queue kind {kind!r} unknown; expected one of {sorted(KINDS)}")
    job, own = job_options(kind, options)
    security = make_security(own.get("security"))
    job_cls = KINDS[kind].load("job_class")
    return job_cls(scheduler=scheduler, name="worker", security=security, **job).job_script()


def connect_jobqueue(kind: str, **options: Any):
    """Start a SLURM/PBS cluster (scheduler here, workers as batch jobs) and return a Client.

    With ``minimum``/``maximum`` the cluster scales adaptively between that many
    jobs; otherwise ``n_workers`` jobs are submitted (default 1) and this waits for
    the first worker.  A :class:`~fmri2img.cluster.watch.JobWatch` watches the
    cluster for as long as it runs.

    Raises
    ------
    ClusterError
        The batch system refused a job, or no worker connected within ``worker_timeout``.
    """
    from distributed import Client

    from fmri2img.cluster.watch import JobWatch

    entry = KINDS[kind]
    job, own = job_options(kind, options)
    check_interface(job.get("interface"))
    if job.get("log_directory"):
        os.makedirs(os.path.expandvars(job["log_directory"]), exist_ok=True)
    security = make_security(own.get("security"))
    adaptive = "minimum" in own
    watch = JobWatch(entry, job=job, options=options, worker_timeout=own.get("worker_timeout", WORKER_TIMEOUT),
                     adaptive=adaptive)
    cluster = entry.load("cluster_class")(
        job_cls=watch.job_class(entry.load("job_class")), security=security,
        scheduler_options={"dashboard_address": own.get("dashboard_address", "127.0.0.1:8787")}, **job,
    )
    watch.attach(cluster)
    logger.info("%s cluster: %s; worker job logs in %s", kind, secrets.redact(
        {**job, **{k: v for k, v in own.items() if k != "security"}}), job.get("log_directory") or "the job's cwd")
    logger.debug("%s job script:\n%s", kind, "\n".join(secrets.redact({"s": cluster.job_script().splitlines()})["s"]))
    if adaptive:
        cluster.adapt(minimum=own["minimum"], maximum=own["maximum"])
    else:
        cluster.scale(jobs=int(own.get("n_workers") or 1))
    try:
        client = Client(cluster, security=security)
    except Exception:
        if watch.failure is None:  # the watch closes the cluster when it fails; otherwise this does
            cluster.close(timeout=10)
            raise
        raise watch.failure from None
    if not adaptive or own["minimum"] > 0:
        watch.wait_for_workers(client)
    return client
