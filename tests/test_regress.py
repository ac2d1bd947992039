"""The regress stage on mini-NSD: store-streamed ridge equals a direct in-memory fit."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.linear_model import Ridge

from fmri2img.pipeline import regress as regress_mod
from fmri2img.pipeline.features import extract_features
from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.pipeline.regress import load_model, regress
from fmri2img.ridge import ImageIdMismatchError
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401


@pytest.fixture(scope="module")
def prepared(mini_nsd, tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("reg") / "store.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    extract_features(store, "pixels", {"side": 8}, images_per_task=10, progress=False)
    return store


def _data(store):
    train = xr.open_zarr(store.url, group="subjects/subj01/train", consolidated=False)
    test = xr.open_zarr(store.url, group="subjects/subj01/test", consolidated=False)
    feats = xr.open_zarr(store.url, group="features/pixels", consolidated=False)
    return train, test, feats


def test_predictions_equal_sklearn(prepared):
    summary = regress(prepared, 1, "pixels", {"alpha": 500.0, "calibration": "none"}, progress=False)
    assert summary["alpha"] == 500.0
    train, test, feats = _data(prepared)
    Ytr = feats.features.sel(image=train.image.values).values.reshape(train.sizes["image"], -1)
    X = train.fmri.values.astype(np.float64)
    mu, sd = X.mean(0), X.std(0, ddof=1)
    sd[sd == 0] = 1
    ref = Ridge(alpha=500.0).fit((X - mu) / sd, Ytr).predict((test.fmri.values - mu) / sd)
    pred = xr.open_zarr(prepared.url, group="predictions/subj01/pixels", consolidated=False)
    np.testing.assert_array_equal(pred.image.values, test.image.values)
    assert pred.features.dims == ("image", "y", "x", "rgb")
    np.testing.assert_allclose(pred.features.values.reshape(len(ref), -1), ref, rtol=2e-3, atol=2e-4)


def test_torch_device_option_gives_the_numpy_predictions(prepared):
    pytest.importorskip("torch")
    regress(prepared, 1, "pixels", {"alpha": 500.0, "calibration": "test_batch"}, progress=False)
    want = xr.open_zarr(prepared.url, group="predictions/subj01/pixels", consolidated=False).features.values
    summary = regress(prepared, 1, "pixels", {"alpha": 500.0, "calibration": "test_batch", "device": "cpu"},
                      progress=False)
    assert summary["alpha"] == 500.0
    got = xr.open_zarr(prepared.url, group="predictions/subj01/pixels", consolidated=False).features.values
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_test_batch_calibration_and_decoding_beats_chance(prepared):
    regress(prepared, 1, "pixels", None, progress=False)  # Brain-Diffuser-style: GCV grid + test-batch calibration
    train, test, feats = _data(prepared)
    pred = xr.open_zarr(prepared.url, group="predictions/subj01/pixels", consolidated=False).features.values
    P = pred.reshape(len(pred), -1).astype(np.float64)
    Ytr = feats.features.sel(image=train.image.values).values.reshape(train.sizes["image"], -1)
    # calibration: each column has the train features' mean and std (ddof 0) across the test batch
    np.testing.assert_allclose(P.mean(0), Ytr.mean(0), atol=1e-4)
    np.testing.assert_allclose(P.std(0), Ytr.std(0), rtol=1e-3, atol=1e-4)
    gt = feats.features.sel(image=test.image.values).values.reshape(len(P), -1)
    r = np.corrcoef(gt, P)[: len(P), len(P):]  # rows GT, cols predictions
    ident = np.mean([(r[:, i] < r[i, i]).sum() / (len(P) - 1) for i in range(len(P))])
    assert ident > 0.7, ident  # two-way identification on simulated cortex; chance is 0.5


def test_resume_and_reload(prepared, monkeypatch):
    regress(prepared, 1, "pixels", {"alpha": 200.0, "calibration": "none", "target_batch": 48}, progress=False)
    full = xr.open_zarr(prepared.url, group="predictions/subj01/pixels", consolidated=False).features.values
    group = "predictions/subj01/pixels"
    regions = prepared.regions(group)
    # forget the records of two blocks, as if the run had been killed before them
    arr = prepared._progress_array(group)
    arr[regions[0].index] = 0
    arr[regions[-1].index] = 0
    calls = []
    real = regress_mod._write_block
    monkeypatch.setattr(regress_mod, "_write_block", lambda *a: calls.append(a[2].label) or real(*a))
    out = regress(prepared, 1, "pixels", {"alpha": 200.0, "calibration": "none", "target_batch": 48}, progress=False)
    assert out["refit"] is False and sorted(calls) == sorted([regions[0].label, regions[-1].label])
    again = xr.open_zarr(prepared.url, group=group, consolidated=False).features.values
    np.testing.assert_array_equal(again, full)
    est = load_model(prepared, 1, "pixels")
    _, test, _ = _data(prepared)
    np.testing.assert_allclose(np.asarray(est.predict(test.fmri.values)), full, rtol=1e-5, atol=1e-6)


def test_misaligned_images_and_bad_options(prepared, tmp_path):
    with pytest.raises(regress_mod.RegressError, match=r"unknown option\(s\) \['alhpa'\]"):
        regress(prepared, 1, "pixels", {"alhpa": 3}, progress=False)
    with pytest.raises(regress_mod.RegressError, match="run the features stage with extractor 'vdvae'"):
        regress(prepared, 1, "vdvae", None, progress=False)
    # a store whose features lack some train images
    other = Store(str(tmp_path / "o.zarr"))
    import shutil

    shutil.copytree(prepared.url, other.url)
    import zarr

    g = zarr.open_group(other.url, path="features/pixels", mode="a")
    ids = g["image"][:]
    ids[3] = 999_999
    g["image"][:] = ids
    with pytest.raises(ImageIdMismatchError, match="lacks 1 of subject 1's .* train images .*999999|first missing"):
        regress(other, 1, "pixels", {"alpha": 10.0}, progress=False)
