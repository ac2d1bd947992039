"""Outputs: PNGs and reports at a URL outside the store."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fmri2img.storage.outputs import Outputs


@pytest.mark.parametrize("store,expected", [
    ("s3://lab/x/nsd.zarr", "s3://lab/x/outputs"),
    ("s3://lab/nsd.zarr/", "s3://lab/outputs"),
    ("runs/demo/store.zarr", "runs/demo/outputs"),
    ("store.zarr", "./outputs"),
    ("memory://a/b.zarr", "memory://a/outputs"),
])
def test_beside_the_store(store, expected):
    assert Outputs.beside(store).url == expected


def test_png_round_trip_local_and_memory(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    for out in (Outputs(str(tmp_path)), Outputs("memory://outputs-test")):
        url = out.write_png("a/b/x.png", img)
        assert url.endswith("a/b/x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a/b/x.png")), img)
