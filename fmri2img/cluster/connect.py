"""``connect(spec)`` → a :class:`distributed.Client`.

Specs (a registry, one factory per kind):

``"local"`` (default)
    A :class:`distributed.LocalCluster` sized to the machine: one single-threaded
    worker process per core, memory split evenly, scheduler and dashboard bound
    to 127.0.0.1.
``"tcp://host:port"`` / ``"tls://host:port"``
    An existing scheduler (``dask scheduler`` + ``dask worker``, SLURM, Kubernetes).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

logger = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """A cluster could not be started or reached; the message says how to fix it."""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _local(spec: str, *, n_workers: int = 0, threads_per_worker: int = 1, memory_limit: str = "auto",
           dashboard_address: str = "127.0.0.1:8787", processes: bool = True, **kwargs: Any):
    from distributed import Client, LocalCluster

    n = n_workers or max(1, _cores() // max(1, threads_per_worker))
    host = dashboard_address.rsplit(":", 1)[0] if ":" in dashboard_address else "127.0.0.1"
    if processes:  # in-process clusters talk over inproc://, which takes no host
        kwargs.setdefault("host", host or "127.0.0.1")
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
        memory_limit=memory_limit, dashboard_address=dashboard_address, **kwargs,
    )
    return Client(cluster)


def _address(spec: str, *, timeout: str = "20s", security: Any = None, **_: Any):
    from distributed import Client

    try:
        return Client(spec, timeout=timeout, security=security)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {spec} ({exc}); start one with `dask scheduler` "
            f"and workers with `dask worker {spec}`, or use --cluster local"
        ) from None


#: cluster kind → factory(spec, **options) → Client
CLUSTER_KINDS: dict[str, Callable[..., Any]] = {
    "local": _local,
    "tcp": _address,
    "tls": _address,
}


def kind_of(spec: str) -> str:
    if "://" in spec:
        return spec.split("://", 1)[0]
    return spec


def connect(spec: str = "local", **options: Any):
    """Start or reach a Dask cluster and return a Client.

    Parameters
    ----------
    spec : str
        ``"local"`` or a scheduler address ``"tcp://host:port"`` / ``"tls://host:port"``.
    **options
        Passed to the factory of that kind (for ``local``: ``n_workers``,
        ``threads_per_worker``, ``memory_limit``, ``dashboard_address``, ``processes``).
    """
    kind = kind_of(spec or "local")
    try:
        factory = CLUSTER_KINDS[kind]
    except KeyError:
        raise ClusterError(
            f"unknown cluster spec {spec!r}; expected one of {sorted(CLUSTER_KINDS)} "
            f"(e.g. 'local' or 'tcp://10.0.0.5:8786')"
        ) from None
    client = factory(spec, **options)
    logger.info("connected to %s cluster, dashboard %s", kind, dashboard_link(client))
    return client


def dashboard_link(client) -> str:
    """The dashboard URL of ``client``'s cluster ('' when it has none)."""
    try:
        return client.dashboard_link or ""
    except Exception:  # noqa: BLE001 - a scheduler without a dashboard
        return ""
