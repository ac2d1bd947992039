"""Shared fixtures of the BIDS tests (no tests here): the generated BIDS dataset and a copy to break.

Import them into a test module: ``from tests.test_bids_fixtures import bids_root, bids_copy  # noqa: F401``.
"""
from __future__ import annotations

import shutil

import pytest

from tests.minifixtures import mini_nsd  # noqa: F401  (the session's tiny mini-NSD: the images and design)


@pytest.fixture(scope="session")
def bids_root(mini_nsd, tmp_path_factory):  # noqa: F811
    """The default generated BIDS dataset (one person, one session, two runs); do not modify it."""
    from fmri2img.mininsd.bids import generate_bids

    root = tmp_path_factory.mktemp("bids") / "ds"
    generate_bids(root, mini_nsd, progress=lambda line: None)
    return root


@pytest.fixture()
def bids_copy(bids_root, tmp_path):
    """A private copy of the generated dataset, for tests that break it."""
    return shutil.copytree(bids_root, tmp_path / "ds")


def tree_bytes(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove nothing was written or changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
