"""Dask clusters: ``connect(spec, **options)`` returns a Client for this machine, an existing
scheduler, SLURM/PBS (dask-jobqueue) or Kubernetes (dask-kubernetes)."""
from fmri2img.cluster.connect import (
    CLUSTER_KINDS,
    GPU,
    ClusterError,
    check_options,
    connect,
    connect_section,
    dashboard_link,
    logs_under,
    section_options,
)
from fmri2img.cluster.jobqueue import job_script
from fmri2img.cluster.kubernetes import kubernetes_spec
from fmri2img.cluster.security import make_security
from fmri2img.cluster.errors import cluster_failure

__all__ = ["CLUSTER_KINDS", "GPU", "ClusterError", "check_options", "cluster_failure", "connect", "connect_section",
           "dashboard_link", "logs_under", "section_options", "job_script", "kubernetes_spec", "make_security"]
