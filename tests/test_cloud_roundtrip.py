"""The store round-trips on every backend: local, file://, memory://, s3:// (moto),
gs:// (the GCS emulator) and gdrive:// (pydrive2 over an injected fake Drive).

One suite, run for every backend (STYLE.md: one suite per abstraction).
"""

from __future__ import annotations

import pickle
import uuid
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from fmri2img.storage.urls import check_writable, zarr_store
from tests.cloud_helpers import make_bucket

BACKENDS = ["local", "file", "memory", "s3", "gs", "gdrive"]


@pytest.fixture(params=BACKENDS)
def target(request, tmp_path):
    """``(url, storage_options)`` of a fresh, empty store location on one backend."""
    name = uuid.uuid4().hex[:8]
    if request.param == "local":
        return str(tmp_path / "store.zarr"), None
    if request.param == "file":
        return f"file://{tmp_path}/store.zarr", None
    if request.param == "memory":
        return f"memory://roundtrip-{name}/store.zarr", None
    if request.param == "s3":
        opts = request.getfixturevalue("s3_storage_options")
        make_bucket("s3://roundtrip", opts)
        return f"s3://roundtrip/{name}/store.zarr", opts
    if request.param == "gs":
        opts = request.getfixturevalue("gcs_storage_options")
        make_bucket("gs://roundtrip", opts)
        return f"gs://roundtrip/{name}/store.zarr", opts
    url, opts = request.getfixturevalue("gdrive_target")
    return f"{url}/{name}/store.zarr", opts


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    n_trial, n_voxel, n_image = 6, 5, 4
    return xr.Dataset(
        {
            "betas": (("trial", "voxel"), rng.standard_normal((n_trial, n_voxel)).astype("float32")),
            "stimuli": (("image", "y", "x", "rgb"), rng.integers(0, 256, (n_image, 3, 3, 3), dtype="uint8")),
        },
        coords={
            "trial": np.arange(n_trial),
            "session": ("trial", np.array(["s01", "s01", "s01", "s02", "s02", "s02"])),
            "image": np.array(["nsd-a", "nsd-b", "nsd-c", "nsd-d"]),
        },
        attrs={"units": "percent signal change"},
    ).chunk({"trial": 3, "voxel": 2, "image": 2})


def _to_zarr(ds: xr.Dataset, store, **kwargs):
    with warnings.catch_warnings():  # zarr warns that v3 string and consolidated specs are unstable
        warnings.simplefilter("ignore")
        return ds.to_zarr(store, group="a/b", zarr_format=3, **kwargs)


def _assert_plain_zarr_equal(store, expected: xr.Dataset) -> None:
    group = zarr.open_group(store, path="a/b", mode="r")
    np.testing.assert_array_equal(group["betas"][:], expected["betas"].values)
    np.testing.assert_array_equal(group["stimuli"][:], expected["stimuli"].values)
    assert group["stimuli"].dtype == np.uint8
    assert group["betas"].chunks == (3, 2)
    assert list(group["image"][:]) == list(expected["image"].values)


@pytest.mark.parametrize("consolidated", [False, True])
def test_dataset_roundtrip(target, consolidated):
    url, opts = target
    ds = _dataset()
    _to_zarr(ds, zarr_store(url, opts), mode="w", consolidated=consolidated)

    back = xr.open_zarr(zarr_store(url, opts, read_only=True), group="a/b", consolidated=consolidated)
    xr.testing.assert_identical(back.compute(), ds.compute())
    assert back["betas"].dtype == np.float32
    _assert_plain_zarr_equal(zarr_store(url, opts, read_only=True), ds)


def test_region_write_roundtrip(target):
    url, opts = target
    ds = _dataset()
    store = zarr_store(url, opts)
    _to_zarr(ds, store, mode="w", compute=False, consolidated=False)
    per_trial = ds[["betas"]]
    for start in (3, 0):  # out of order, one chunk row per call, like one task per region
        region = {"trial": slice(start, start + 3)}
        part = per_trial.isel(region).drop_vars("trial")
        _to_zarr(part, zarr_store(url, opts), mode="r+", region=region, consolidated=False)
    _to_zarr(ds[["stimuli"]].drop_vars("image"),
             zarr_store(url, opts), mode="r+", region={"image": slice(0, 4)}, consolidated=False)

    back = xr.open_zarr(zarr_store(url, opts), group="a/b", consolidated=False).compute()
    xr.testing.assert_identical(back, ds.compute())


def test_store_pickles_and_unpickled_store_writes(target):
    url, opts = target
    store = zarr_store(url, opts)
    arr = zarr.create_array(store, name="x", shape=(4,), chunks=(2,), dtype="int16")
    arr[:] = np.arange(4)

    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(zarr.open_array(clone, path="x", mode="r")[:], np.arange(4))
    zarr.open_array(clone, path="x", mode="r+")[2:] = [7, 8]
    np.testing.assert_array_equal(zarr.open_array(store, path="x", mode="r")[:], [0, 1, 7, 8])


def test_read_only_store_refuses_writes(target):
    url, opts = target
    zarr.create_array(zarr_store(url, opts), name="x", shape=(2,), dtype="int8")[:] = 1
    ro = zarr_store(url, opts, read_only=True)
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_array(ro, path="x", mode="r")[:] = 2
    np.testing.assert_array_equal(zarr.open_array(ro, path="x", mode="r")[:], [1, 1])


def test_check_writable_passes_and_leaves_nothing(target):
    url, opts = target
    check_writable(url, opts)
    store = zarr_store(url, opts)
    group = zarr.open_group(store, mode="a")
    assert list(group.keys()) == []
