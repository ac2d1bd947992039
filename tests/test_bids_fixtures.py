"""Shared fixtures of the BIDS tests (no tests here): a tiny mini-NSD, the generated BIDS dataset, a copy to break.

Import them into a test module: ``from tests.test_bids_fixtures import bids_copy, bids_mini, bids_root  # noqa``.
A fixture imported into two modules is registered twice, so the generated folders are cached per
test session (keyed by pytest's base temporary folder) and made once.
"""
from __future__ import annotations

import shutil

import pytest

_MADE: dict[tuple[str, str], object] = {}


def _once(tmp_path_factory, name: str, make):
    key = (str(tmp_path_factory.getbasetemp()), name)
    if key not in _MADE:
        _MADE[key] = make(tmp_path_factory.mktemp(name))
    return _MADE[key]


@pytest.fixture(scope="session")
def bids_mini(tmp_path_factory):
    """A tiny mini-NSD with subject 1 (its images and design feed the BIDS dataset)."""
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd
    from tests.minifixtures import TINY

    def make(root):
        generate_mini_nsd(root, MiniNSDSpec(**{**TINY, "subjects": (1,)}), progress=lambda line: None)
        return root

    return _once(tmp_path_factory, "bids-mini-nsd", make)


@pytest.fixture(scope="session")
def bids_root(bids_mini, tmp_path_factory):
    """The default generated BIDS dataset (one person, one session, two runs); do not modify it."""
    from fmri2img.mininsd.bids import generate_bids

    def make(folder):
        generate_bids(folder / "ds", bids_mini, progress=lambda line: None)
        return folder / "ds"

    return _once(tmp_path_factory, "bids", make)


@pytest.fixture()
def bids_copy(bids_root, tmp_path):
    """A private copy of the generated dataset, for tests that break it."""
    return shutil.copytree(bids_root, tmp_path / "ds")


def tree_bytes(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove nothing was written or changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
