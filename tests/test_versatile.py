"""Versatile Diffusion stage 2: sampler vs diffusers' own img2img computation, mixing, seeds, NaN redo, loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fmri2img.models import vd_load as VL
from fmri2img.storage.weights import open_weights
from fmri2img.models import vd_keys
from fmri2img.models import versatile as V
from fmri2img.models import vd_sampler as S
from fmri2img.models.weights import WeightsError, image_generator

torch.set_num_threads(1)
D = 32  # tiny CLIP projection size


def _inputs(n=2, seed=0, vision_tokens=257):
    rng = np.random.default_rng(seed)
    return dict(init_images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                vision=rng.standard_normal((n, vision_tokens, D)).astype(np.float32),
                text=rng.standard_normal((n, 77, D)).astype(np.float32),
                vision_uncond=rng.standard_normal((vision_tokens, D)).astype(np.float32),
                text_uncond=rng.standard_normal((77, D)).astype(np.float32))


def _settings(**kw):
    base = dict(size=32, dtype="float32", steps=8, strength=0.5, batch_size=4)
    return S.VDSettings(**{**base, **kw})


# --------------------------------------------------------------------------- independent references
def _pipeline(unet, vae, scheduler):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_run(unet, vae, scheduler, inp, cond, uncond, ids, s, output_type):
    pipe = _pipeline(unet, vae, scheduler)
    x = torch.from_numpy(inp["init_images"].astype(np.float32) / 255).permute(0, 3, 1, 2)
    n = len(ids)
    return pipe(image=x, prompt_embeds=torch.as_tensor(cond),
                negative_prompt_embeds=torch.as_tensor(uncond)[None].expand(n, -1, -1), strength=s.strength,
                num_inference_steps=s.steps, guidance_scale=s.guidance, eta=0.0,
                generator=[image_generator(0, i) for i in ids], output_type=output_type).images


def _swap_to_text(image_unet, text_unet):
    """The image flow with every cross-attention transformer taken from the text flow (text-only VD)."""
    for path in V.transformer_paths(image_unet):
        parent, idx = path.rsplit(".", 1)
        image_unet.get_submodule(parent)[int(idx)] = text_unet.get_submodule(path)
    return image_unet


@pytest.mark.slow
@pytest.mark.parametrize("mix", [0.0, 1.0])
def test_single_context_equals_diffusers_img2img(mix):
    """Mix 0 (vision only) and mix 1 (text only) equal diffusers' StableDiffusionImg2ImgPipeline on the same flow."""
    comps = V.tiny_vd_components(seed=0)
    image_unet, text_unet, vae, sched = V.tiny_vd_models(seed=0)
    unet = image_unet if mix == 0 else _swap_to_text(image_unet, text_unet)
    inp, ids = _inputs(), [5, 9]
    s = _settings(mix=mix, convention="diffusers", strength=0.75)
    lat, img, redone = S.sample(comps, **inp, image_ids=ids, seed=0, settings=s)
    key = "vision" if mix == 0 else "text"
    ref_lat = _pipeline_run(unet, vae, sched, inp, inp[key], inp[key + "_uncond"], ids, s, "latent")
    ref_img = _pipeline_run(unet, vae, sched, inp, inp[key], inp[key + "_uncond"], ids, s, "np")
    scale = ref_lat.abs().max()
    assert torch.allclose(lat, ref_lat, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(img.clamp(0, 1).permute(0, 2, 3, 1).numpy(), ref_img, atol=1e-4)
    assert not redone.any()


class _DualNoMask(torch.nn.Module):
    """diffusers' DualTransformer2DModel, called without the encoder_attention_mask it rejects."""

    def __init__(self, dual):
        super().__init__()
        self.dual = dual

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_attention_mask=None, **kw):
        return self.dual(hidden_states, encoder_hidden_states, **kw)


def test_mixed_ldm_run_equals_diffusers_dual_transformer_and_ddim_scheduler():
    """Mix 0.4 with the LDM noise level equals a loop of diffusers' DualTransformer2DModel + DDIMScheduler."""
    from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel

    comps = V.tiny_vd_components(seed=1)
    image_unet, text_unet, vae, sched = V.tiny_vd_models(seed=1)
    for path in V.transformer_paths(image_unet):
        parent, idx = path.rsplit(".", 1)
        cfg = image_unet.get_submodule(path).config
        dual = DualTransformer2DModel(num_attention_heads=cfg.num_attention_heads,
                                      attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels,
                                      cross_attention_dim=cfg.cross_attention_dim)
        dual.transformers[0], dual.transformers[1] = image_unet.get_submodule(path), text_unet.get_submodule(path)
        dual.mix_ratio, dual.condition_lengths, dual.transformer_index_for_condition = 0.6, [257, 77], [0, 1]
        image_unet.get_submodule(parent)[int(idx)] = _DualNoMask(dual)
    inp, ids = _inputs(seed=3), [11, 2]
    s = _settings(mix=0.4, convention="ldm", steps=10, strength=0.5)
    lat, _, _ = S.sample(comps, **inp, image_ids=ids, seed=0, settings=s)

    sched.set_timesteps(s.steps)
    timesteps = sched.timesteps[s.steps - s.t_enc:]
    assert [int(t) for t in timesteps] == [401, 301, 201, 101, 1]  # LDM: noised one DDIM index higher, at 501
    x = torch.from_numpy(inp["init_images"].astype(np.float32) / 255).permute(0, 3, 1, 2) * 2 - 1
    z = []
    with torch.no_grad():
        for i, g in zip(range(2), [image_generator(0, k) for k in ids]):
            z0 = vae.encode(x[i:i + 1]).latent_dist.sample(g) * 0.18215
            z.append(sched.add_noise(z0, torch.randn(z0.shape, generator=g), torch.tensor([501])))
        z = torch.cat(z)
        cond = torch.cat([torch.from_numpy(inp["vision"]), torch.from_numpy(inp["text"])], 1)
        uncond = torch.cat([torch.from_numpy(inp["vision_uncond"]), torch.from_numpy(inp["text_uncond"])])
        ctx = torch.cat([uncond[None].expand(2, -1, -1), cond])
        for t in timesteps:
            e_u, e_c = image_unet(torch.cat([z, z]), t, encoder_hidden_states=ctx).sample.chunk(2)
            z = sched.step(e_u + 7.5 * (e_c - e_u), t, z, eta=0.0).prev_sample
    assert torch.allclose(lat, z, atol=1e-5 * z.abs().max(), rtol=0)


def test_default_schedule_is_brain_diffusers():
    """Strength 0.75 of 50: noise at DDIM index 37 (timestep 741), denoise 721 → 1 (37 steps)."""
    sched = V.vd_scheduler()
    s = S.VDSettings()
    plan = S.ddim_schedule(sched, s)
    assert s.t_enc == 37 and plan.noise_t == 741 and len(plan.timesteps) == 37
    assert plan.timesteps[0] == 721 and plan.timesteps[-1] == 1
    assert S.ddim_schedule(sched, S.VDSettings(convention="diffusers")).noise_t == 721
    sched.set_timesteps(50)  # diffusers' own DDIM timesteps: 981, 961, …, 1
    assert plan.timesteps == [int(t) for t in sched.timesteps[13:]]
    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000) ** 2  # REFERENCE §4.2, in float64
    np.testing.assert_allclose(plan.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=2e-6)
    assert plan.alpha_prev(36) == plan.alphas_cumprod[0]  # LDM: ᾱ_prev of the last step is ᾱ_0


# --------------------------------------------------------------------------- behaviour
def test_shapes_determinism_and_seeds():
    comps = V.tiny_vd_components()
    inp = _inputs(n=3)
    s = _settings(steps=10)
    out, info = S.reconstruct(comps, **inp, image_ids=[1, 2, 3], seed=4, settings=s)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert info["redone_fp32"].tolist() == [False] * 3 and info["t_enc"] == 5 and info["noise_timestep"] == 501
    again, _ = S.reconstruct(comps, **inp, image_ids=[1, 2, 3], seed=4, settings=s)
    np.testing.assert_array_equal(out, again)
    other, _ = S.reconstruct(comps, **inp, image_ids=[1, 2, 3], seed=5, settings=s)
    assert (other != out).any()


def test_same_output_for_any_batch_composition():
    comps = V.tiny_vd_components()
    inp = _inputs(n=3, seed=7)
    ids = [30, 10, 20]
    _, whole, _ = S.sample(comps, **inp, image_ids=ids, seed=0, settings=_settings(batch_size=3))
    _, ones, _ = S.sample(comps, **inp, image_ids=ids, seed=0, settings=_settings(batch_size=1))
    order = [2, 0]
    sub = {k: (v[order] if k not in ("vision_uncond", "text_uncond") else v) for k, v in inp.items()}
    _, part, _ = S.sample(comps, **sub, image_ids=[ids[i] for i in order], seed=0, settings=_settings())
    assert torch.allclose(whole, ones, atol=1e-5)
    assert torch.allclose(whole[order], part, atol=1e-5)


def test_mix_is_continuous_at_the_single_context_ends():
    """The mixed path (both branches) approaches the single-branch runs at mix → 0 and mix → 1."""
    comps = V.tiny_vd_components()
    inp, ids = _inputs(), [1, 2]
    run = {m: S.sample(comps, **inp, image_ids=ids, seed=0, settings=_settings(mix=m))[0]
           for m in (0.0, 1e-6, 0.4, 1 - 1e-6, 1.0)}
    scale = run[0.0].abs().max()
    assert torch.allclose(run[1e-6], run[0.0], atol=1e-4 * scale)
    assert torch.allclose(run[1 - 1e-6], run[1.0], atol=1e-4 * scale)
    assert not torch.allclose(run[0.4], run[0.0], atol=1e-2 * scale)
    # a single-context run ignores the other context entirely (it may even be absent)
    vision_only = S.sample(comps, **{**inp, "text": None, "text_uncond": None}, image_ids=ids, seed=0,
                           settings=_settings(mix=0.0))[0]
    assert torch.equal(vision_only, run[0.0])


@pytest.mark.slow
def test_nan_in_low_precision_is_redone_in_float32():
    """A NaN planted in image 1's UNet output (bfloat16 only) → image 1 redone in fp32 and flagged."""
    comps = V.tiny_vd_components()
    inp, ids = _inputs(), [1, 2]

    def plant(module, args, output):
        if output.dtype != torch.float32:
            output = output.clone()
            output[1] = float("nan")  # the unconditional row of image 1
        return output

    clean16, _, _ = S.sample(comps, **inp, image_ids=ids, seed=0, settings=_settings(dtype="bfloat16"))
    handle = comps.unet.conv_out.register_forward_hook(plant)
    try:
        lat, img, redone = S.sample(comps, **inp, image_ids=ids, seed=0, settings=_settings(dtype="bfloat16"))
        assert redone.tolist() == [False, True]
        assert comps.dtype == torch.bfloat16  # cast back after the redo
        assert torch.isfinite(lat).all() and torch.isfinite(img).all()
        assert torch.equal(lat[0], clean16[0])
        out, info = S.reconstruct(comps, **inp, image_ids=ids, seed=0, settings=_settings(dtype="bfloat16"))
        assert info["redone_fp32"].tolist() == [False, True] and out.shape == (2, 32, 32, 3)
    finally:
        handle.remove()
    # the redo equals a float32 run of the same (bfloat16-loaded) weights
    ref32, _, _ = S.sample(comps, **inp, image_ids=ids, seed=0, settings=_settings())
    assert torch.allclose(lat[1], ref32[1], atol=1e-5 * ref32.abs().max())
    assert not torch.allclose(lat[0], ref32[0], atol=1e-5 * ref32.abs().max())  # image 0 stayed bfloat16


def test_nan_in_float32_is_an_error():
    comps = V.tiny_vd_components()
    handle = comps.vae.decoder.register_forward_hook(lambda m, a, o: o * float("inf"))
    try:
        with pytest.raises(FloatingPointError, match=r"images \[1, 2\].*float32"):
            S.sample(comps, **_inputs(), image_ids=[1, 2], seed=0, settings=_settings(steps=4))
    finally:
        handle.remove()


# --------------------------------------------------------------------------- input errors
def test_wrong_vision_token_count_says_how_to_fix():
    comps = V.tiny_vd_components()
    inp = _inputs()
    inp["vision"] = inp["vision"][:, :77]
    with pytest.raises(ValueError, match=r"vision has 77 tokens.*expects 257.*vision_tokens=77.*vision_uncond\[:77\]"):
        S.reconstruct(comps, **inp, image_ids=[1, 2], settings=_settings(steps=4))
    # the seed paper's reduced variant: 77 vision tokens, set explicitly
    small = _inputs(vision_tokens=77)
    out, _ = S.reconstruct(comps, **small, image_ids=[1, 2], settings=_settings(steps=4, vision_tokens=77))
    assert out.shape == (2, 32, 32, 3)


def test_wrong_feature_size_and_other_inputs():
    comps = V.tiny_vd_components()
    inp = _inputs()
    bad = {**inp, "text": np.zeros((2, 77, 768), np.float32)}
    with pytest.raises(ValueError, match=r"text has shape \(2, 77, 768\).*cross_attention_dim 32.*projection size"):
        S.reconstruct(comps, **bad, image_ids=[1, 2], settings=_settings(steps=4))
    with pytest.raises(ValueError, match="text is None but the settings use it"):
        S.reconstruct(comps, **{**inp, "text": None}, image_ids=[1, 2], settings=_settings(steps=4))
    with pytest.raises(ValueError, match="image_ids has 1 entries"):
        S.reconstruct(comps, **inp, image_ids=[1], settings=_settings(steps=4))
    with pytest.raises(ValueError, match="init_images has shape"):
        S.reconstruct(comps, **{**inp, "init_images": inp["init_images"].astype(np.float32)}, image_ids=[1, 2])
    nan = {**inp, "vision": inp["vision"].copy()}
    nan["vision"][1, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"vision holds NaN or Inf \(rows \[1\]\)"):
        S.reconstruct(comps, **nan, image_ids=[1, 2], settings=_settings(steps=4))


def test_settings_and_presets():
    assert S.PRESETS["brain-diffuser"] == S.VDSettings(strength=0.75, mix=0.4, guidance=7.5)
    seed = S.preset("seed-text-0.55")
    assert seed.mix == 1.0 and seed.strength == 0.55 and seed.t_enc == 27
    assert S.preset("brain-diffuser", dtype="float32").dtype == "float32"
    with pytest.raises(ValueError, match="preset 'nope' is unknown.*brain-diffuser"):
        S.preset("nope")
    with pytest.raises(ValueError, match=r"VDSettings.strength=1.0.*1 … 49.*'ldm'"):
        S.VDSettings(strength=1.0)
    with pytest.raises(ValueError, match=r"VDSettings.mix=1.5; expected a text share in \[0, 1\]"):
        S.VDSettings(mix=1.5)
    with pytest.raises(ValueError, match="VDSettings.convention='x'"):
        S.VDSettings(convention="x")


# --------------------------------------------------------------------------- loading
def _probe(comps, mix=0.4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 257 + 77, D, generator=g)
    with torch.no_grad():
        return comps.unet(x, 41, encoder_hidden_states=ctx,
                          cross_attention_kwargs={V.MIX_KEY: V.MixSpec(257, mix)}).sample, \
            comps.vae.decode(x).sample


def _save_diffusers_dir(root, seed=2):
    image_unet, text_unet, vae, sched = V.tiny_vd_models(seed=seed)
    for name, model in [("image_unet", image_unet), ("text_unet", text_unet), ("vae", vae), ("scheduler", sched)]:
        model.save_pretrained(str(root / name))
    return V.components_from_models(*V.tiny_vd_models(seed=seed))


def test_load_diffusers_directory_local_and_memory_url(tmp_path):
    import fsspec

    expected = _probe(_save_diffusers_dir(tmp_path))
    comps = VL.load_vd(str(tmp_path), device="cpu", dtype="float32")
    for a, b in zip(_probe(comps), expected):
        assert torch.equal(a, b)
    fs = fsspec.filesystem("memory")
    for f in tmp_path.rglob("*"):
        if f.is_file():
            fs.pipe(f"/vdtest/{f.relative_to(tmp_path)}", f.read_bytes())
    remote = VL.load_vd(open_weights("memory://vdtest"), device="cpu", dtype="float32")
    for a, b in zip(_probe(remote), expected):
        assert torch.equal(a, b)
    assert VL.load_vd(str(tmp_path), device="cpu", dtype="bfloat16").dtype == torch.bfloat16


def test_load_diffusers_directory_errors(tmp_path):
    _save_diffusers_dir(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        VL.load_vd(str(tmp_path / "nothing"), device="cpu")
    for f in (tmp_path / "text_unet").iterdir():
        if f.name.startswith("diffusion_pytorch_model"):
            f.unlink()
    with pytest.raises(WeightsError, match=r"text_unet/ needs config.json and diffusion_pytorch_model"):
        VL.load_vd(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="dtype='half'"):
        VL.load_vd(str(tmp_path), device="cpu", dtype="half")


def _tiny_configs():
    image_unet, _, vae, _ = V.tiny_vd_models()
    keep = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    return keep(image_unet.config), keep(vae.config)


def test_original_checkpoint_round_trip(tmp_path):
    """Tiny diffusers models → original four-flow / kl-f8 layout (inverse mapping) → load_vd_original."""
    image_unet, text_unet, vae, _ = V.tiny_vd_models(seed=3)
    unet_sd, vae_sd = V.to_original_checkpoint(image_unet, text_unet, vae)
    assert "model.diffusion_model.time_embed.0.weight" in unet_sd
    assert unet_sd["model.diffusion_model.unet_text.input_blocks.1.1.proj_in.weight"].shape == (32, 32, 1, 1)
    assert vae_sd["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)  # 1×1 conv in the original
    torch.save({"state_dict": {**unet_sd, "optimus.unused": torch.zeros(1)}}, tmp_path / "vd.pth")
    torch.save({f"first_stage_model.{k}": v for k, v in vae_sd.items()}, tmp_path / "kl-f8.pth")
    unet_cfg, vae_cfg = _tiny_configs()
    comps = VL.load_vd_original(str(tmp_path / "vd.pth"), str(tmp_path / "kl-f8.pth"), unet_config=unet_cfg,
                               vae_config=vae_cfg, device="cpu", dtype="float32")
    expected = V.components_from_models(*V.tiny_vd_models(seed=3))
    for mix in (0.0, 0.4, 1.0):
        for a, b in zip(_probe(comps, mix), _probe(expected, mix)):
            assert torch.equal(a, b)
    del unet_sd["model.diffusion_model.unet_text.middle_block.1.proj_out.weight"]
    torch.save(unet_sd, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"text flow mid_block.*1 missing key.*unet_text.middle_block.1.proj_out"):
        VL.load_vd_original(str(tmp_path / "broken.pth"), str(tmp_path / "kl-f8.pth"), unet_config=unet_cfg,
                           vae_config=vae_cfg, device="cpu", dtype="float32")


def test_key_mapping_of_the_full_size_architecture():
    """Known name pairs of the VD / SD layouts (as in diffusers' conversion scripts), on meta tensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**V.VD_IMAGE_UNET)
        vae = AutoencoderKL(**V.VD_VAE)
    table = V.unet_key_map(unet)
    known = {
        "time_embedding.linear_1.weight": ("shared", "time_embed.0.weight"),
        "down_blocks.0.resnets.0.conv1.weight": ("branch", "input_blocks.1.0.in_layers.2.weight"),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight":
            ("branch", "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"),
        "down_blocks.2.downsamplers.0.conv.weight": ("branch", "input_blocks.9.0.op.weight"),
        "mid_block.resnets.1.time_emb_proj.weight": ("branch", "middle_block.2.emb_layers.1.weight"),
        "mid_block.attentions.0.proj_in.weight": ("branch", "middle_block.1.proj_in.weight"),
        "up_blocks.0.resnets.0.conv_shortcut.weight": ("branch", "output_blocks.0.0.skip_connection.weight"),
        "up_blocks.0.upsamplers.0.conv.weight": ("branch", "output_blocks.2.1.conv.weight"),
        "up_blocks.1.upsamplers.0.conv.weight": ("branch", "output_blocks.5.2.conv.weight"),
        "up_blocks.3.attentions.2.proj_out.weight": ("branch", "output_blocks.11.1.proj_out.weight"),
        "conv_out.bias": ("branch", "out.2.bias"),
    }
    assert {k: table[k] for k in known} == known
    assert len(set(table.values())) == len(table) == len(unet.state_dict())  # one-to-one
    vtable = V.vae_key_map(vae)
    vknown = {"decoder.up_blocks.0.resnets.0.conv1.weight": "decoder.up.3.block.0.conv1.weight",
              "decoder.up_blocks.0.upsamplers.0.conv.weight": "decoder.up.3.upsample.conv.weight",
              "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": "encoder.down.1.block.0.nin_shortcut.weight",
              "encoder.mid_block.attentions.0.to_q.weight": "encoder.mid.attn_1.q.weight",
              "decoder.mid_block.resnets.1.norm2.bias": "decoder.mid.block_2.norm2.bias",
              "decoder.conv_norm_out.weight": "decoder.norm_out.weight", "quant_conv.weight": "quant_conv.weight"}
    assert {k: vtable[k][1] for k in vknown} == vknown
    assert len({v for _, v in vtable.values()}) == len(vtable) == len(vae.state_dict())
    assert vd_keys.vae_conv_attention_keys(["encoder.mid_block.attentions.0.to_out.0.weight"]) != []


def test_dual_unet_rejects_mismatched_flows():
    image_unet, text_unet, _, _ = V.tiny_vd_models()
    texts = {p: text_unet.get_submodule(p) for p in V.transformer_paths(text_unet)[:-1]}
    with pytest.raises(WeightsError, match="do not match the image flow"):
        V.dual_unet(image_unet, texts)
    # the scheduler file of a checkpoint supplies the betas; a v-prediction model is refused
    with pytest.raises(WeightsError, match="prediction_type='v_prediction'"):
        V.vd_scheduler(json.loads('{"prediction_type": "v_prediction"}'))
