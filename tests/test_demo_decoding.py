"""The demo's Brain-Diffuser stage 1 decodes pictures, not static (a tiny mini-NSD, a short training budget).

The VDVAE is trained on the subject's training photographs only, loaded through the features
stage's weights path, its latents regressed from the simulated fMRI, and the predicted latents
decoded by the reconstruct stage.  Stage-1 PixCorr (computed here in plain NumPy) must beat the
same reconstructions scored against other test images (every derangement of a random sample).
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from PIL import Image

from fmri2img.models.vdvae_train import TrainSettings
from tests.minifixtures import SESSIONS, mini_nsd  # noqa: F401

BUDGET = TrainSettings(steps=80, batch_size=32, lr=2e-3, seed=0, threads=1)


def _pixcorr(rec: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image Pearson r of flattened RGB pixels, reconstructions resized (bilinear) to the ground truth's side."""
    side = gt.shape[1]
    small = np.stack([np.asarray(Image.fromarray(r).resize((side, side), Image.Resampling.BILINEAR)) for r in rec])
    a = small.reshape(len(rec), -1).astype(np.float64)
    b = gt.reshape(len(gt), -1).astype(np.float64)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def test_stage1_with_the_trained_demo_vdvae_beats_shuffled_ground_truth(mini_nsd, tmp_path):
    from fmri2img.demo.vdvae import ensure_demo_vdvae, weights_note
    from fmri2img.pipeline.evaluate import stimuli_for
    from fmri2img.pipeline.features import extract_features
    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.pipeline.reconstruct import recon_group, reconstruct_run, run_spec
    from fmri2img.pipeline.regress import regress
    from fmri2img.storage import schema
    from fmri2img.storage.source import Source
    from fmri2img.storage.store import Store

    store = Store(str(tmp_path / "store.zarr"))
    ingest(store, Source(str(mini_nsd)), 1, SESSIONS, progress=False)
    weights, manifest = ensure_demo_vdvae(mini_nsd, tmp_path / "models", (1,), BUDGET)
    test_ids = store.open_dataset(schema.subject_group(1, "test")).image.values
    train_ids = store.open_dataset(schema.subject_group(1, "train")).image.values
    assert not set(manifest["image_ids"]) & set(test_ids.tolist())          # no test image was learnt
    assert set(manifest["image_ids"]) == set(train_ids.tolist())

    note = weights_note(manifest["n_images"], BUDGET.steps)
    opts = {"weights": str(weights), "hparams": "demo", "n_blocks": 7, "note": note, "device": "cpu"}
    extract_features(store, "vdvae", opts, images_per_task=64, progress=False)
    regress(store, 1, "vdvae", {"alpha": 1000.0}, progress=False)
    spec = run_spec("bd", {"stage1": "vdvae", "preset": ""}, extractor_options={"vdvae": opts}, weights={}, seed=0)
    summary = reconstruct_run(store, 1, spec, images_per_task=8, progress=False)
    assert summary["random_weights"] is False

    group = recon_group(1, "bd", "stage1")
    attrs = store.group(group).attrs
    assert attrs["random_weights"] is False and attrs["weights_note"] == note and "mini-NSD" in note
    ds = xr.open_zarr(store.url, group=group, consolidated=False)
    rec, ids = ds.images.values, ds.image.values
    gt = stimuli_for(store, ids)
    matched = _pixcorr(rec, gt).mean()
    rng = np.random.default_rng(0)
    shuffled = []
    for _ in range(200):
        perm = rng.permutation(len(ids))
        while np.any(perm == np.arange(len(ids))):
            perm = rng.permutation(len(ids))
        shuffled.append(_pixcorr(rec, gt[perm]).mean())
    assert matched > np.max(shuffled), (matched, np.max(shuffled))
    assert matched > 0.15
