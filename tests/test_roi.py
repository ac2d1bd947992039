"""The ROI analysis: Brain-Diffuser's scalings against plain NumPy, and the stage end to end."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fmri2img.pipeline.regress import load_model
from fmri2img.pipeline.reconstruct import part_provenance, run_spec
from fmri2img.pipeline.roi import roi_analysis
from fmri2img.ridge.roi import roi_clip_embeddings, roi_vdvae_latents
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store
from tests.minifixtures import EXTRACTORS, VD_SETTINGS, mini_nsd, predicted_store  # noqa: F401


def test_vdvae_recipe_matches_plain_numpy():
    rng = np.random.default_rng(0)
    p, b = rng.standard_normal((13, 40)), rng.standard_normal(40)
    mean, std = rng.standard_normal(40), rng.random(40) + 0.5
    x = np.array([r / np.linalg.norm(r) for r in p]) * 50 + b
    x = (x - x.mean(0)) / x.std(0) * std + mean
    x = np.array([r / np.linalg.norm(r) for r in x]) * 80
    np.testing.assert_allclose(roi_vdvae_latents(p, b, mean, std), x, rtol=1e-5)
    assert np.allclose(np.linalg.norm(roi_vdvae_latents(p, b, mean, std), axis=1), 80, rtol=1e-5)


def test_clip_recipe_matches_plain_numpy():
    rng = np.random.default_rng(1)
    p, b = rng.standard_normal((13, 5, 6)), rng.standard_normal((5, 6))
    want = np.stack([r / np.sqrt((r ** 2).sum()) * 15 + b for r in p])
    np.testing.assert_allclose(roi_clip_embeddings(p, b, 15.0), want, rtol=1e-5)


def test_roi_stage_end_to_end(predicted_store, tmp_path):
    import shutil

    shutil.copytree(predicted_store.url, tmp_path / "s.zarr")
    store = Store(str(tmp_path / "s.zarr"))
    spec = run_spec("bd", {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True, "settings": VD_SETTINGS},
                    extractor_options=EXTRACTORS, weights={}, seed=3)
    out = roi_analysis(store, 1, spec, outputs=Outputs(str(tmp_path / "out")), progress=False)
    rois = xr.open_zarr(store.url, group="subjects/subj01/rois", consolidated=False)
    names = [str(r) for r in rois.roi.values]
    assert out["rois"] == len(names) == 13 and out["parts"] == ["stage1", "final"]
    # the synthetic CLIP-text embedding equals the recipe applied to an explicit push-through
    est = load_model(store, 1, "clip-text")
    masks = rois.masks.values.astype(np.float32)
    pushed, bias = np.asarray(est.push_pattern(masks)), np.asarray(est.intercept_)
    got = xr.open_zarr(store.url, group="roi/subj01/features/clip-text", consolidated=False).features.values
    np.testing.assert_allclose(got, roi_clip_embeddings(pushed, bias, 9.0), rtol=1e-4, atol=1e-5)
    images = xr.open_zarr(store.url, group="roi/subj01/bd/final", consolidated=False)
    assert images.images.shape == (13, 16, 16, 3) and list(images.roi.values) == names
    assert (tmp_path / "out/roi/subj01/bd/final/V1.png").exists()
    # each part says whether it was made with random weights, as the reconstruct stage's parts do
    for part in ("stage1", "final"):
        attrs = store.group(f"roi/subj01/bd/{part}").attrs
        expected = part_provenance(spec)[part]
        assert attrs["random_weights"] == expected["random_weights"]
        assert attrs["weights_note"] == expected["weights_note"]
    assert store.group("roi/subj01/bd/final").attrs["random_weights"] is True  # tiny Versatile Diffusion


def test_missing_model_is_a_clear_error(predicted_store, tmp_path):
    import shutil

    from fmri2img.pipeline.regress import RegressError

    shutil.copytree(predicted_store.url, tmp_path / "s.zarr")
    store = Store(str(tmp_path / "s.zarr"))
    shutil.rmtree(tmp_path / "s.zarr/_progress/models/subj01/vdvae")
    spec = run_spec("bd", {"stage1": "vdvae", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=3)
    with pytest.raises(RegressError, match="models/subj01/vdvae is not in the store.*run the regress stage"):
        roi_analysis(store, 1, spec, progress=False)


def test_rerun_of_a_finished_roi_analysis_redoes_nothing(predicted_store, tmp_path, monkeypatch):
    """Issue 12 item 6: the same run on the same fits is skipped; another run setting is redone."""
    import shutil

    from fmri2img.pipeline import roi as roi_mod
    from tests import storecompare

    shutil.copytree(predicted_store.url, tmp_path / "s.zarr")
    store = Store(str(tmp_path / "s.zarr"))
    spec = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=3)
    first = roi_analysis(store, 1, spec, progress=False)
    assert "skipped" not in first
    before = storecompare.arrays(store)
    monkeypatch.setattr(roi_mod, "roi_block", lambda *a, **k: pytest.fail("ROI images recomputed"))
    monkeypatch.setattr(roi_mod, "synthetic_features", lambda *a, **k: pytest.fail("ROI features recomputed"))
    again = roi_analysis(store, 1, spec, progress=False)
    assert again["skipped"] is True and again["parts"] == ["stage1"]
    storecompare.assert_same_values(storecompare.arrays(store), before)
    monkeypatch.undo()
    other = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=4)
    assert "skipped" not in roi_analysis(store, 1, other, progress=False)
