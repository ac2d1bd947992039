"""The reconstruct stage: partition-independent, resumable, equal to direct model calls."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fmri2img.pipeline import reconstruct as rec
from fmri2img.pipeline.features import get_extractor
from fmri2img.pipeline.reconstruct import ReconstructError, reconstruct_run, run_spec
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store
from tests.minifixtures import EXTRACTORS, VD_SETTINGS, mini_nsd, predicted_store  # noqa: F401


def _spec(name="bd", **options):
    opts = {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True, "settings": dict(VD_SETTINGS), **options}
    return run_spec(name, opts, extractor_options=EXTRACTORS, weights={}, seed=7)


def _copy(store, tmp_path, name):
    import shutil

    shutil.copytree(store.url, tmp_path / name)
    return Store(str(tmp_path / name))


def _images(store, group):
    return xr.open_zarr(store.url, group=group, consolidated=False).images.values


def test_stage1_and_final_equal_direct_calls(predicted_store, tmp_path):
    from fmri2img.models.clip import clip_text_uncond, clip_vision_uncond
    from fmri2img.models.vd_sampler import preset, reconstruct
    from fmri2img.models.vdvae import decode_latents, upsample_512
    from fmri2img.models.versatile import tiny_vd_components

    store = _copy(predicted_store, tmp_path, "a.zarr")
    out = tmp_path / "out"
    summary = reconstruct_run(store, 1, _spec(), images_per_task=5, outputs=Outputs(str(out)), progress=False)
    assert summary["stage2"] and summary["random_weights"] and summary["images"] == 16
    pred = {n: xr.open_zarr(store.url, group=f"predictions/subj01/{n}", consolidated=False)
            for n in ("vdvae", "clip-vision", "clip-text")}
    ids = pred["vdvae"].image.values
    vd = get_extractor("vdvae", EXTRACTORS["vdvae"])
    stage1 = upsample_512(decode_latents(vd.model, pred["vdvae"].features.values, ids, 7, n_blocks=4))
    got1 = _images(store, "recon/subj01/bd/stage1").astype(int)
    # decoded in partitions of 5 vs one batch of 16: batched convolutions round differently (≤ 1 level, rarely)
    assert np.abs(got1 - stage1).max() <= 1 and np.mean(got1 != stage1) < 1e-3
    tv, tt = get_extractor("clip-vision", EXTRACTORS["clip-vision"]), get_extractor("clip-text", EXTRACTORS["clip-text"])
    final, _ = reconstruct(tiny_vd_components(seed=0, context_dim=32), stage1, pred["clip-vision"].features.values,
                           pred["clip-text"].features.values, clip_vision_uncond(tv.model),
                           clip_text_uncond(tt.model, tt.tokenizer), ids, 7, preset("brain-diffuser", **VD_SETTINGS))
    got = _images(store, "recon/subj01/bd/final")
    assert got.shape == (16, 16, 16, 3)
    assert np.abs(got.astype(int) - final.astype(int)).max() <= 1  # float rounding of batched UNet calls
    assert (out / "recon/subj01/bd/final" / f"{ids[0]}.png").exists()


def test_same_output_for_any_partitioning_and_resume(predicted_store, tmp_path, monkeypatch):
    a, b = _copy(predicted_store, tmp_path, "a.zarr"), _copy(predicted_store, tmp_path, "b.zarr")
    reconstruct_run(a, 1, _spec(), images_per_task=16, progress=False)
    reconstruct_run(b, 1, _spec(), images_per_task=5, progress=False)
    for part in ("stage1", "final"):
        d = np.abs(_images(a, f"recon/subj01/bd/{part}").astype(int) - _images(b, f"recon/subj01/bd/{part}").astype(int))
        assert d.max() <= 1, part
    # resume: forget one partition's record; only that partition is redone, identically
    before = _images(b, "recon/subj01/bd/final")
    b._progress_array("recon/subj01/bd/final")[2] = 0
    calls = []
    real = rec.reconstruct_block
    monkeypatch.setattr(rec, "reconstruct_block", lambda *args: calls.append(args[3].index) or real(*args))
    out = reconstruct_run(b, 1, _spec(), images_per_task=5, progress=False)
    assert out["blocks_written"] == 1 and calls == [2]
    np.testing.assert_array_equal(_images(b, "recon/subj01/bd/final"), before)


@pytest.mark.slow
def test_two_workers_equal_one_process(predicted_store, tmp_path):
    from distributed import Client, LocalCluster

    a, b = _copy(predicted_store, tmp_path, "a.zarr"), _copy(predicted_store, tmp_path, "b.zarr")
    reconstruct_run(a, 1, _spec(), images_per_task=8, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        reconstruct_run(b, 1, _spec(), images_per_task=3, client=client, progress=False)
    d = np.abs(_images(a, "recon/subj01/bd/final").astype(int) - _images(b, "recon/subj01/bd/final").astype(int))
    assert d.max() <= 1


def test_pixels_run_is_stage1_only(predicted_store, tmp_path):
    from fmri2img.models.pixels import pixels_to_image
    from fmri2img.models.vdvae import upsample_512

    store = _copy(predicted_store, tmp_path, "p.zarr")
    summary = reconstruct_run(store, 1, _spec("px", stage1="pixels", preset=""), progress=False)
    assert not summary["stage2"] and not summary["random_weights"]
    pred = xr.open_zarr(store.url, group="predictions/subj01/pixels", consolidated=False).features.values
    np.testing.assert_array_equal(_images(store, "recon/subj01/px/stage1"), upsample_512(pixels_to_image(pred)))
    assert not store.has_group("recon/subj01/px/final")


def test_clear_errors(predicted_store, tmp_path):
    with pytest.raises(ReconstructError, match=r"stage1 = 'vgg'; expected one of"):
        _spec(stage1="vgg")
    with pytest.raises(ReconstructError, match=r"preset = 'fast'"):
        _spec(preset="fast")
    with pytest.raises(ReconstructError, match=r"settings: VDSettings.mix"):
        _spec(settings={"mix": 3})
    with pytest.raises(ReconstructError, match=r"unknown key\(s\) \['strenght'\]"):
        _spec(strenght=0.5)
    empty = Store(str(tmp_path / "e.zarr"))
    with pytest.raises(ReconstructError, match="needs predictions/subj01/vdvae.*run the features and regress"):
        reconstruct_run(empty, 1, _spec(), progress=False)
