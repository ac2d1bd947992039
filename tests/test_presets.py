"""The seed paper's experiments as presets: their numbers, feature kinds side by side, the example config.

Reference facts (REFERENCE.md §4.2 and §6): Brain-Diffuser runs stage 2 at strength 0.75 with
``h ← h + 0.6·Δ_vision + 0.4·Δ_text`` (``mixed_ratio = 1 − mix_str``), guidance 7.5, 50 DDIM steps;
the seed paper's ``_onlyvision`` script sets mixing 0 (vision only), ``_onlytxt`` mixing 1 (text only),
``_diffusionstrength055`` text only at strength 0.55 (t_enc 27); its report mentions 0.5/0.5.  Its
reduced features: 10 VDVAE blocks, CLIP-vision tokens [:77], the unconditional vision context cut to 77.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from fmri2img import config as cfgmod
from fmri2img.models import vd_sampler as S
from fmri2img.models import versatile as V
from fmri2img.pipeline import reconstruct as rec
from tests.minifixtures import mini_nsd  # noqa: F401

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "seed_presets.toml"

#: preset → (strength, vision weight, text weight, DDIM steps run of 50, noise timestep), from the papers' code
REFERENCE_PRESETS = {
    "brain-diffuser": (0.75, 0.6, 0.4, 37, 741),
    "seed-vision": (0.75, 1.0, 0.0, 37, 741),
    "seed-text": (0.75, 0.0, 1.0, 37, 741),
    "seed-half": (0.75, 0.5, 0.5, 37, 741),
    "seed-text-0.55": (0.55, 0.0, 1.0, 27, 541),
}


def _effective_weights(mix: float) -> tuple[float, float]:
    """(vision, text) residual weights the sampler hands the UNet for a preset's mix."""
    vision, text = torch.zeros(1, 3, 8), torch.zeros(1, 2, 8)
    _, _, spec = S._contexts(vision, text, vision[0], text[0], mix)
    return (1 - spec.text_weight if spec.vision_tokens else 0.0), (spec.text_weight if spec.text_weight else 0.0)


@pytest.mark.parametrize("name", sorted(REFERENCE_PRESETS))
def test_preset_numbers_match_the_papers_code(name):
    strength, w_vision, w_text, t_enc, noise_t = REFERENCE_PRESETS[name]
    s = S.preset(name)
    assert s.strength == strength and s.guidance == 7.5 and s.steps == 50 and s.eta == 0
    assert _effective_weights(s.mix) == pytest.approx((w_vision, w_text))
    assert s.t_enc == t_enc
    from diffusers import DDIMScheduler

    sched = S.ddim_schedule(DDIMScheduler(num_train_timesteps=1000, steps_offset=1), s)
    assert sched.noise_t == noise_t and len(sched.timesteps) == t_enc and sched.timesteps[-1] == 1


def test_every_preset_names_its_source():
    assert set(S.PRESET_NOTES) == set(S.PRESETS)
    assert "onlyvision" in S.PRESET_NOTES["seed-vision"] and "onlytxt" in S.PRESET_NOTES["seed-text"]
    assert "diffusionstrength055" in S.PRESET_NOTES["seed-text-0.55"]
    assert "not in its code" in S.PRESET_NOTES["seed-half"]


def _stage2_inputs(vision_tokens=77, d=32, seed=0):
    g = np.random.default_rng(seed)
    return dict(init_images=g.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8),
                vision=g.standard_normal((1, vision_tokens, d)).astype(np.float32),
                text=g.standard_normal((1, 77, d)).astype(np.float32),
                vision_uncond=g.standard_normal((vision_tokens, d)).astype(np.float32),
                text_uncond=g.standard_normal((77, d)).astype(np.float32))


def _run(comps, name, **inputs):
    s = S.preset(name, size=16, steps=4, dtype="float32", vision_tokens=77)
    return S.reconstruct(comps, **inputs, image_ids=[3], seed=0, settings=s)[0]


def test_single_context_presets_ignore_the_other_context():
    """Vision only never reads the text context, text only never reads the vision one; 0.5/0.5 reads both."""
    comps = V.tiny_vd_components(seed=0, context_dim=32)
    a, b = _stage2_inputs(seed=0), _stage2_inputs(seed=1)
    for name, unused in (("seed-vision", "text"), ("seed-text", "vision")):
        absent = _run(comps, name, **{**a, unused: None, f"{unused}_uncond": None})
        other = _run(comps, name, **{**a, unused: b[unused], f"{unused}_uncond": b[f"{unused}_uncond"]})
        np.testing.assert_array_equal(other, absent)
    half = _run(comps, "seed-half", **a)
    for unused in ("vision", "text"):
        assert not np.array_equal(_run(comps, "seed-half", **{**a, unused: b[unused]}), half)


def test_half_mix_is_the_mean_of_the_two_flows():
    """At 0.5/0.5 every cross-attention output is h + ½Δ_vision + ½Δ_text = ½(vision flow) + ½(text flow)."""
    comps = V.tiny_vd_components(seed=0, context_dim=32)
    dual = next(m for m in comps.unet.modules() if isinstance(m, V.DualContextTransformer))
    channels = dual.vision.config.in_channels
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, channels, 4, 4, generator=g)
    ctx = torch.randn(2, 77 + 77, 32, generator=g)

    def out(mix):
        kwargs = {V.MIX_KEY: V.MixSpec(77, S.preset(mix).mix)}
        return dual(h, encoder_hidden_states=ctx, cross_attention_kwargs=kwargs, return_dict=False)[0]

    vision_flow = dual.vision(h, encoder_hidden_states=ctx[:, :77], return_dict=False)[0]
    text_flow = dual.text(h, encoder_hidden_states=ctx[:, 77:], return_dict=False)[0]
    torch.testing.assert_close(out("seed-vision"), vision_flow)
    torch.testing.assert_close(out("seed-text"), text_flow)
    torch.testing.assert_close(out("seed-half"), 0.5 * vision_flow + 0.5 * text_flow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out("brain-diffuser"), 0.6 * vision_flow + 0.4 * text_flow, rtol=1e-5, atol=1e-5)


def test_unconditional_vision_context_is_cut_like_the_features():
    """The seed's reducedbs script cuts the unconditional vision context to [:, :77]; so does stage 2 here."""
    from fmri2img.models.clip import clip_vision_uncond
    from fmri2img.pipeline.features import get_extractor

    opts = {"clip-vision": {"tiny": True}, "clip-vision-77": {"kind": "clip-vision", "tiny": True, "tokens": "first77"},
            "clip-text": {"tiny": True}}
    full = clip_vision_uncond(get_extractor("clip-vision", opts["clip-vision"]).model)
    assert full.shape == (257, 32)
    for vision, tokens in (("clip-vision-77", 77), ("clip-vision", 257)):
        run = rec.run_spec("r", {"preset": "seed-half", "vision": vision, "tiny": True},
                           extractor_options=opts, weights={}, seed=0)
        got, _ = rec._compute_unconditional(run)
        np.testing.assert_array_equal(got, full[:tokens])


# --------------------------------------------------------------------------- kinds side by side
def _config(extractors: dict, runs: dict | None = None, stages=("features", "regress", "reconstruct")) -> str:
    text = f"stages = {json.dumps(list(stages))}\n"
    for name, opts in extractors.items():
        text += f'[features.extractors."{name}"]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items())
    for name, opts in (runs or {}).items():
        text += f'[reconstruct.runs."{name}"]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items())
    return text


FULL = {"vdvae": {"tiny": True}, "clip-text": {"tiny": True}, "clip-vision": {"tiny": True}}


@pytest.mark.parametrize("extractors,runs,match", [
    ({"vdvae-10": {"n_blocks": 10}}, None,
     r"features.extractors.vdvae-10: unknown feature extractor 'vdvae-10'.*kind = \"vdvae\""),
    ({"vdvae-10": {"kind": "vdae"}}, None, r"features.extractors.vdvae-10.kind = 'vdae' is not a feature extractor"),
    ({"v": {"kind": "vdvae", "tokens": "first77"}}, None, r"features.extractors.v: unknown option\(s\) \['tokens'\]"),
    ({**FULL, "cv": {"kind": "clip-vision", "tiny": True}}, {"r": {"stage1": "cv", "tiny": True}},
     r"reconstruct.runs.r.stage1 = 'cv' \(kind 'clip-vision'\); expected one of \['pixels', 'vdvae'\] or a feature"),
    ({**FULL, "v2": {"kind": "vdvae", "tiny": True}}, {"r": {"vision": "v2", "tiny": True}},
     r"reconstruct.runs.r.vision = 'v2' is a feature of kind 'vdvae'; expected one of kind 'clip-vision'"),
    (FULL, {"r": {"preset": "seed-half", "vision": "clip-vision-77", "tiny": True}},
     r"reconstruct.runs.r.vision = 'clip-vision-77' is not a \[features.extractors\] entry"),
])
def test_kind_and_run_feature_errors(extractors, runs, match):
    with pytest.raises(cfgmod.ConfigError, match=match):
        cfgmod.loads(_config(extractors, runs))


def test_ridge_defaults_and_weights_follow_the_kind():
    from fmri2img.pipeline.regress import ridge_options

    c = cfgmod.loads(_config({"vdvae-10": {"kind": "vdvae", "n_blocks": 10}, "cv77": {"kind": "clip-vision"},
                              "ct": {"kind": "clip-text"}}, stages=["features"]) +
                     '[weights]\nvdvae = "/m/vdvae.th"\nclip = "/m/clip"\n')
    alphas = {n: ridge_options(n, None, c.extractor_kind(n))["alpha"] for n in c.features.extractors}
    assert alphas == {"vdvae-10": 50_000.0, "cv77": 60_000.0, "ct": 100_000.0}  # Brain-Diffuser's, by kind
    assert c.extractor_options("vdvae-10")["weights"] == "/m/vdvae.th"
    assert c.extractor_options("cv77")["weights"] == "/m/clip"


# --------------------------------------------------------------------------- the example config
def test_example_config_validates_and_names_the_seed_runs():
    c = cfgmod.load(EXAMPLE)
    runs = {s.name: s for s in rec.run_specs(c)}
    assert {n: (r.preset, r.stage1, r.vision, r.text) for n, r in runs.items()} == {
        "brain-diffuser": ("brain-diffuser", "vdvae", "clip-vision", "clip-text"),
        "seed-vision": ("seed-vision", "vdvae-10", "clip-vision-77", "clip-text"),
        "seed-text": ("seed-text", "vdvae-10", "clip-vision-77", "clip-text"),
        "seed-half": ("seed-half", "vdvae-10", "clip-vision-77", "clip-text"),
        "seed-text-0.55": ("seed-text-0.55", "vdvae-10", "clip-vision-77", "clip-text"),
    }
    assert c.features.extractors["vdvae-10"]["n_blocks"] == 10
    assert c.features.extractors["clip-vision-77"]["tokens"] == "first77"
    assert (c.source.url, c.store.url, c.outputs.url) == ("runs/demo/mini-nsd", "runs/seed/store.zarr",
                                                          "runs/seed/outputs")
    assert all(r.vd.get("tiny") for r in runs.values())


def test_example_config_is_commented_line_by_line():
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith(("#", "[")):
            assert "#" in line or lines[i - 1].lstrip().startswith("#"), f"line {i + 1} has no comment: {line}"


def test_example_config_runs_on_mini_nsd(mini_nsd, tmp_path):  # noqa: F811
    """The example's runs on a tiny mini-NSD: every run lands in the store with its settings and features."""
    from fmri2img.models.vdvae import TINY
    from fmri2img.pipeline.runner import run
    from fmri2img.storage.store import Store

    data = tomllib.loads(EXAMPLE.read_text())
    data["source"]["url"] = str(mini_nsd)
    data["store"]["url"] = str(tmp_path / "store.zarr")
    data["outputs"]["url"] = str(tmp_path / "outputs")
    data["stages"] = ["ingest", "features", "regress", "reconstruct"]  # evaluate has its own tests
    data["features"]["images_per_task"] = 60
    for opts in data["reconstruct"]["runs"].values():
        opts["settings"] = {"size": 16, "steps": 4, "dtype": "float32"}
    config = cfgmod.validate(cfgmod.from_dict(cfgmod.Config, data))
    run(config, progress=False)

    store = Store(str(tmp_path / "store.zarr"))
    feats = {n: xr.open_zarr(store.url, group=f"features/{n}", consolidated=False).features
             for n in ("vdvae", "vdvae-10", "clip-vision", "clip-vision-77")}
    # the tiny VDVAE's decoder blocks (zdim 4 at resolutions 1, 1, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64)
    assert [r for r, _ in TINY.decoder_layers()] == [1, 1, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64] and TINY.zdim == 4
    ten = 4 * (1 + 1 + 16 + 16 + 64 + 64 + 256 + 256 + 1024 + 1024)
    assert feats["vdvae-10"].shape[1:] == (ten,) and feats["vdvae"].shape[1:] == (ten + 2 * 4 * 64 * 64,)
    assert feats["clip-vision-77"].shape[1:] == (77, 32) and feats["clip-vision"].shape[1:] == (257, 32)
    # the reduced features are the full ones cut (same models, same per-image draws)
    np.testing.assert_allclose(feats["vdvae-10"].values, feats["vdvae"].values[:, :ten], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feats["clip-vision-77"].values, feats["clip-vision"].values[:, :77])
    assert store.group("features/vdvae-10").attrs["kind"] == "vdvae"
    ridge = json.loads(store.group("predictions/subj01/vdvae-10").attrs["ridge_options"])
    assert ridge["alpha"] == 50_000.0

    for name, (strength, _, w_text, _, _) in REFERENCE_PRESETS.items():
        final = xr.open_zarr(store.url, group=f"recon/subj01/{name}/final", consolidated=False)
        assert final.images.shape == (16, 16, 16, 3) and final.images.dtype == np.uint8
        recorded = json.loads(store.group(f"recon/subj01/{name}/final").attrs["run"])
        settings = S.preset(recorded["preset"], **recorded["settings"])
        assert (settings.strength, settings.mix) == (strength, w_text)
        assert recorded["stage1"] == ("vdvae" if name == "brain-diffuser" else "vdvae-10")
        assert store.group(f"recon/subj01/{name}/final").attrs["random_weights"] is True
    # runs that share stage 1 share its images; the two stage-1 feature sets differ
    s1 = {n: xr.open_zarr(store.url, group=f"recon/subj01/{n}/stage1", consolidated=False).images.values
          for n in REFERENCE_PRESETS}
    np.testing.assert_array_equal(s1["seed-text"], s1["seed-vision"])
    assert not np.array_equal(s1["seed-text"], s1["brain-diffuser"])
