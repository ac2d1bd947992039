"""The cluster's errors and the few helpers every cluster module stands on.

A leaf of :mod:`fmri2img.cluster` (it imports no other cluster module), so that
:mod:`~fmri2img.cluster.connect`, :mod:`~fmri2img.cluster.jobqueue`, :mod:`~fmri2img.cluster.watch`
and :mod:`~fmri2img.cluster.faults` can all use them without importing each other back.
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["GPU", "WATCH_ATTR", "ClusterError", "JobSubmitError", "SchedulerLost", "WorkerKilled",
           "cluster_failure", "close_quietly"]

#: the resource name GPU workers advertise and GPU stages ask for
GPU = "GPU"
#: the attribute of a cluster that holds its watch (:class:`fmri2img.cluster.watch.JobWatch`)
WATCH_ATTR = "_fmri2img_watch"


class ClusterError(RuntimeError):
    """A cluster could not be started or reached; the message says how to fix it."""


class JobSubmitError(RuntimeError):
    """The batch system refused a worker job (reported once by the watch, not as a traceback)."""


class SchedulerLost(RuntimeError):
    """The Dask scheduler went away while a stage ran; the store is resumable."""


class WorkerKilled(RuntimeError):
    """Workers died again and again running one task: which task, where, the likely cause and the fix."""


def cluster_failure(client: Any) -> ClusterError | None:
    """The error that ended ``client``'s cluster, when its watch ended it."""
    watch = getattr(getattr(client, "cluster", None), WATCH_ATTR, None)
    return None if watch is None else watch.failure


def close_quietly(client: Any, timeout: float = 5) -> None:
    """Close ``client`` (and a cluster it owns) without waiting long on a vanished scheduler."""
    cluster = getattr(client, "cluster", None)
    try:
        client.close(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - closing after a failure must not mask the failure
        logger.debug("closing the client: %s", exc)
    if cluster is not None:
        try:
            cluster.close(timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            logger.debug("closing the cluster: %s", exc)
