"""Template-first writes, region writes and completion records (fmri2img.storage.store)."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fmri2img.storage import schema
from fmri2img.storage.store import Region, Store, StoreError, regular_regions


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(str(tmp_path / "s.zarr"))
    return Store(f"memory://test-store-{id(request)}")


def _template(n=10, v=7):
    return schema.averaged_template(np.arange(n) * 3, np.arange(v) * 2, (4, 4, 4))


def test_template_then_regions_round_trip(store):
    tpl = _template()
    regions = regular_regions("voxel", 7, 3, "v")
    assert [(r.start, r.stop) for r in regions] == [(0, 3), (3, 6), (6, 7)]
    todo = store.ensure_template("subjects/subj01/train", tpl, regions)
    assert todo == regions
    assert store.progress("subjects/subj01/train") == (0, 3)
    rng = np.random.default_rng(0)
    full = rng.standard_normal((10, 7)).astype(np.float32)
    for r in regions:
        store.write_region("subjects/subj01/train", r, {"fmri": full[:, r.slice]})
    ds = xr.open_zarr(store.zarr_store(), group="subjects/subj01/train", consolidated=False)
    np.testing.assert_array_equal(ds.fmri.values, full)
    np.testing.assert_array_equal(ds.image.values, np.arange(10) * 3)
    assert ds.fmri.dims == ("image", "voxel")
    assert ds.fmri.attrs["units"] == "percent signal change"
    assert store.is_complete("subjects/subj01/train")


def test_records_survive_reopen_and_skip_done_regions(store):
    tpl = _template()
    regions = regular_regions("voxel", 7, 3, "v")
    store.ensure_template("g", tpl, regions)
    store.write_region("g", regions[1], {"fmri": np.ones((10, 3), np.float32)})
    # a region whose data was written but whose record was not (killed between the two) is redone
    store.write_region("g", regions[2], {"fmri": np.ones((10, 1), np.float32)}, mark_done=False)
    reopened = Store(store.url)
    todo = reopened.ensure_template("g", tpl, regions)
    assert [r.index for r in todo] == [0, 2]
    assert reopened.done_regions("g") == {1}


def test_changed_template_resets_records(store):
    regions = regular_regions("voxel", 7, 3, "v")
    store.ensure_template("g", _template(), regions)
    store.write_region("g", regions[0], {"fmri": np.ones((10, 3), np.float32)})
    todo = store.ensure_template("g", _template(n=11), regions)  # different images: not the same template
    assert len(todo) == 3
    assert store.done_regions("g") == set()


def test_region_shape_mismatch_is_refused_and_nothing_recorded(store):
    regions = regular_regions("voxel", 7, 3, "v")
    store.ensure_template("g", _template(), regions)
    with pytest.raises(StoreError, match=r"region v-0000 of g/fmri: values have shape \(10, 2\).*expects \(10, 3\)"):
        store.write_region("g", regions[0], {"fmri": np.ones((10, 2), np.float32)})
    with pytest.raises(StoreError, match="has no variable 'nope'"):
        store.write_region("g", regions[0], {"nope": np.ones((10, 3), np.float32)})
    assert store.done_regions("g") == set()


def test_extend_template_keeps_finished_regions(store):
    ids = np.array([5, 1, 9, 12, 30])
    tpl = schema.stimuli_template(ids, 4, 5)
    regions = regular_regions("image", 5, 2, "images")
    store.write_template("stimuli", tpl, regions)
    imgs = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    caps = np.array([[f"c{i}"] * 5 for i in range(5)], dtype=object)
    for r in regions:
        store.write_region("stimuli", r, {"images": imgs[r.slice], "captions": caps[r.slice]})
    new = store.extend_template("stimuli", "image", np.array([40, 41]), 2, "images")
    # finished regions keep their bounds and records (issue 12); the new ones realign with the chunks
    assert [(r.start, r.stop) for r in new] == [(0, 2), (2, 4), (4, 5), (5, 6), (6, 7)]
    assert store.done_regions("stimuli") == {0, 1, 2}
    ds = store.open_dataset("stimuli")
    np.testing.assert_array_equal(ds.image.values, [5, 1, 9, 12, 30, 40, 41])
    np.testing.assert_array_equal(ds.images.values[:4], imgs[:4])
    assert list(ds.captions.values[1]) == ["c1"] * 5


def test_missing_group_error_names_the_fix(store):
    with pytest.raises(StoreError, match="group 'subjects/subj09/train' does not exist.*fmri2img status"):
        store.open_dataset("subjects/subj09/train")


def test_store_is_picklable_and_hides_credentials():
    import pickle

    s = Store("memory://pickled", {"key": "AKIDSECRET", "secret": "hunter2"})
    assert pickle.loads(pickle.dumps(s)) == s
    assert "hunter2" not in s.describe() and "AKIDSECRET" not in s.describe()


def test_provenance_has_versions_and_no_credentials():
    attrs = schema.provenance(source="s3://user:pw@bucket/x", config={"store": {"storage_options": {"secret": "s3cr3t"}}})
    text = repr(attrs)
    assert "s3cr3t" not in text and "pw@" not in text
    assert "zarr" in attrs["library_versions"] and attrs["config_hash"]
