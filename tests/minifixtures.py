"""A tiny mini-NSD shared by the ingest and pipeline tests (generated once per test session)."""
from __future__ import annotations

import pytest

#: small enough for seconds, big enough to have repeats, shared images and several sessions
TINY = dict(seed=3, subjects=(1, 2), n_images=120, n_shared=16, n_per_subject=64, n_sessions=4,
            trials_per_session=40, side=32, volume_shape=(16, 20, 16))
SESSIONS = (1, 2, 3, 4)


@pytest.fixture(scope="session")
def mini_nsd(tmp_path_factory):
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd

    root = tmp_path_factory.mktemp("mini-nsd")
    generate_mini_nsd(root, MiniNSDSpec(**TINY))
    return root


#: the tiny models of the pipeline tests (seeded random weights)
EXTRACTORS = {
    "pixels": {"side": 8},
    "vdvae": {"tiny": True, "n_blocks": 4},
    "clip-text": {"tiny": True},
    "clip-vision": {"tiny": True},
}
#: stage-2 settings small enough for CPU tests
VD_SETTINGS = {"size": 16, "steps": 4, "strength": 0.5, "dtype": "float32", "guidance": 2.0}


@pytest.fixture(scope="session")
def predicted_store(mini_nsd, tmp_path_factory):
    """A store with subject 1 ingested, the four feature sets extracted and regressed (tiny models)."""
    from fmri2img.pipeline.features import extract_features
    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.pipeline.regress import regress
    from fmri2img.storage.source import Source
    from fmri2img.storage.store import Store

    store = Store(str(tmp_path_factory.mktemp("pipeline") / "store.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    for name, options in EXTRACTORS.items():
        extract_features(store, name, options, images_per_task=32, progress=False)
        regress(store, 1, name, {"alpha": 1000.0}, progress=False)
    return store


def pixels_decode_config(store_url: str, decode: str, head: str = "") -> str:
    """A configuration with the tests' pixel run (``px``) and the given ``[decode]`` lines."""
    return f"""{head}
[store]
url = "{store_url}"
[features.extractors.pixels]
side = 8
[reconstruct.runs.px]
stage1 = "pixels"
preset = ""
[decode]
subject = 1
{decode}
"""
