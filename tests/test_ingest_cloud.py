"""Ingest streamed from a loopback S3 server (moto) and on a Dask cluster equals local ingest."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from tests.cloud_helpers import make_bucket, s3_options, upload_dir
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401

GROUPS = ["stimuli", "subjects/subj01/betas", "subjects/subj01/train", "subjects/subj01/test",
          "subjects/subj01/rois"]


@pytest.fixture(scope="module")
def local_store(mini_nsd, tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("local") / "store.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    return store


def _assert_same(a: Store, b: Store):
    for group in GROUPS:
        da_ = xr.open_zarr(a.zarr_store(), group=group, consolidated=False).drop_attrs()
        db_ = xr.open_zarr(b.zarr_store(), group=group, consolidated=False).drop_attrs()
        xr.testing.assert_identical(da_.load(), db_.load())


@pytest.mark.slow
def test_ingest_from_s3_equals_local(mini_nsd, local_store, s3_endpoint, tmp_path):
    opts = s3_options(s3_endpoint)
    upload_dir(mini_nsd, "s3://nsd-mirror/root", opts)
    source = Source("s3://nsd-mirror/root", opts)
    # the store itself on S3 too: nothing touches local disk
    make_bucket("s3://lab-store", opts)
    store = Store("s3://lab-store/nsd.zarr", opts)
    before = {p.name for p in tmp_path.iterdir()}
    ingest(store, source, 1, SESSIONS, progress=False)
    assert {p.name for p in tmp_path.iterdir()} == before
    _assert_same(local_store, store)
    train = store.open_dataset("subjects/subj01/train")
    assert opts["secret"] not in repr(train.attrs) and opts["key"] not in repr(train.attrs)


@pytest.mark.slow
def test_ingest_on_local_cluster_equals_serial(mini_nsd, local_store, tmp_path):
    from distributed import Client, LocalCluster

    store = Store(str(tmp_path / "cluster.zarr"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        summary = ingest(store, Source(str(mini_nsd)), 1, SESSIONS, client=client, progress=False)
    assert summary["sessions_written"] == len(SESSIONS)
    _assert_same(local_store, store)
