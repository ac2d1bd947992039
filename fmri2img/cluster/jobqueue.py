"""SLURM and PBS clusters through dask-jobqueue (``pip install 'fmri2img[hpc]'``).

The client (a login node, a laptop with ssh tunnels) runs the scheduler; each
batch job runs one ``dask worker``.  Options (the ``[cluster.options]`` table)::

    cores = 8                 # per job (threads of its worker)
    memory = "32GB"           # per job
    walltime = "04:00:00"
    queue = "gpu"             # SLURM partition / PBS queue
    account = "lab-nsd"
    gpus = 1                  # per job: adds --resources GPU=N, so GPU stages land only there
    job_extra_directives = ["--gres=gpu:1"]
    minimum = 0               # adaptive scaling: jobs come and go with the work
    maximum = 20

:func:`job_script` returns the batch script without starting anything; that is
what the tests check (there is no SLURM here).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from fmri2img.cluster.security import make_security, redact_options

logger = logging.getLogger(__name__)

#: options passed straight to dask-jobqueue's Job classes (their meaning is theirs); each job runs
#: one worker process with ``cores`` threads
JOB_OPTIONS = ("cores", "memory", "walltime", "queue", "account", "job_extra_directives",
               "job_script_prologue", "local_directory", "log_directory", "python", "interface",
               "death_timeout", "job_name")
#: our own options
OWN_OPTIONS = ("gpus", "worker_extra_args", "n_workers", "minimum", "maximum", "dashboard_address", "security")
DEFAULTS: dict[str, Any] = {"cores": 1, "memory": "4GB", "processes": 1, "walltime": "01:00:00",
                            "job_name": "fmri2img"}
#: kind → the directive that asks the batch system for ``{n}`` GPUs (PBS sites differ: give
#: yours in ``job_extra_directives``, e.g. ``-l select=1:ngpus=1``)
GPU_DIRECTIVES: dict[str, str | None] = {"slurm": "--gres=gpu:{n}", "pbs": None}
#: what the SLURM and PBS directives call the queue
_QUEUE_ALIASES = {"partition": "queue"}


class JobQueueError(ValueError):
    """A job-queue option is unknown or inconsistent; the message names it."""


def _job_class(kind: str):
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:  # pragma: no cover - the [hpc] extra is installed in CI
        raise JobQueueError(f"cluster spec {kind!r} needs dask-jobqueue: pip install 'fmri2img[hpc]'") from None
    from dask_jobqueue.pbs import PBSJob
    from dask_jobqueue.slurm import SLURMJob

    return {"slurm": SLURMJob, "pbs": PBSJob}[kind]


def _cluster_class(kind: str):
    from dask_jobqueue import PBSCluster, SLURMCluster

    return {"slurm": SLURMCluster, "pbs": PBSCluster}[kind]


#: job-queue kind → its Job class loader (for the scripts) and Cluster class loader
KINDS: dict[str, tuple[Callable[[str], Any], Callable[[str], Any]]] = {
    "slurm": (_job_class, _cluster_class),
    "pbs": (_job_class, _cluster_class),
}


def job_options(kind: str, options: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split and check ``options``: (arguments of the jobqueue Job, our own options).

    Raises
    ------
    JobQueueError
        An unknown option (named, with the valid ones), or bad scaling bounds.
    """
    options = {_QUEUE_ALIASES.get(k, k): v for k, v in options.items()}
    unknown = sorted(set(options) - set(JOB_OPTIONS) - set(OWN_OPTIONS))
    if unknown:
        raise JobQueueError(f"cluster spec {kind!r}: unknown option(s) {unknown}; valid options are "
                            f"{sorted(JOB_OPTIONS + OWN_OPTIONS + tuple(_QUEUE_ALIASES))}")
    own = {k: options[k] for k in OWN_OPTIONS if k in options}
    job = {**DEFAULTS, **{k: options[k] for k in JOB_OPTIONS if k in options}}
    gpus = own.get("gpus", 0)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise JobQueueError(f"cluster option gpus: expected a number of GPUs per job ≥ 0, got {gpus!r}")
    extra = list(own.get("worker_extra_args") or [])
    if gpus:
        extra += ["--resources", f"GPU={gpus}"]
        directive, given = GPU_DIRECTIVES.get(kind), list(job.get("job_extra_directives") or [])
        if directive and not any("gpu" in d for d in given):
            job["job_extra_directives"] = given + [directive.format(n=gpus)]
    job["worker_extra_args"] = extra
    lo, hi = own.get("minimum"), own.get("maximum")
    if (lo is None) != (hi is None):
        raise JobQueueError("cluster options minimum/maximum: give both (adaptive scaling between them) or neither")
    if lo is not None and not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi > 0):
        raise JobQueueError(f"cluster options minimum/maximum: expected 0 ≤ minimum ≤ maximum, maximum > 0; "
                            f"got minimum={lo!r}, maximum={hi!r}")
    return job, own


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
    job_cls = KINDS[kind][0](kind)
    return job_cls(scheduler=scheduler, name="worker", security=security, **job).job_script()


def connect_jobqueue(kind: str, **options: Any):
    """Start a SLURM/PBS cluster (scheduler here, workers as batch jobs) and return a Client.

    With ``minimum``/``maximum`` the cluster scales adaptively between that many
    jobs; otherwise ``n_workers`` jobs are submitted (default 1).
    """
    from distributed import Client

    job, own = job_options(kind, options)
    security = make_security(own.get("security"))
    dashboard = own.get("dashboard_address", "127.0.0.1:8787")
    cluster = KINDS[kind][1](kind)(
        security=security, scheduler_options={"dashboard_address": dashboard}, **job,
    )
    logger.info("%s cluster: %s", kind, redact_options({**job, **{k: v for k, v in own.items() if k != "security"}}))
    logger.debug("%s job script:\n%s", kind, "\n".join(redact_options({"s": cluster.job_script().splitlines()})["s"]))
    if "minimum" in own:
        cluster.adapt(minimum=own["minimum"], maximum=own["maximum"])
    else:
        cluster.scale(jobs=int(own.get("n_workers") or 1))
    return Client(cluster, security=security)
