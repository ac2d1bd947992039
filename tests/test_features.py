"""The features stage: partitioned extraction equals single-process extraction."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fmri2img.models.pixels import make_pixels_extractor
from fmri2img.pipeline.features import extract_features, feature_chunks
from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401


@pytest.fixture(scope="module")
def ingested(mini_nsd, tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("feat") / "store.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    return store


def _direct(store, side=16):
    stim = xr.open_zarr(store.url, group="stimuli", consolidated=False)
    return make_pixels_extractor(side=side).extract(stim.images.values, stim.image.values, 0)


def test_partitioned_equals_direct(ingested):
    extract_features(ingested, "pixels", {"side": 16}, images_per_task=7, progress=False)
    ds = xr.open_zarr(ingested.url, group="features/pixels", consolidated=False)
    assert ds.features.dims == ("image", "y", "x", "rgb") and ds.features.shape[1:] == (16, 16, 3)
    np.testing.assert_array_equal(ds.features.values, _direct(ingested))
    stim = xr.open_zarr(ingested.url, group="stimuli", consolidated=False)
    np.testing.assert_array_equal(ds.image.values, stim.image.values)
    assert ds.attrs["random_weights"] is False and ds.attrs["extractor"] == "pixels"
    again = extract_features(ingested, "pixels", {"side": 16}, images_per_task=7, progress=False)
    assert again["blocks_written"] == 0  # resumed: nothing to do


def test_changed_options_rewrite(ingested):
    extract_features(ingested, "pixels", {"side": 16}, images_per_task=7, progress=False)
    out = extract_features(ingested, "pixels", {"side": 8}, images_per_task=7, progress=False)
    assert out["blocks_written"] > 0
    ds = xr.open_zarr(ingested.url, group="features/pixels", consolidated=False)
    np.testing.assert_array_equal(ds.features.values, _direct(ingested, side=8))


@pytest.mark.slow
def test_local_cluster_equals_direct(ingested, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        extract_features(ingested, "pixels", {"side": 12}, images_per_task=9, client=client, progress=False)
    ds = xr.open_zarr(ingested.url, group="features/pixels", consolidated=False)
    np.testing.assert_array_equal(ds.features.values, _direct(ingested, side=12))


def test_feature_chunks_fit_budget():
    c = feature_chunks(8859, 128, (257, 768))
    assert c[0] == 128 and 4 * np.prod(c) <= 32 * 2**20 and c[2] == 768
    c = feature_chunks(8859, 128, (91168,))
    assert 4 * np.prod(c) <= 32 * 2**20 and c[1] < 91168
    assert feature_chunks(10, 128, (64, 64, 3)) == (10, 64, 64, 3)


def test_unknown_extractor_and_option(ingested):
    from fmri2img.models.extractors import ExtractorError

    with pytest.raises(ExtractorError, match=r"unknown feature extractor 'nope'; available"):
        extract_features(ingested, "nope", {}, progress=False)
    with pytest.raises(ExtractorError, match=r"pixels: unknown option\(s\) \['sid'\]"):
        extract_features(ingested, "pixels", {"sid": 3}, progress=False)
