"""Training the project's VDVAE with its own objective (the demo fits a small one to mini-NSD photographs).

The objective is openai/vdvae's negative ELBO per image dimension:

    loss = [ −log p(x | z) + Σ_blocks KL(q(z_i | x, z_<i) ‖ p(z_i | z_<i)) ] / (H · W · 3)

* ``−log p(x | z)``: the discretized mixture of logistics of PixelCNN++ on 8-bit pixels mapped to
  [−1, 1] (bin width 2/255; the edge bins take the tails), with the output head's layout
  (:func:`fmri2img.models.vdvae.dmol_sample` samples from the same parameters);
* KL: closed form between diagonal Gaussians given by mean and log σ, per latent, summed.

A KL weight β ramps linearly from ``kl_start`` to 1 over the first ``kl_warmup`` fraction of the
steps (KL annealing, Bowman et al. 2016), a standard aid that keeps a briefly trained VAE from
ignoring its latents; the reported ``elbo`` is always the unweighted one.  Training is
deterministic for a given seed and thread count: weights, batches and noise come from one
seeded generator, and the thread count is fixed while training.  Nothing here knows about stores.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fmri2img.models.vdvae import preprocess_images
from fmri2img.models.vdvae_blocks import VDVAE, VDVAEHparams, init_random_weights

logger = logging.getLogger(__name__)

__all__ = ["TrainSettings", "dmol_log_likelihood", "gaussian_kl", "negative_elbo", "train_vdvae", "targets"]


@dataclass(frozen=True)
class TrainSettings:
    """Settings of :func:`train_vdvae` (all recorded in the demo's manifest).

    Attributes
    ----------
    steps : int
        Optimiser steps (the budget; no early stopping, so the run is reproducible).
    batch_size : int
    lr : float
        Adam learning rate (after a linear warm-up over the first 5 % of the steps).
    kl_start : float
        KL weight β at step 0; β rises linearly to 1 at ``kl_warmup · steps``.
    kl_warmup : float
        Fraction of the steps over which β reaches 1.
    grad_clip : float
        Gradient-norm clip (openai/vdvae clips at 200 for imagenet64).
    seed : int
    threads : int
        torch intra-op threads while training (results depend on it only through float summation order).
    """

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    kl_start: float = 0.1
    kl_warmup: float = 0.5
    grad_clip: float = 100.0
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def gaussian_kl(mu1: torch.Tensor, mu2: torch.Tensor, logsigma1: torch.Tensor, logsigma2: torch.Tensor
                ) -> torch.Tensor:
    """KL(N(mu1, σ1²) ‖ N(mu2, σ2²)) per element, from means and log standard deviations.

    ``−½ + log σ2 − log σ1 + (σ1² + (mu1 − mu2)²) / (2 σ2²)``.
    """
    return -0.5 + logsigma2 - logsigma1 + 0.5 * (logsigma1.exp() ** 2 + (mu1 - mu2) ** 2) / (logsigma2.exp() ** 2)


def dmol_log_likelihood(x: torch.Tensor, params: torch.Tensor, nr_mix: int) -> torch.Tensor:
    """Log-likelihood of 8-bit RGB pixels under the discretized mixture of logistics, per image.

    Parameters
    ----------
    x : Tensor of shape (n, H, W, 3)
        Pixels ``v / 127.5 − 1`` for v in 0..255.
    params : Tensor of shape (n, H, W, nr_mix · 10)
        ``nr_mix`` mixture logits, then per channel ``nr_mix`` means, log-scales (floored at −7)
        and coefficients (tanh; G's mean adds c0·R, B's adds c1·R + c2·G).
    nr_mix : int

    Returns
    -------
    Tensor of shape (n,)
        Σ over pixels of log Σ_k π_k Π_c P(x_c | k), in nats.
    """
    n, h, w, _ = x.shape
    logits = params[..., :nr_mix]
    rest = params[..., nr_mix:].reshape(n, h, w, 3, 3 * nr_mix)
    means = rest[..., :nr_mix]
    log_scales = rest[..., nr_mix:2 * nr_mix].clamp(min=-7.0)
    coef = torch.tanh(rest[..., 2 * nr_mix:])
    xk = x[..., None]  # (n, h, w, 3, 1)
    m_r = means[..., 0, :]
    m_g = means[..., 1, :] + coef[..., 0, :] * xk[..., 0, :]
    m_b = means[..., 2, :] + coef[..., 1, :] * xk[..., 0, :] + coef[..., 2, :] * xk[..., 1, :]
    centered = xk - torch.stack([m_r, m_g, m_b], dim=3)
    inv_s = torch.exp(-log_scales)
    plus_in = inv_s * (centered + 1.0 / 255.0)
    min_in = inv_s * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)          # log σ(plus_in): the bottom bin's mass
    log_one_minus_cdf_min = -F.softplus(min_in)           # log(1 − σ(min_in)): the top bin's mass
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)  # density at the centre × bin width
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(127.5))
    log_probs = torch.where(xk < -0.999, log_cdf_plus, torch.where(xk > 0.999, log_one_minus_cdf_min, inner))
    per_mix = log_probs.sum(dim=3) + torch.log_softmax(logits, dim=-1)
    return torch.logsumexp(per_mix, dim=-1).sum(dim=(1, 2))


def negative_elbo(model: VDVAE, x_in: torch.Tensor, x_target: torch.Tensor, generator: torch.Generator,
                  kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The training forward pass: posterior samples in every block, KL per block, DMOL distortion.

    Parameters
    ----------
    model : VDVAE
    x_in : Tensor of shape (n, H, W, 3)
        Normalised input ``(v + shift) · scale`` (what the encoder sees).
    x_target : Tensor of shape (n, H, W, 3)
        ``v / 127.5 − 1`` (what the likelihood scores).
    generator : torch.Generator
        Source of the posterior noise ε.
    kl_weight : float
        β multiplying the rate in ``loss``.

    Returns
    -------
    dict with scalar tensors ``loss`` (distortion + β·rate), ``elbo`` (distortion + rate),
    ``distortion`` and ``rate``, each in nats per image dimension, and ``rate_per_block`` (L,).
    """
    dec = model.decoder
    acts = model.encoder(x_in)
    xs = dec._start()
    n = x_in.shape[0]
    kls = []
    for block in dec.dec_blocks:
        a = acts[block.base]
        x = block.state_in(xs, n, a)
        qm, qv = block.posterior(x, a)
        pm, pv, x = block.split_prior(x)
        eps = torch.randn(qm.shape, generator=generator, dtype=qm.dtype)
        z = qm + torch.exp(qv) * eps
        kls.append(gaussian_kl(qm, pm, qv, pv).sum(dim=(1, 2, 3)))
        xs[block.base] = block.finish(x, z)
    params = dec.out_net(dec.final(xs[model.hparams.image_size]))
    ndims = float(np.prod(x_target.shape[1:]))
    distortion = -dmol_log_likelihood(x_target, params, model.hparams.num_mixtures).mean() / ndims
    per_block = torch.stack(kls, 1).mean(0) / ndims
    rate = per_block.sum()
    return {"loss": distortion + kl_weight * rate, "elbo": distortion + rate, "distortion": distortion,
            "rate": rate, "rate_per_block": per_block.detach()}


def targets(images: np.ndarray, hparams: VDVAEHparams) -> tuple[np.ndarray, np.ndarray]:
    """Encoder inputs and likelihood targets of uint8 images at the model's side.

    Returns
    -------
    x_in, x_target : arrays of shape (n, image_size, image_size, 3), float32
    """
    x_in = preprocess_images(images, hparams)
    pixels = x_in / np.float32(hparams.scale) - np.float32(hparams.shift)   # the resized 0..255 values
    return x_in, (np.round(pixels) / np.float32(127.5) - 1).astype(np.float32)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _kl_weight(step: int, s: TrainSettings) -> float:
    ramp = max(1, int(s.kl_warmup * s.steps))
    return 1.0 if step >= ramp else s.kl_start + (1.0 - s.kl_start) * step / ramp


def train_vdvae(images: np.ndarray, hparams: VDVAEHparams, settings: TrainSettings = TrainSettings(),
                model: VDVAE | None = None, on_step: Callable[[int], None] | None = None) -> tuple[VDVAE, dict]:
    """Fit a VDVAE to uint8 images by minimising the β-weighted negative ELBO with Adam.

    Parameters
    ----------
    images : array of shape (n, height, width, 3), uint8
        Resized to ``hparams.image_size`` (PIL bilinear, as the features stage does).
    hparams : VDVAEHparams
    settings : TrainSettings
    model : VDVAE, optional
        Continue from this model (float32, CPU); by default a new one with seeded random weights.
    on_step : callable, optional
        Called with the number of steps done after each step (a progress bar).

    Returns
    -------
    model : VDVAE
        In eval mode, gradients off.
    history : dict
        ``loss``, ``elbo``, ``distortion``, ``rate`` per step (lists of float, nats per dim),
        ``seconds``, ``settings``.
    """
    if settings.steps < 1 or settings.batch_size < 1:
        raise ValueError(f"steps={settings.steps}, batch_size={settings.batch_size}; expected positive integers")
    x_in, x_t = (torch.from_numpy(a) for a in targets(images, hparams))
    g = torch.Generator().manual_seed(int(settings.seed))
    if model is None:
        model = init_random_weights(VDVAE(hparams), g)
    model.train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    warm = max(1, settings.steps // 20)
    hist: dict[str, list] = {"loss": [], "elbo": [], "distortion": [], "rate": []}
    t0 = time.perf_counter()
    with _threads(settings.threads):
        for step in range(settings.steps):
            for group in opt.param_groups:
                group["lr"] = settings.lr * min(1.0, (step + 1) / warm)
            idx = torch.randint(len(x_in), (min(settings.batch_size, len(x_in)),), generator=g)
            out = negative_elbo(model, x_in[idx], x_t[idx], g, _kl_weight(step, settings))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            for k in hist:
                hist[k].append(float(out[k].detach()))
            if on_step is not None:
                on_step(step + 1)
    hist["seconds"] = time.perf_counter() - t0
    hist["settings"] = settings.to_dict()
    logger.info("trained VDVAE %s on %d images: %d steps in %.1f s, ELBO %.3f -> %.3f nats/dim", hparams.name,
                len(images), settings.steps, hist["seconds"], hist["elbo"][0], np.mean(hist["elbo"][-20:]))
    return model.eval().requires_grad_(False), hist
