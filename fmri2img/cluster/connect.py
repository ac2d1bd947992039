"""``connect(spec, **options)`` → a :class:`distributed.Client`.

Specs (a registry, one factory per kind; each takes the options it needs and
refuses the others by name):

``"local"`` (default)
    A :class:`distributed.LocalCluster` sized to the machine: one single-threaded
    worker process per core, memory split evenly, scheduler and dashboard bound
    to 127.0.0.1.  ``gpu_workers=N`` (or ``"auto"``: one per visible CUDA device)
    adds workers that advertise the ``GPU`` resource, each pinned to its device.
``"tcp://host:port"`` / ``"tls://host:port"``
    An existing scheduler (``dask scheduler`` + ``dask worker``, or one started by
    a lab's own tooling); ``security`` gives the TLS files for ``tls://``.
``"slurm"`` / ``"pbs"``
    Workers as batch jobs through dask-jobqueue (:mod:`fmri2img.cluster.jobqueue`),
    fixed or adaptive, watched by :mod:`fmri2img.cluster.watch`: a refused job, work
    waiting ``worker_timeout`` for a worker, or a job that ends before any task
    finished ends the run with one :class:`ClusterError`; other ended jobs are replaced.
    Job logs go to ``logs`` (the command line: ``<outputs>/cluster-logs``).
``"kubernetes"``
    A ``DaskCluster`` through the dask-kubernetes operator
    (:mod:`fmri2img.cluster.kubernetes`).

:func:`connect_section` takes the ``[cluster]`` configuration table instead.
"""
from __future__ import annotations

import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fmri2img.cluster.errors import GPU, ClusterError
from fmri2img.cluster.security import make_security
from fmri2img.storage import secrets
from fmri2img.storage import urls

logger = logging.getLogger(__name__)



def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """CUDA devices this machine exposes (0 when torch sees none or is absent)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _local(spec: str = "local", *, n_workers: int = 0, threads_per_worker: int = 1, memory_limit: str = "auto",
           dashboard_address: str = "127.0.0.1:8787", processes: bool = True, gpu_workers: int | str = 0,
           security: Any = None):
    """A LocalCluster on this machine (loopback only), with ``gpu_workers`` extra GPU workers."""
    from distributed import Client, LocalCluster
    from distributed.system import MEMORY_LIMIT

    n_gpu = visible_gpus() if gpu_workers == "auto" else gpu_workers
    if not isinstance(n_gpu, int) or isinstance(n_gpu, bool) or n_gpu < 0:
        raise ClusterError(f"cluster option gpu_workers: expected a number ≥ 0 or 'auto', got {gpu_workers!r}")
    n_cpu = n_workers or (max(1, _cores() // max(1, threads_per_worker)) if not n_gpu else 0)
    total = n_cpu + n_gpu
    if memory_limit == "auto":
        memory_limit = str(MEMORY_LIMIT // max(total, 1))
    sec = make_security(security)
    kwargs: dict[str, Any] = {"security": sec} if sec is not None else {}
    if processes:  # in-process clusters talk over inproc://, which takes no host
        kwargs["host"] = ("tls://" if sec is not None else "") + _host_of(dashboard_address)
    with warnings.catch_warnings():
        # "Port 8787 is already in use ... Hosting the HTTP server on port N instead": the dashboard
        # moves to a free port, and the CLI prints the link with the port it really got
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
        cluster = LocalCluster(
            n_workers=0, threads_per_worker=threads_per_worker, processes=processes,
            memory_limit=memory_limit, dashboard_address=dashboard_address, **kwargs,
        )
    _add_workers(cluster, n_cpu, n_gpu, processes)
    client = Client(cluster, security=sec)
    client.wait_for_workers(total, timeout=120)
    return client


def _host_of(address: str) -> str:
    host = address.rsplit(":", 1)[0] if ":" in address else ""
    return host or "127.0.0.1"


def _add_workers(cluster, n_cpu: int, n_gpu: int, processes: bool) -> None:
    """Give ``cluster`` ``n_cpu`` plain workers and ``n_gpu`` workers with resources {GPU: 1}."""
    base = cluster.new_spec
    spec = {i: base for i in range(n_cpu)}
    for i in range(n_gpu):
        options = {**base["options"], "resources": {GPU: 1}}
        if processes:  # each GPU worker process sees its own device as cuda:0
            options["env"] = {"CUDA_VISIBLE_DEVICES": str(i)}
        spec[f"gpu-{i}"] = {"cls": base["cls"], "options": options}
    cluster._i = n_cpu  # next automatic worker name after ours
    cluster.worker_spec.update(spec)
    cluster.scale(len(cluster.worker_spec))


def _address(spec: str, *, timeout: str = "20s", security: Any = None):
    """A Client of the running scheduler at ``spec``."""
    from distributed import Client

    sec = make_security(security)
    if spec.startswith("tls://") and sec is None:
        raise ClusterError(f"{spec} is a TLS address but no TLS files are configured: set [cluster.security] "
                           f"ca_file, cert_file and key_file (or use the scheduler's tcp:// address)")
    try:
        return Client(spec, timeout=timeout, security=sec)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {secrets.redact(spec)} ({type(exc).__name__}: {exc}); "
            f"start one with `dask scheduler` and workers with `dask worker {secrets.redact(spec)}`, "
            f"or use --cluster local"
        ) from None


def _slurm(spec: str = "slurm", **options: Any):
    from fmri2img.cluster.jobqueue import connect_jobqueue

    return connect_jobqueue("slurm", **options)


def _pbs(spec: str = "pbs", **options: Any):
    from fmri2img.cluster.jobqueue import connect_jobqueue

    return connect_jobqueue("pbs", **options)


def _kubernetes(spec: str = "kubernetes", **options: Any):
    from fmri2img.cluster.kubernetes import connect_kubernetes

    return connect_kubernetes(spec, **options)


def _jobqueue_names(kind: str) -> Callable[[], set]:
    def names() -> set:
        from fmri2img.cluster.jobqueue import option_names

        return option_names(kind)

    return names


def _jobqueue_check(kind: str) -> Callable[[Mapping[str, Any]], Any]:
    def check(options: Mapping[str, Any]) -> Any:
        from fmri2img.cluster.jobqueue import job_options

        return job_options(kind, options)

    return check


def _kubernetes_names() -> set:
    from fmri2img.cluster.kubernetes import OPTIONS

    return set(OPTIONS)


def _kubernetes_check(options: Mapping[str, Any]) -> Any:
    from fmri2img.cluster.kubernetes import _check

    return _check(options)


@dataclass(frozen=True)
class ClusterKind:
    """One deployment kind: its factory and the option names it accepts."""

    factory: Callable[..., Any]
    #: option names; ``None``: the factory's keyword-only parameters
    names: Callable[[], set] | None = None
    #: checks the options' values (raises ValueError naming the option); ``None``: the factory checks
    check: Callable[[Mapping[str, Any]], Any] | None = None
    #: the flat ``[cluster]`` keys (:data:`FLAT_KEYS`) this kind takes; ``None``: those among its options
    flat: tuple | None = None
    #: the option that says where worker job logs go (``connect(logs=...)`` fills it in)
    log_option: str | None = None

    def option_names(self) -> set:
        if self.names is not None:
            return self.names()
        params = inspect.signature(self.factory).parameters.values()
        return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


#: cluster kind (the spec, or the scheme of an address) → how to connect
CLUSTER_KINDS: dict[str, ClusterKind] = {
    "local": ClusterKind(_local),
    "tcp": ClusterKind(_address),
    "tls": ClusterKind(_address),
    "slurm": ClusterKind(_slurm, _jobqueue_names("slurm"), _jobqueue_check("slurm"), ("n_workers", "dashboard_address"),
                         "log_directory"),
    "pbs": ClusterKind(_pbs, _jobqueue_names("pbs"), _jobqueue_check("pbs"), ("n_workers", "dashboard_address"),
                       "log_directory"),
    "kubernetes": ClusterKind(_kubernetes, _kubernetes_names, _kubernetes_check),
}


def kind_of(spec: str) -> str:
    """``"tcp://h:p"`` → ``"tcp"``; ``"slurm"`` → ``"slurm"``."""
    if "://" in spec:
        return spec.split("://", 1)[0]
    return spec


def check_options(spec: str, options: Mapping[str, Any]) -> ClusterKind:
    """The kind of ``spec``, after checking that it takes every name in ``options``.

    Starts nothing; the configuration validator calls it too.

    Raises
    ------
    ClusterError
        An unknown spec, or options the kind does not use (named, with the valid ones).
    """
    kind = kind_of(spec or "local")
    try:
        entry = CLUSTER_KINDS[kind]
    except KeyError:
        raise ClusterError(
            f"unknown cluster spec {spec!r}; expected one of {sorted(CLUSTER_KINDS)} "
            f"(e.g. 'local', 'slurm', 'kubernetes' or 'tcp://10.0.0.5:8786')"
        ) from None
    valid = entry.option_names()
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ClusterError(f"cluster spec {kind!r} does not take option(s) {unknown}; "
                           f"valid options are {sorted(valid)} (check [cluster] in the configuration)")
    return entry


def connect(spec: str = "local", *, logs: str | None = None, command: bool = False, **options: Any):
    """Start or reach a Dask cluster and return a Client.

    Parameters
    ----------
    spec : str
        ``"local"``, ``"slurm"``, ``"pbs"``, ``"kubernetes"``, or a scheduler
        address ``"tcp://host:port"`` / ``"tls://host:port"``.
    logs : str, optional
        A local directory for the worker jobs' logs of kinds that write them
        (slurm, pbs), unless the options name one, and for a local cluster's
        worker log (:mod:`fmri2img.cluster.workerlog`); the command line passes
        ``<outputs>/cluster-logs``.
    command : bool
        The caller is the command line: at its default verbosity the cluster's records (its
        workers', and the scheduler's in this process) go to ``logs``, not the console.
    **options
        The options of that kind (see :data:`CLUSTER_KINDS` and the kind's module);
        unknown ones are refused by name.  ``security`` (a table of TLS files or a
        :class:`distributed.security.Security`) is accepted by every kind.

    Returns
    -------
    distributed.Client

    Raises
    ------
    ClusterError
        A bad spec or option, or a cluster that cannot start (the message says what to check).
    """
    entry = check_options(spec, options)
    if logs and entry.log_option and entry.log_option not in options:
        options = {**options, entry.log_option: os.path.abspath(logs)}
    client = entry.factory(spec or "local", **options)
    from fmri2img.cluster.workerlog import register

    register(client, kind_of(spec or "local"), logs, command=command)  # workers redact, log as the command does
    logger.info("connected to %s cluster (%s), dashboard %s", kind_of(spec or "local"),
                secrets.redact(options), dashboard_link(client))
    return client


def connect_section(section: Mapping[str, Any], *, logs: str | None = None, command: bool = False):
    """Connect from the ``[cluster]`` configuration table (see :func:`section_options`)."""
    spec, options = section_options(section)
    return connect(spec, logs=logs, command=command, **options)


def logs_under(outputs_url: str) -> str | None:
    """``<outputs>/cluster-logs`` when the outputs are a local directory (batch jobs write their logs
    there); ``None`` for remote outputs (the jobs then write them where they were submitted)."""
    scheme, rest = urls.split_url(outputs_url)
    if scheme not in ("", "file"):
        return None
    return os.path.join(os.path.abspath(os.path.expanduser(rest)), "cluster-logs")


#: flat ``[cluster]`` keys: the local cluster's settings, also understood by the kinds that take them
FLAT_KEYS = ("n_workers", "threads_per_worker", "memory_limit", "dashboard_address", "processes", "gpu_workers")


def section_options(section: Mapping[str, Any]) -> tuple[str, dict]:
    """``[cluster]`` table → ``(spec, options)`` for :func:`connect`.

    The table holds ``spec``; flat local-cluster keys (:data:`FLAT_KEYS`), passed
    to the kinds that take them; an ``options`` table of kind-specific options,
    all of which must be valid for the kind; and a ``security`` table of TLS files.
    """
    spec = str(section.get("spec") or "local")
    entry = check_options(spec, {})
    flat = entry.option_names() if entry.flat is None else set(entry.flat)
    options = {k: section[k] for k in FLAT_KEYS if k in section and k in flat and section[k] is not None}
    if options.get("n_workers") == 0:  # 0 means "the kind's default" (local: one per core)
        del options["n_workers"]
    options.update(dict(section.get("options") or {}))
    if section.get("security"):
        options["security"] = section["security"]
    check_options(spec, options)
    if entry.check is not None:
        try:
            entry.check(options)
        except ValueError as exc:
            raise ClusterError(str(exc)) from None
    return spec, options


def options_help() -> str:
    """Each kind's option names, for ``--help`` (from the registry, so it never goes stale)."""
    groups: dict[tuple, list] = {}
    for kind, entry in CLUSTER_KINDS.items():
        if kind == "tls":
            continue
        names = tuple(sorted(entry.option_names() - {"security"}))
        groups.setdefault(names, []).append("tcp://, tls://" if kind == "tcp" else kind)
    return "; ".join(f"{'/'.join(kinds)}: {', '.join(names) or '(none)'}" for names, kinds in groups.items())


def dashboard_link(client) -> str:
    """The dashboard URL of ``client``'s cluster ('' when it has none)."""
    try:
        return client.dashboard_link or ""
    except Exception:  # noqa: BLE001 - a scheduler without a dashboard
        return ""
