"""A tiny mini-NSD shared by the ingest and pipeline tests (generated once per test session)."""
from __future__ import annotations

import pytest

#: small enough for seconds, big enough to have repeats, shared images and several sessions
TINY = dict(seed=3, subjects=(1, 2), n_images=120, n_shared=16, n_per_subject=64, n_sessions=4,
            trials_per_session=40, side=32, volume_shape=(16, 20, 16))
SESSIONS = (1, 2, 3, 4)


@pytest.fixture(scope="session")
def mini_nsd(tmp_path_factory):
    from fmri2img.storage.mininsd import MiniNSDSpec, generate_mini_nsd

    root = tmp_path_factory.mktemp("mini-nsd")
    generate_mini_nsd(root, MiniNSDSpec(**TINY))
    return root
