"""Kubernetes clusters through the dask-kubernetes operator (``pip install 'fmri2img[k8s]'``).

The cluster is a ``DaskCluster`` resource: one scheduler pod and ``n_workers``
worker pods running an image with fmri2img installed.  Options (the
``[cluster.options]`` table)::

    image = "ghcr.io/my-lab/fmri2img:0.1"
    namespace = "nsd"
    n_workers = 4
    cpu = "4"                 # per worker pod (requests = limits)
    memory = "16Gi"
    gpus = 1                  # per worker pod: nvidia.com/gpu limit and --resources GPU=N
    env = {AWS_PROFILE = "lab"}
    minimum = 0               # adaptive scaling (the operator's autoscaler)
    maximum = 20

:func:`kubernetes_spec` returns the ``DaskCluster`` manifest as a dict without
contacting any cluster; that is what the tests check.
"""
from __future__ import annotations

from fmri2img.storage import secrets

import copy
import logging
import re
from typing import Any, Mapping


logger = logging.getLogger(__name__)

OPTIONS: dict[str, Any] = {
    "name": "fmri2img",
    "image": "ghcr.io/dask/dask:latest",
    "namespace": None,
    "n_workers": 2,
    "threads_per_worker": 1,
    "cpu": "1",
    "memory": "4Gi",
    "gpus": 0,
    "env": None,
    "scheduler_cpu": "1",
    "scheduler_memory": "2Gi",
    "minimum": None,
    "maximum": None,
    "idle_timeout": 0,
}
#: the extended resource name the NVIDIA device plugin advertises
GPU_RESOURCE = "nvidia.com/gpu"


#: a DNS-1123 label (names of the DaskCluster and its namespace) and a resource quantity
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^\+?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[numkMGTPE]|[KMGTPE]i)?$")


class KubernetesError(ValueError):
    """A Kubernetes option is unknown or invalid; the message names it."""


def _check(options: Mapping[str, Any]) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise KubernetesError(f"cluster spec 'kubernetes': unknown option(s) {unknown}; valid options are "
                              f"{sorted(OPTIONS)}")
    opts = {**OPTIONS, **options}
    for key in ("n_workers", "threads_per_worker", "gpus"):
        value = opts[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "threads_per_worker" else 0):
            raise KubernetesError(f"cluster option {key}: expected a non-negative integer, got {value!r}")
    if (opts["minimum"] is None) != (opts["maximum"] is None):
        raise KubernetesError("cluster options minimum/maximum: give both (adaptive scaling between them) or neither")
    if opts["env"] is not None and not isinstance(opts["env"], Mapping):
        raise KubernetesError(f"cluster option env: expected a table NAME = value, got {opts['env']!r}")
    for key in ("name", "namespace"):
        value = opts[key]
        if value is not None and not (isinstance(value, str) and len(value) <= 63 and _DNS_LABEL.match(value)):
            raise KubernetesError(f"cluster option {key}: expected a Kubernetes name (lower-case letters, digits and "
                                  f"'-', starting and ending with a letter or digit, at most 63), got {value!r}")
    for key in ("cpu", "memory", "scheduler_cpu", "scheduler_memory"):
        if not _QUANTITY.match(str(opts[key])):
            raise KubernetesError(f"cluster option {key}: expected a Kubernetes quantity like '4', '500m' or "
                                  f"'16Gi', got {opts[key]!r}")
    for key in ("minimum", "maximum", "idle_timeout"):
        value = opts[key]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise KubernetesError(f"cluster option {key}: expected a non-negative integer, got {value!r}")
    if opts["minimum"] is not None and opts["minimum"] > opts["maximum"]:
        raise KubernetesError(f"cluster options minimum/maximum: expected minimum ≤ maximum, got "
                              f"minimum={opts['minimum']}, maximum={opts['maximum']}")
    if not isinstance(opts["image"], str) or not opts["image"].strip():
        raise KubernetesError(f"cluster option image: expected an image reference like "
                              f"'ghcr.io/my-lab/fmri2img:0.1', got {opts['image']!r}")
    return opts


def kubernetes_spec(**options: Any) -> dict:
    """The ``DaskCluster`` manifest (a dict) for ``options``; contacts no cluster.

    GPU workers get ``nvidia.com/gpu`` limits and advertise ``--resources GPU=N``
    to Dask, so GPU stages land only on them; the scheduler pod gets its own small
    resources (never a GPU).  Workers run single-process ``dask worker`` with the
    given threads.

    Returns
    -------
    dict
        ``{"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster", ...}``.
    """
    from dask_kubernetes.operator import make_cluster_spec

    opts = _check(options)
    limits = {"cpu": str(opts["cpu"]), "memory": str(opts["memory"])}
    if opts["gpus"]:
        limits[GPU_RESOURCE] = str(opts["gpus"])
    env = [{"name": str(k), "value": str(v)} for k, v in (opts["env"] or {}).items()]
    spec = make_cluster_spec(
        name=opts["name"], image=opts["image"], n_workers=opts["n_workers"],
        resources={"requests": dict(limits), "limits": dict(limits)}, env=env,
        idle_timeout=opts["idle_timeout"],
    )
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    worker["args"] += ["--nthreads", str(opts["threads_per_worker"]), "--memory-limit", "auto"]
    if opts["gpus"]:
        worker["args"] += ["--resources", f"GPU={opts['gpus']}"]
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    sched_res = {"cpu": str(opts["scheduler_cpu"]), "memory": str(opts["scheduler_memory"])}
    scheduler["resources"] = {"requests": dict(sched_res), "limits": copy.deepcopy(sched_res)}
    if opts["namespace"]:
        spec["metadata"]["namespace"] = opts["namespace"]
    return spec


def connect_kubernetes(spec: str = "kubernetes", **options: Any):
    """Create the ``DaskCluster`` in the current kube context and return a Client."""
    from distributed import Client

    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:  # pragma: no cover - the [k8s] extra is installed in CI
        raise KubernetesError("cluster spec 'kubernetes' needs dask-kubernetes: pip install 'fmri2img[k8s]'") from None
    manifest = kubernetes_spec(**options)
    opts = _check(options)
    logger.info("kubernetes cluster %s: %s", opts["name"], secrets.redact(options))
    cluster = KubeCluster(custom_cluster_spec=manifest, namespace=opts["namespace"])
    if opts["minimum"] is not None:
        cluster.adapt(minimum=opts["minimum"], maximum=opts["maximum"])
    return Client(cluster)
