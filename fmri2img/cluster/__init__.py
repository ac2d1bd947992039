"""Dask clusters: ``connect(spec)`` returns a Client for a local machine or an existing scheduler."""
from fmri2img.cluster.connect import CLUSTER_KINDS, ClusterError, connect, dashboard_link

__all__ = ["CLUSTER_KINDS", "ClusterError", "connect", "dashboard_link"]
