"""Ingest resume and failure isolation (issue 12 items 1 and 2).

- A resume reuses a finished session only if its inputs are the same (source, file identity,
  prefer, betas scale, NaN policy, format); otherwise it is refused before anything is written.
- A failed ingest of subject 2 leaves every finished region and record of subject 1 as it was,
  the shared ``stimuli`` group included.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fmri2img.pipeline.ingest.nsd import ingest
from fmri2img.pipeline.ingest.resume import IngestResumeError
from fmri2img.storage import schema
from fmri2img.storage.source import Source
from fmri2img.storage.store import Store
from tests import storecompare
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401  (mini_nsd is a fixture)

BETAS = "subjects/subj01/betas"


def _tree(mini_nsd, tmp_path, name="nsd") -> Path:
    dst = tmp_path / name
    shutil.copytree(mini_nsd, dst)
    return dst


def _betas(root, subject, session, ext):
    return root / (f"nsddata_betas/ppdata/subj{subject:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
                   f"betas_session{session:02d}.{ext}")


def _killed_after_two_sessions(store: Store) -> None:
    """The state a run killed after sessions 1–2 leaves: records of sessions 3–4 absent."""
    progress = store._progress_array(BETAS, mode="r+")
    progress[2] = 0
    progress[3] = 0


@pytest.fixture()
def half_done(mini_nsd, tmp_path):
    root = _tree(mini_nsd, tmp_path)
    store = Store(str(tmp_path / "store.zarr"))
    ingest(store, Source(str(root)), 1, SESSIONS, progress=False)
    _killed_after_two_sessions(store)
    return root, store


def test_resume_from_another_source_is_refused_and_writes_nothing(mini_nsd, half_done, tmp_path):
    _, store = half_done
    other = _tree(mini_nsd, tmp_path, "other-tree")
    before = storecompare.files(store.url)
    with pytest.raises(IngestResumeError) as err:
        ingest(store, Source(str(other)), 1, SESSIONS, nan_policy="zero", progress=False)
    message = str(err.value)
    assert BETAS in message and "source was" in message and str(other) in message
    assert "Nothing was written" in message and "new store" in message
    assert storecompare.files(store.url) == before


def test_a_changed_file_of_a_finished_session_is_refused(half_done):
    root, store = half_done
    path = _betas(root, 1, 1, "hdf5")
    path.write_bytes(path.read_bytes())  # same size, new modification time: another file as far as we can tell
    os.utime(path, (1_000_000_000, 1_000_000_000))
    before = storecompare.files(store.url)
    with pytest.raises(IngestResumeError, match="the file of session-01 changed"):
        ingest(store, Source(str(root)), 1, SESSIONS, progress=False)
    assert storecompare.files(store.url) == before


def test_a_changed_file_of_an_unfinished_session_is_fine(mini_nsd, half_done, tmp_path):
    root, store = half_done
    os.utime(_betas(root, 1, 3, "hdf5"), (1_000_000_000, 1_000_000_000))  # e.g. downloaded again
    ingest(store, Source(str(root)), 1, SESSIONS, progress=False)
    reference = Store(str(tmp_path / "reference.zarr"))
    ingest(reference, Source(str(root)), 1, SESSIONS, progress=False)
    storecompare.assert_same_arrays(store, reference)


@pytest.mark.parametrize("option, value, name", [("prefer", "nii.gz", "prefer"), ("betas_scale", 1.0, "betas_scale")])
def test_a_changed_option_is_refused(half_done, option, value, name):
    root, store = half_done
    with pytest.raises(IngestResumeError, match=f"{name} was"):
        ingest(store, Source(str(root)), 1, SESSIONS, progress=False, **{option: value})


def test_nan_policy_error_then_zero_resumes(half_done, tmp_path):
    """Regions written under nan_policy='error' had no NaN: the suggested fix may reuse them."""
    root, store = half_done
    summary = ingest(store, Source(str(root)), 1, SESSIONS, nan_policy="zero", progress=False)
    assert summary["sessions_written"] == 2 and summary["sessions_skipped"] == 2
    reference = Store(str(tmp_path / "reference.zarr"))
    ingest(reference, Source(str(root)), 1, SESSIONS, nan_policy="zero", progress=False)
    storecompare.assert_same_arrays(store, reference)


def test_failed_ingest_of_subject_2_leaves_subject_1_as_it_was(mini_nsd, tmp_path):
    root = _tree(mini_nsd, tmp_path)
    store = Store(str(tmp_path / "store.zarr"))
    ingest(store, Source(str(root)), 1, (1, 2), progress=False)
    n1 = store.group(schema.STIMULI)["image"].shape[0]
    assert n1 % schema.STIMULUS_CHUNK, "the test needs a partial last stimulus chunk"
    before = storecompare.arrays(store)
    regions_before = store.regions(schema.STIMULI)
    for ext in ("hdf5", "nii.gz"):  # subject 2's session 2 is truncated: its task fails
        path = _betas(root, 2, 2, ext)
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(Exception, match="betas_session02"):
        ingest(store, Source(str(root)), 2, (1, 2), progress=False)
    after = storecompare.arrays(store)
    for path, values in before.items():
        if path.startswith(("subjects/subj01", "_progress/subjects/subj01")):
            np.testing.assert_array_equal(after[path], values, err_msg=path)
        elif path.startswith((schema.STIMULI, f"_progress/{schema.STIMULI}")):  # appended to, never changed
            np.testing.assert_array_equal(after[path][: len(values)], values, err_msg=path)
    assert store.regions(schema.STIMULI)[: len(regions_before)] == regions_before
    assert store.done_regions(schema.STIMULI) >= {r.index for r in regions_before}

    for ext in ("hdf5", "nii.gz"):  # the fix: a good file; the rerun completes and equals a clean ingest
        shutil.copy(_betas(mini_nsd, 2, 2, ext), _betas(root, 2, 2, ext))
    ingest(store, Source(str(root)), 2, (1, 2), progress=False)
    assert all(store.is_complete(g) for g in store.list_groups())
