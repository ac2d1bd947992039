"""Training the VDVAE (models/vdvae_train.py) and the demo's cached VDVAE (demo_vdvae.py).

The ELBO's two terms are checked against independent computations (the discretized logistic
mixture by SciPy's logistic CDF, the Gaussian KL by numerical integration); a short run must
lower the ELBO, repeat bit for bit, and its file must load through the real weights path.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from fmri2img.models.vdvae import encode_latents, make_vdvae_extractor
from fmri2img.models.vdvae_blocks import VDVAE, VDVAEHparams, init_random_weights
from fmri2img.models.vdvae_train import (TrainSettings, dmol_log_likelihood, gaussian_kl, negative_elbo, targets,
                                         train_vdvae)
from tests.minifixtures import mini_nsd  # noqa: F401

#: an 8×8 VDVAE small enough for a few steps in a second or two
SMALL = VDVAEHparams(name="small", width=8, zdim=2, bottleneck_multiple=0.5, num_mixtures=2, no_bias_above=64,
                     enc_blocks="8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x1", image_size=8)
QUICK = TrainSettings(steps=25, batch_size=8, lr=3e-3, seed=5, threads=1)


def _images(n=12, side=16, seed=0):
    """Smooth colour images (a random colour per quadrant), uint8."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, side, side, 3), np.uint8)
    h = side // 2
    for i in range(n):
        for a in (0, h):
            for b in (0, h):
                out[i, a:a + h, b:b + h] = rng.integers(0, 256, 3)
    return out


# ----------------------------------------------------------------------------- the objective
def _dmol_reference(x, params, nr_mix):
    """Plain NumPy/SciPy: Σ_pixels log Σ_k π_k Π_c P(bin of x_c | k), G and B means shifted by the coefficients."""
    n, h, w, _ = x.shape
    total = np.zeros(n)
    for i in range(n):
        for r in range(h):
            for c in range(w):
                p = params[i, r, c]
                logits, rest = p[:nr_mix], p[nr_mix:].reshape(3, 3 * nr_mix)
                log_pi = logits - special.logsumexp(logits)
                terms = []
                for k in range(nr_mix):
                    means = rest[:, k].copy()
                    s = np.exp(np.maximum(rest[:, nr_mix + k], -7.0))
                    coef = np.tanh(rest[:, 2 * nr_mix + k])
                    v = x[i, r, c]
                    means[1] += coef[0] * v[0]
                    means[2] += coef[1] * v[0] + coef[2] * v[1]
                    logp = 0.0
                    for ch in range(3):
                        cdf = stats.logistic(loc=means[ch], scale=s[ch]).cdf
                        hi = 1.0 if v[ch] > 0.999 else cdf(v[ch] + 1 / 255)
                        lo = 0.0 if v[ch] < -0.999 else cdf(v[ch] - 1 / 255)
                        logp += np.log(hi - lo)
                    terms.append(log_pi[k] + logp)
                total[i] += special.logsumexp(terms)
    return total


def test_dmol_log_likelihood_equals_scipy_logistic_bins():
    rng = np.random.default_rng(0)
    nr_mix = 3
    v = rng.integers(0, 256, (2, 3, 3, 3))
    v[0, 0, 0] = [0, 255, 128]  # both edge bins
    x = v / 127.5 - 1
    params = rng.normal(0, 0.5, (2, 3, 3, nr_mix * 10))
    got = dmol_log_likelihood(torch.tensor(x), torch.tensor(params), nr_mix).numpy()
    np.testing.assert_allclose(got, _dmol_reference(x, params, nr_mix), rtol=1e-9, atol=1e-9)


def test_gaussian_kl_equals_numerical_integral():
    for mu1, mu2, ls1, ls2 in [(0.3, -0.5, -0.2, 0.4), (1.0, 1.0, 0.0, 0.0), (-2.0, 0.5, 0.7, -0.3)]:
        p, q = stats.norm(mu1, np.exp(ls1)), stats.norm(mu2, np.exp(ls2))
        ref, _ = integrate.quad(lambda z: p.pdf(z) * (p.logpdf(z) - q.logpdf(z)), -30, 30, limit=200)
        got = gaussian_kl(*(torch.tensor(v, dtype=torch.float64) for v in (mu1, mu2, ls1, ls2))).item()
        assert got == pytest.approx(ref, abs=1e-7)


def test_negative_elbo_is_distortion_plus_rate_per_dimension():
    model = init_random_weights(VDVAE(SMALL), torch.Generator().manual_seed(0)).double()
    x_in, x_t = (torch.from_numpy(a).double() for a in targets(_images(4), SMALL))
    out = negative_elbo(model, x_in, x_t, torch.Generator().manual_seed(1), kl_weight=0.25)
    ndims = 8 * 8 * 3
    params = None

    def grab(_module, _inp, result):
        nonlocal params
        params = result

    handle = model.decoder.out_net.register_forward_hook(grab)
    negative_elbo(model, x_in, x_t, torch.Generator().manual_seed(1))
    handle.remove()
    ll = dmol_log_likelihood(x_t, params, SMALL.num_mixtures)
    assert out["distortion"].item() == pytest.approx(-ll.mean().item() / ndims, rel=1e-12)
    assert out["elbo"].item() == pytest.approx(out["distortion"].item() + out["rate"].item(), rel=1e-12)
    assert out["loss"].item() == pytest.approx(out["distortion"].item() + 0.25 * out["rate"].item(), rel=1e-12)
    assert out["rate"].item() > 0 and out["rate_per_block"].shape == (5,)


def test_targets_are_the_resized_pixels_scaled_to_plus_minus_one():
    imgs = _images(3, side=8)
    x_in, x_t = targets(imgs, SMALL)
    np.testing.assert_allclose(x_t, imgs / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(x_in, (imgs + SMALL.shift) * SMALL.scale, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training
def _eval_elbo(model, imgs):
    x_in, x_t = (torch.from_numpy(a) for a in targets(imgs, SMALL))
    with torch.no_grad():
        return negative_elbo(model, x_in, x_t, torch.Generator().manual_seed(99))["elbo"].item()


def test_a_few_steps_lower_the_elbo_and_repeat_exactly():
    imgs = _images(12)
    threads = torch.get_num_threads()
    before = init_random_weights(VDVAE(SMALL), torch.Generator().manual_seed(QUICK.seed))
    model, hist = train_vdvae(imgs, SMALL, QUICK)
    assert torch.get_num_threads() == threads  # the fixed training thread count is restored
    assert len(hist["elbo"]) == QUICK.steps and hist["settings"]["seed"] == QUICK.seed
    assert _eval_elbo(model, imgs) < _eval_elbo(before, imgs) - 0.25  # nats per dimension
    again, _ = train_vdvae(imgs, SMALL, QUICK)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    other, _ = train_vdvae(imgs, SMALL, TrainSettings(**{**QUICK.to_dict(), "seed": 6}))
    assert not torch.equal(model.decoder.gain, other.decoder.gain)
    assert not any(p.requires_grad for p in model.parameters())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="steps=0"):
        train_vdvae(_images(2), SMALL, TrainSettings(steps=0))


# ----------------------------------------------------------------------------- the demo's cached VDVAE
CACHE_SETTINGS = TrainSettings(steps=3, batch_size=8, seed=1, threads=1)


def test_demo_vdvae_never_trains_on_a_test_image_and_loads_through_the_weights_path(mini_nsd, tmp_path):
    from fmri2img.demo.vdvae import ensure_demo_vdvae, split_image_ids
    from fmri2img.storage.nsd import NSDLayout, read_expdesign, read_stimuli
    import fsspec

    fs = fsspec.filesystem("file")
    design = read_expdesign(fs, NSDLayout(str(mini_nsd)).expdesign())
    train, test = split_image_ids(mini_nsd, (1, 2))
    shared = set((design.sharedix - 1).tolist())
    assert set(test.tolist()) == shared and not set(train.tolist()) & shared
    assert set(train.tolist()) == set((design.subjectim[:2] - 1).ravel().tolist()) - shared

    path, manifest = ensure_demo_vdvae(mini_nsd, tmp_path / "models", (1, 2), CACHE_SETTINGS)
    assert manifest["image_ids"] == train.tolist() and not set(manifest["image_ids"]) & set(test.tolist())
    assert not manifest["reused"] and manifest["settings"]["steps"] == 3
    on_disk = json.loads((tmp_path / "models" / "vdvae-demo.json").read_text())
    assert on_disk["sha256"].startswith(path.name.split("-")[-1].split(".")[0]) and on_disk["n_images"] == len(train)

    ext = make_vdvae_extractor(weights=str(path), hparams="demo", n_blocks=7, note="demo weights", device="cpu")
    assert not ext.random_weights and ext.attrs()["weights"] == path.name
    assert ext.attrs()["weights_note"] == "demo weights" and ext.feature_shape == (5384,)
    state = torch.load(path, weights_only=True)
    model = VDVAE(ext.model.hparams)
    model.load_state_dict(state)
    imgs = read_stimuli(fs, NSDLayout(str(mini_nsd)).stimuli(), test[:3])
    np.testing.assert_array_equal(ext.extract(imgs, test[:3], seed=0),
                                  encode_latents(model.eval(), imgs, test[:3], seed=0, n_blocks=7))


def test_demo_vdvae_cache_is_reused_only_when_the_manifest_and_file_match(mini_nsd, tmp_path, monkeypatch):
    from fmri2img.demo import vdvae as demo_vdvae

    models = tmp_path / "models"
    path, first = demo_vdvae.ensure_demo_vdvae(mini_nsd, models, (1, 2), CACHE_SETTINGS)
    real_train = demo_vdvae.train_vdvae
    monkeypatch.setattr(demo_vdvae, "train_vdvae", lambda *a, **k: pytest.fail("retrained a matching cache"))
    again, second = demo_vdvae.ensure_demo_vdvae(mini_nsd, models, (1, 2), CACHE_SETTINGS)
    assert second["reused"] and again == path and second["sha256"] == first["sha256"]

    calls = []
    monkeypatch.setattr(demo_vdvae, "train_vdvae", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    other = TrainSettings(**{**CACHE_SETTINGS.to_dict(), "steps": 4})
    new_path, third = demo_vdvae.ensure_demo_vdvae(mini_nsd, models, (1, 2), other)   # settings changed
    assert calls and not third["reused"] and third["settings"]["steps"] == 4
    assert sorted(p.name for p in models.glob("*.pt")) == [new_path.name]
    _, fourth = demo_vdvae.ensure_demo_vdvae(mini_nsd, models, (1,), other)            # other images
    assert len(calls) == 2 and not fourth["reused"]
    p4 = models / fourth["file"]
    p4.write_bytes(p4.read_bytes()[:-10])                                               # damaged file
    _, fifth = demo_vdvae.ensure_demo_vdvae(mini_nsd, models, (1,), other)
    assert len(calls) == 3 and not fifth["reused"]
