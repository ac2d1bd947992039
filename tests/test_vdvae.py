"""VDVAE (fmri2img.models.vdvae): official checkpoint layout, encode/decode against a functional
reference written from openai/vdvae's facts, per-image seeding, loading and errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fmri2img.storage.weights import open_weights
from fmri2img.models import vdvae as V
from fmri2img.models.vdvae_blocks import IMAGENET64, TINY, VDVAE
from fmri2img.models.weights import WeightsError, image_generator


# ----------------------------------------------------------------------------- the official layout
def _expand(layer_string):
    """'64x2,64d2,4m1' → [(64, None), (64, None), (64, 2), (4, 1)] (the official grammar)."""
    out = []
    for item in layer_string.split(","):
        m = re.fullmatch(r"(\d+)(?:([xdm])(\d+))?", item)
        res, op, k = int(m.group(1)), m.group(2), m.group(3)
        out += [(res, None)] * int(k) if op == "x" else [(res, int(k) if op else None)]
    return out


def official_state_shapes(width, zdim, bottleneck, num_mixtures, no_bias_above, enc_blocks, dec_blocks,
                          channels=3):
    """Key → shape of openai/vdvae's VAE.state_dict(), written from vae.py / vae_helpers.py facts.

    Encoder: in_conv 3×3 (channels→width); per enc block Block(width, mid, width) = c1 1×1, c2 and
    c3 3×3 (1×1 at res ≤ 2), c4 1×1.  DecBlock: enc = Block(2·width, mid, 2·zdim), prior =
    Block(width, mid, 2·zdim + width), z_proj 1×1 zdim→width, resnet = Block(width, mid, width).
    Decoder: bias_xs (1, width, r, r) per sorted resolution ≤ no_bias_above, out_net.out_conv
    1×1 width→num_mixtures·10, gain and bias (1, width, 1, 1).  Every conv has a bias.
    """
    mid = int(width * bottleneck)
    shapes = {}

    def conv(name, c_out, c_in, k):
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)
        shapes[f"{name}.bias"] = (c_out,)

    def block(name, c_in, c_out, res):
        k = 3 if res > 2 else 1
        conv(f"{name}.c1", mid, c_in, 1)
        conv(f"{name}.c2", mid, mid, k)
        conv(f"{name}.c3", mid, mid, k)
        conv(f"{name}.c4", c_out, mid, 1)

    conv("encoder.in_conv", width, channels, 3)
    for i, (res, _) in enumerate(_expand(enc_blocks)):
        block(f"encoder.enc_blocks.{i}", width, width, res)
    dec = _expand(dec_blocks)
    for i, (res, _) in enumerate(dec):
        p = f"decoder.dec_blocks.{i}"
        block(f"{p}.enc", 2 * width, 2 * zdim, res)
        block(f"{p}.prior", width, 2 * zdim + width, res)
        conv(f"{p}.z_proj", width, zdim, 1)
        block(f"{p}.resnet", width, width, res)
    for j, res in enumerate(sorted({r for r, _ in dec if r <= no_bias_above})):
        shapes[f"decoder.bias_xs.{j}"] = (1, width, res, res)
    conv("decoder.out_net.out_conv", num_mixtures * 10, width, 1)
    shapes["decoder.gain"] = (1, width, 1, 1)
    shapes["decoder.bias"] = (1, width, 1, 1)
    return shapes


OFFICIAL_IMAGENET64 = dict(width=512, zdim=16, bottleneck=0.25, num_mixtures=10, no_bias_above=64,
                           enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
                           dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12")


def test_full_size_builds_with_official_keys_and_shapes():
    with torch.device("meta"):
        model = VDVAE(IMAGENET64)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_state_shapes(**OFFICIAL_IMAGENET64)
    assert sorted(set(official) - set(ours)) == [] and sorted(set(ours) - set(official)) == []
    assert ours == official
    assert len(model.decoder.dec_blocks) == 75 and len(model.encoder.enc_blocks) == 65
    # The released EMA file is 501 MB of float32 (REFERENCE.md §2.1): the parameter count agrees.
    n_params = sum(int(np.prod(s)) for s in official.values())
    assert abs(n_params * 4 / 1e6 - 501) < 2


def test_tiny_has_the_official_layout_too():
    with torch.device("meta"):
        model = VDVAE(TINY)
    official = official_state_shapes(TINY.width, TINY.zdim, TINY.bottleneck_multiple, TINY.num_mixtures,
                                     TINY.no_bias_above, TINY.enc_blocks, TINY.dec_blocks)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official


def test_latent_shapes_match_reference_table():
    shapes = V.latent_shapes(IMAGENET64, 31)
    assert shapes == [(16, 1, 1)] * 2 + [(16, 4, 4)] * 4 + [(16, 8, 8)] * 8 + [(16, 16, 16)] * 16 + [(16, 32, 32)]
    assert V.latent_size(IMAGENET64, 31) == 91168
    assert V.latent_size(IMAGENET64, 10) == 5152
    assert V.latent_size(IMAGENET64, 75) == 16 * (2 + 4 * 16 + 8 * 64 + 16 * 256 + 32 * 1024 + 13 * 4096)
    assert V.latent_size(TINY, 3) == TINY.zdim * (1 + 1 + 16)


# ----------------------------------------------------------------------------- functional reference
def _ref_block(sd, name, x, residual, down=None):
    h = x
    for c in ("c1", "c2", "c3", "c4"):
        w = sd[f"{name}.{c}.weight"]
        h = F.conv2d(F.gelu(h), w, sd[f"{name}.{c}.bias"], padding=w.shape[-1] // 2)
    out = x + h if residual else h
    return F.avg_pool2d(out, down) if down else out


def _ref_encoder(sd, hp, x_nhwc):
    x = F.conv2d(x_nhwc.permute(0, 3, 1, 2), sd["encoder.in_conv.weight"], sd["encoder.in_conv.bias"], padding=1)
    acts = {x.shape[2]: x}
    for i, (_, down) in enumerate(_expand(hp.enc_blocks)):
        x = _ref_block(sd, f"encoder.enc_blocks.{i}", x, True, down)
        acts[x.shape[2]] = x
    return acts


def _ref_decoder(sd, hp, n, acts=None, latents=(), eps=(), t=1.0):
    """Posterior pass when ``acts`` is given (z = qm + exp(qv)·eps), else forward_manual_latents."""
    z_dim = hp.zdim
    start = sorted({r for r, _ in _expand(hp.dec_blocks)})
    xs = {r: sd[f"decoder.bias_xs.{j}"].repeat(n, 1, 1, 1) for j, r in enumerate(start)}
    zs = []
    for i, (res, mixin) in enumerate(_expand(hp.dec_blocks)):
        if acts is not None and i == len(eps):
            break
        p = f"decoder.dec_blocks.{i}"
        x = xs[res]
        if mixin:
            x = x + F.interpolate(xs[mixin], scale_factor=res // mixin, mode="nearest")
        feats = _ref_block(sd, f"{p}.prior", x, False)
        if acts is not None:
            q = _ref_block(sd, f"{p}.enc", torch.cat([x, acts[res]], 1), False)
            z = q[:, :z_dim] + torch.exp(q[:, z_dim:]) * eps[i]
        elif i < len(latents):
            z = latents[i]
        else:
            z = feats[:, :z_dim] + torch.exp(feats[:, z_dim:2 * z_dim] + np.log(t)) * eps[i - len(latents)]
        x = x + feats[:, 2 * z_dim:]
        x = x + F.conv2d(z, sd[f"{p}.z_proj.weight"], sd[f"{p}.z_proj.bias"])
        xs[res] = _ref_block(sd, f"{p}.resnet", x, True)
        zs.append(z)
    final = xs[hp.image_size] * sd["decoder.gain"] + sd["decoder.bias"]
    return zs, final


def _ref_dmol_uint8(params, nr_mix, gumbel_u, logistic_u):
    """NumPy DMoL sampling with one-hot selection, then (x + 1)·127.5 → uint8 (out_net.sample)."""
    n, h, w, _ = params.shape
    logits = params[..., :nr_mix]
    rest = params[..., nr_mix:].reshape(n, h, w, 3, 3 * nr_mix)
    sel = np.eye(nr_mix)[np.argmax(logits - np.log(-np.log(gumbel_u)), axis=3)][:, :, :, None, :]
    means = (rest[..., :nr_mix] * sel).sum(4)
    log_scales = np.maximum((rest[..., nr_mix:2 * nr_mix] * sel).sum(4), -7.0)
    coeffs = (np.tanh(rest[..., 2 * nr_mix:]) * sel).sum(4)
    x = means + np.exp(log_scales) * (np.log(logistic_u) - np.log(1.0 - logistic_u))
    x0 = np.clip(x[..., 0], -1, 1)
    x1 = np.clip(x[..., 1] + coeffs[..., 0] * x0, -1, 1)
    x2 = np.clip(x[..., 2] + coeffs[..., 1] * x0 + coeffs[..., 2] * x1, -1, 1)
    return np.clip((np.stack([x0, x1, x2], -1) + 1.0) * 127.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread (and the CI machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return V.build_random_vdvae(TINY, seed=3)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 90, 90, 3), dtype=np.uint8)


def test_preprocess_matches_pil_and_formula(images):
    x = V.preprocess_images(images, IMAGENET64)
    direct = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.BILINEAR), np.float64)
                       for im in images])
    assert x.shape == (3, 64, 64, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, (direct - 115.92961967) / 69.37404, rtol=1e-6, atol=1e-6)


def test_encode_matches_functional_reference(tiny, images):
    ids, seed, nb = np.array([5, 70000, 12]), 11, len(TINY.decoder_layers())
    z = V.encode_latents(tiny, images, ids, seed, n_blocks=nb)
    assert z.shape == (3, V.latent_size(TINY, nb)) and z.dtype == np.float32
    sd = tiny.state_dict()
    gens = [image_generator(seed, i) for i in ids]
    eps_img = [[torch.randn(s, generator=g) for s in V.latent_shapes(TINY, nb)] for g in gens]
    eps = [torch.stack([e[b] for e in eps_img]) for b in range(nb)]
    acts = _ref_encoder(sd, TINY, torch.from_numpy(V.preprocess_images(images, TINY)))
    zs, _ = _ref_decoder(sd, TINY, 3, acts=acts, eps=eps)
    ref = torch.cat([q.reshape(3, -1) for q in zs], 1).numpy()
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)
    # n_blocks keeps a prefix, in C order per block
    np.testing.assert_array_equal(V.encode_latents(tiny, images, ids, seed, n_blocks=4),
                                  z[:, :V.latent_size(TINY, 4)])


def test_decode_matches_functional_reference(tiny):
    nb, seed, ids, t = 4, 2, np.array([3, 9]), 0.7
    rng = np.random.default_rng(1)
    lat = rng.standard_normal((2, V.latent_size(TINY, nb))).astype(np.float32)
    out = V.decode_latents(tiny, lat, ids, seed, n_blocks=nb, temperature=t)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    sd = tiny.state_dict()
    shapes = [(TINY.zdim, r, r) for r, _ in TINY.decoder_layers()]
    blocks, start = [], 0
    for s in shapes[:nb]:
        blocks.append(torch.from_numpy(lat[:, start:start + int(np.prod(s))].reshape((2,) + s)))
        start += int(np.prod(s))
    gens = [image_generator(seed, i) for i in ids]
    eps_img = [[torch.randn(s, generator=g) for s in shapes[nb:]] for g in gens]
    eps = [torch.stack([e[b] for e in eps_img]) for b in range(len(shapes) - nb)]
    _, final = _ref_decoder(sd, TINY, 2, latents=blocks, eps=eps, t=t)
    params = F.conv2d(final, sd["decoder.out_net.out_conv.weight"], sd["decoder.out_net.out_conv.bias"])
    m = TINY.num_mixtures
    lo, hi = 1e-5, 1 - 1e-5
    gumbel = np.stack([(lo + (hi - lo) * torch.rand((64, 64, m), generator=g)).numpy() for g in gens])
    logistic = np.stack([(lo + (hi - lo) * torch.rand((64, 64, 3), generator=g)).numpy() for g in gens])
    ref = _ref_dmol_uint8(params.permute(0, 2, 3, 1).double().numpy(), m, gumbel.astype(np.float64),
                          logistic.astype(np.float64))
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert (diff == 0).mean() > 0.999 and diff.max() <= 1  # float32 vs float64 truncation at bin edges


def test_dmol_sample_matches_numpy():
    rng = np.random.default_rng(4)
    m = 3
    params = rng.normal(0, 0.5, (2, 5, 6, m * 10))
    gu = rng.uniform(1e-5, 1 - 1e-5, (2, 5, 6, m))
    lu = rng.uniform(1e-5, 1 - 1e-5, (2, 5, 6, 3))
    x = V.dmol_sample(torch.from_numpy(params), m, torch.from_numpy(gu), torch.from_numpy(lu))
    assert x.shape == (2, 5, 6, 3) and float(x.abs().max()) <= 1.0
    ref = _ref_dmol_uint8(params, m, gu, lu)
    np.testing.assert_array_equal(V.to_uint8(x.double()), ref)


def test_posterior_latents_fed_back_give_the_posterior_state(tiny, images):
    """forward_manual_latents with every block's posterior z reproduces the posterior pass."""
    nb = len(TINY.decoder_layers())
    x = torch.from_numpy(V.preprocess_images(images, TINY))
    g = torch.Generator().manual_seed(0)
    eps = [torch.randn((3,) + s, generator=g) for s in V.latent_shapes(TINY, nb)]
    zs, xs = tiny.decoder.posterior_latents(tiny.encoder(x), eps)
    manual = tiny.decoder.manual_latents(3, zs, [])
    torch.testing.assert_close(manual, tiny.decoder.final(xs[64]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- seeding
def test_encode_deterministic_and_seeded_per_image(tiny, images):
    ids = np.array([1, 2, 3])
    a = V.encode_latents(tiny, images, ids, seed=0, n_blocks=6)
    np.testing.assert_array_equal(a, V.encode_latents(tiny, images, ids, seed=0, n_blocks=6))
    assert not np.allclose(a, V.encode_latents(tiny, images, ids, seed=1, n_blocks=6))
    # the same image with other companions (same batch size): bit-identical
    other = np.stack([images[2], images[0], images[1]])
    b = V.encode_latents(tiny, other, np.array([3, 1, 2]), seed=0, n_blocks=6)
    np.testing.assert_array_equal(b[[1, 2, 0]], a)
    # other batch sizes: the same noise; values equal up to float rounding of batched convolutions
    c = V.encode_latents(tiny, images, ids, seed=0, n_blocks=6, batch_size=1)
    np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)
    assert V.encode_latents(tiny, images[:0], ids[:0], seed=0, n_blocks=6).shape == (0, V.latent_size(TINY, 6))
    # the same pixels under another id draw other noise
    d = V.encode_latents(tiny, images, np.array([7, 2, 3]), seed=0, n_blocks=6)
    assert not np.allclose(d[0], a[0]) and np.array_equal(d[1:], a[1:])


def test_decode_deterministic_batch_independent_and_temperature(tiny):
    rng = np.random.default_rng(2)
    lat = rng.standard_normal((3, V.latent_size(TINY, 5))).astype(np.float32)
    ids = np.array([10, 11, 12])
    a = V.decode_latents(tiny, lat, ids, seed=0, n_blocks=5)
    np.testing.assert_array_equal(a, V.decode_latents(tiny, lat, ids, seed=0, n_blocks=5))
    one = V.decode_latents(tiny, lat[1:2], ids[1:2], seed=0, n_blocks=5)
    assert (one[0] == a[1]).mean() > 0.999
    assert not np.array_equal(a, V.decode_latents(tiny, lat, ids, seed=5, n_blocks=5))
    cold = V.decode_latents(tiny, lat, ids, seed=0, n_blocks=5, temperature=0.0)
    assert not np.array_equal(a, cold)
    assert V.decode_latents(tiny, lat[:0], ids[:0], seed=0, n_blocks=5).shape == (0, 64, 64, 3)
    np.testing.assert_array_equal(V.decode_latents(tiny, lat, ids, seed=0, n_blocks=5, temperature=np.float32(1)), a)
    full = V.decode_latents(tiny, rng.standard_normal((1, V.latent_size(TINY, 12))).astype(np.float32),
                            ids[:1], seed=0, n_blocks=12)
    assert full.shape == (1, 64, 64, 3)


def test_upsample_512_is_pil_bicubic(tiny):
    im = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    up = V.upsample_512(im)
    assert up.shape == (2, 512, 512, 3) and up.dtype == np.uint8
    np.testing.assert_array_equal(up[1], np.asarray(Image.fromarray(im[1]).resize((512, 512), resample=3)))


def test_compute_dtypes_agree(images):
    ids = np.arange(3)
    ref = V.encode_latents(V.build_random_vdvae(TINY, seed=3), images, ids, 0, n_blocks=8)
    for dtype, tol in (("bfloat16", 0.1), ("float16", 0.02)):
        z = V.encode_latents(V.build_random_vdvae(TINY, seed=3, dtype=dtype), images, ids, 0, n_blocks=8)
        assert z.dtype == np.float32
        np.testing.assert_allclose(z, ref, atol=tol)


# ----------------------------------------------------------------------------- loading
def test_checkpoint_round_trip_plain_and_ddp(tiny, tmp_path, images):
    torch.save(tiny.state_dict(), tmp_path / "tiny-model-ema.th")  # openai/vdvae: torch.save(state_dict)
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, tmp_path / "tiny-model.th")
    want = V.encode_latents(tiny, images, np.arange(3), 0, n_blocks=5)
    for name in ("tiny-model-ema.th", "tiny-model.th"):
        loaded = V.load_vdvae(str(tmp_path / name), hparams=TINY, device="cpu")
        assert not loaded.training
        np.testing.assert_array_equal(V.encode_latents(loaded, images, np.arange(3), 0, n_blocks=5), want)


def test_memory_url_and_extractor_with_weights(tiny, images):
    import fsspec

    with fsspec.filesystem("memory").open("/vdvae/tiny-ema.th", "wb") as f:
        torch.save(tiny.state_dict(), f)
    ext = V.make_vdvae_extractor(weights=open_weights("memory://vdvae/tiny-ema.th"), hparams="tiny", n_blocks=5,
                                 device="cpu")
    assert ext.random_weights is False and ext.attrs()["weights"] == "tiny-ema.th"
    np.testing.assert_array_equal(ext.extract(images, np.arange(3), 0),
                                  V.encode_latents(tiny, images, np.arange(3), 0, n_blocks=5))


def test_wrong_checkpoint_gives_weights_error(tmp_path):
    wrong = V.build_random_vdvae(TINY.__class__(**{**TINY.to_dict(), "zdim": 8}))
    torch.save(wrong.state_dict(), tmp_path / "other.th")
    with pytest.raises(WeightsError, match=r"VDVAE tiny \(other.th\) do not match.*misshapen: "
                                           r"decoder.dec_blocks.0.enc.c4.bias \(16,\) \(expected \(8,\)\)"):
        V.load_vdvae(str(tmp_path / "other.th"), hparams=TINY, device="cpu")
    sd = V.build_random_vdvae(TINY).state_dict()
    sd.pop("decoder.gain")
    torch.save(sd, tmp_path / "partial.th")
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): decoder.gain"):
        V.load_vdvae(str(tmp_path / "partial.th"), hparams=TINY, device="cpu")
    with pytest.raises(WeightsError, match=r"misshapen"):  # a tiny file is no imagenet64 checkpoint
        V.load_vdvae(str(tmp_path / "partial.th"), device="cpu")


# ----------------------------------------------------------------------------- extractor
def test_tiny_extractor_interface(images):
    ext = V.make_vdvae_extractor(tiny=True, n_blocks=6, device="cpu", batch_size=2)
    assert (ext.name, ext.input, ext.feature_dims, ext.random_weights) == ("vdvae", "images", ("latent",), True)
    assert ext.feature_shape == (V.latent_size(TINY, 6),)
    attrs = json.loads(json.dumps(ext.attrs()))
    assert attrs["n_blocks"] == 6 and attrs["hparams"] == "tiny" and attrs["random_weights"] is True
    assert attrs["weights"] is None
    out = ext.extract(images, np.array([4, 5, 6]), seed=1)
    assert out.shape == (3,) + ext.feature_shape and out.dtype == np.float32
    np.testing.assert_allclose(out, V.make_vdvae_extractor(tiny=True, n_blocks=6, device="cpu")
                               .extract(images, np.array([4, 5, 6]), seed=1), rtol=1e-5, atol=1e-6)


def test_no_weights_error_names_the_config_key():
    with pytest.raises(WeightsError, match=r"set \[weights\] vdvae .*imagenet64-iter-1600000-model-ema.th"):
        V.make_vdvae_extractor()


# ----------------------------------------------------------------------------- bad input
def test_clear_errors(tiny, images):
    with pytest.raises(ValueError, match=r"images has dtype float64; expected uint8"):
        V.encode_latents(tiny, images.astype(float), np.arange(3), 0, n_blocks=3)
    with pytest.raises(ValueError, match=r"images has shape \(90, 90, 3\); expected \(n, height, width, 3\)"):
        V.encode_latents(tiny, images[0], np.arange(1), 0, n_blocks=3)
    with pytest.raises(ValueError, match=r"image_ids has 2 entries but there are 3 images"):
        V.encode_latents(tiny, images, np.arange(2), 0, n_blocks=3)
    with pytest.raises(ValueError, match=r"n_blocks=13; expected an integer in 1..12"):
        V.encode_latents(tiny, images, np.arange(3), 0, n_blocks=13)
    with pytest.raises(ValueError, match=r"n_blocks=31; expected an integer in 1..12"):
        V.latent_size(TINY, 31)
    lat = np.zeros((2, V.latent_size(TINY, 4)), np.float32)
    with pytest.raises(ValueError, match=r"expected \(n, 72\) for n_blocks=3 .*fits n_blocks=4"):
        V.decode_latents(tiny, lat, np.arange(2), 0, n_blocks=3)
    lat[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"latents contains 1 NaN/inf"):
        V.decode_latents(tiny, lat, np.arange(2), 0, n_blocks=4)
    with pytest.raises(ValueError, match=r"temperature=-1.0; expected a finite number"):
        V.decode_latents(tiny, lat, np.arange(2), 0, n_blocks=4, temperature=-1.0)
    with pytest.raises(ValueError, match=r"dtype='fp8'; expected one of"):
        V.make_vdvae_extractor(tiny=True, dtype="fp8")
    with pytest.raises(ValueError, match=r"enc_blocks='64y2'"):
        TINY.__class__(**{**TINY.to_dict(), "enc_blocks": "64y2"}).encoder_layers()


@pytest.mark.slow
def test_full_size_random_weights_encode_and_decode_one_image(images):
    model = V.build_random_vdvae(IMAGENET64, seed=0, device="cpu")
    z = V.encode_latents(model, images[:1], np.array([0]), 0, n_blocks=31)
    assert z.shape == (1, 91168) and np.isfinite(z).all()
    img = V.decode_latents(model, z[:, :5152], np.array([0]), 0, n_blocks=10)
    assert img.shape == (1, 64, 64, 3)
