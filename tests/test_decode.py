"""The decode stage: a fitted subject applied to new scans (issue 15, part 1).

Against the regress and reconstruct stages: decoding the test trials of every ingested
session and averaging per image equals the regress stage's test predictions with the same
non-transductive ("loo") calibration, and reconstructing those averages equals the
reconstruct stage's pictures with the same seeds.  Every bad input gets one clear error.
All models are the tiny seeded random-weight ones of the other pipeline tests.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr

from fmri2img.pipeline import decode as dec
from fmri2img.pipeline.reconstruct import reconstruct_run, run_spec
from fmri2img.pipeline.regress import regress
from fmri2img.storage import nsd
from fmri2img.storage.decoded import DecodeInputError
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store
from tests.minifixtures import EXTRACTORS, SESSIONS, VD_SETTINGS, mini_nsd, predicted_store  # noqa: F401

FEATURES = ("vdvae", "clip-text", "clip-vision", "pixels")


def _runs():
    bd = run_spec("bd", {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True, "settings": dict(VD_SETTINGS)},
                  extractor_options=EXTRACTORS, weights={}, seed=7)
    px = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7)
    return bd, px


@pytest.fixture(scope="module")
def loo_store(predicted_store, tmp_path_factory):
    """predicted_store refitted with the non-transductive calibration, both runs reconstructed."""
    path = tmp_path_factory.mktemp("decode") / "store.zarr"
    shutil.copytree(predicted_store.url, path)
    store = Store(str(path))
    for name in FEATURES:
        regress(store, 1, name, {"alpha": 1000.0, "calibration": "loo"}, progress=False)
    for run in _runs():
        reconstruct_run(store, 1, run, images_per_task=16, progress=False)
    return store


def _open(store, group):
    return xr.open_zarr(store.url, group=group, consolidated=False)


def _betas_file(root, session, fmt="hdf5"):
    return nsd.NSDLayout(str(root)).betas(1, session, fmt)


def _test_trials_csv(store, session, tmp_path):
    """A trials CSV of the session's test trials (1-based trial within the session, NSD id)."""
    betas = _open(store, "subjects/subj01/betas")
    test_ids = set(_open(store, "subjects/subj01/test").image.values.tolist())
    in_session = betas.session.values == session
    images = betas.image.values[in_session]
    rows = [(t + 1, int(i)) for t, i in enumerate(images) if int(i) in test_ids]
    path = tmp_path / f"trials-{session}.csv"
    path.write_text("trial,image\n" + "".join(f"{t},{i}\n" for t, i in rows))
    return str(path), len(rows)


def test_decoded_test_trials_averaged_equal_regress_and_reconstruct(loo_store, mini_nsd, tmp_path):
    store = loo_store
    sums: dict = {f: {} for f in FEATURES}
    counts: dict = {}
    for session in SESSIONS:
        csv, n = _test_trials_csv(store, session, tmp_path)
        out = dec.decode(store, 1, _betas_file(mini_nsd, session), [], features=FEATURES, trials_file=csv,
                         progress=False)
        assert out["calibration"] == "loo" and out["trials"] == n and out["images_known"] == n
        for f in FEATURES:
            ds = _open(store, f"decoded/{out['name']}/predictions/{f}")
            assert ds.attrs["calibration"] == "loo"
            for image, row in zip(ds.image.values, ds.features.values):
                sums[f][int(image)] = sums[f].get(int(image), 0) + row.astype(np.float64)
        for image in ds.image.values:
            counts[int(image)] = counts.get(int(image), 0) + 1
    test = _open(store, "subjects/subj01/test")
    ids = test.image.values
    assert sorted(counts) == sorted(ids.tolist())
    assert [counts[int(i)] for i in ids] == test.n_repeats.values.tolist()
    averages = {}
    for f in FEATURES:
        want = _open(store, f"predictions/subj01/{f}").features.values
        got = np.stack([sums[f][int(i)] / counts[int(i)] for i in ids])
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=f)
        averages[f] = got.astype(np.float32)
    bd, px = _runs()
    stage1, _, _ = dec.reconstruct_rows(averages, ids, px)
    assert np.array_equal(stage1, _open(store, "recon/subj01/px/stage1").images.values)
    stage1, final, _ = dec.reconstruct_rows(averages, ids, bd)
    for got, part in ((stage1, "stage1"), (final, "final")):
        want = _open(store, f"recon/subj01/bd/{part}").images.values.astype(int)
        # float32 predictions averaged in another order; batched convolutions: at most one level, rarely
        assert np.abs(got.astype(int) - want).max() <= 1 and np.mean(got != want) < 1e-2, part
