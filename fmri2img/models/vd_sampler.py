"""Stage 2 sampler: Versatile Diffusion img2img from predicted CLIP embeddings (REFERENCE.md §4.2).

Per image: the stage-1 picture → [−1, 1] → AutoencoderKL posterior **sample** × 0.18215 = z0;
``t_enc = int(strength · steps)``; z = √ᾱ·z0 + √(1 − ᾱ)·ε at the noise timestep of the chosen
convention (:data:`NOISE_CONVENTIONS`; "ldm" = DDIM index ``t_enc``, timestep 741 at the
defaults, as Brain-Diffuser; "diffusers" = the first denoising timestep, 721); then ``t_enc``
DDIM steps over timesteps 721 → 1.  Each step runs the dual-context UNet on [uncond, cond]
and applies classifier-free guidance ε = ε_u + g(ε_c − ε_u); the DDIM update (eta 0 by default)
is, with ᾱ_t and ᾱ_prev from the scheduler's ``alphas_cumprod``::

    x0 = (x − √(1 − ᾱ_t)·ε) / √ᾱ_t
    x  ← √ᾱ_prev·x0 + √(1 − ᾱ_prev − σ²)·ε + σ·ξ,   σ = eta·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)

(ᾱ_prev at the last step is ᾱ at timestep 0, LDM's choice).  The latents and this update stay
in float32; the UNet and autoencoder run in the chosen dtype.  Decoding: z / 0.18215 →
AutoencoderKL → clamp((x + 1)/2) → uint8 by truncation (``ToPILImage``, as Brain-Diffuser saves).

Every random draw (posterior sample, encode noise, eta noise) comes from
:func:`fmri2img.models.weights.image_generator` (run seed, image id), on the CPU, so an image's
result does not depend on batching or device.  An image whose latents or decoded output hold
NaN/Inf is redone in float32 and flagged (Brain-Diffuser issue #14: black or noise images).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from fmri2img.models.versatile import MIX_KEY, MixSpec, VDComponents
from fmri2img.models.weights import image_generator

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: where the init latent is noised: DDIM timesteps (ascending) and t_enc → the noise timestep
NOISE_CONVENTIONS: dict[str, Callable[[np.ndarray, int], int]] = {
    "ldm": lambda ts, t_enc: int(ts[t_enc]),  # Brain-Diffuser / LDM img2img: index t_enc (741)
    "diffusers": lambda ts, t_enc: int(ts[t_enc - 1]),  # diffusers img2img: the first denoising timestep (721)
}


@dataclass(frozen=True)
class VDSettings:
    """Settings of stage 2; the defaults are Brain-Diffuser's (``-diff_str 0.75 -mix_str 0.4``).

    Attributes
    ----------
    strength : float
        Share of the DDIM schedule that is re-run: ``t_enc = int(strength · steps)`` steps.
    mix : float
        Text share of every cross-attention residual (0 = vision only, 1 = text only).
    guidance : float
        Classifier-free guidance scale (1 = no unconditional pass).
    steps : int
        DDIM steps of the full schedule (timesteps 1, 1 + 1000/steps, …).
    eta : float
        DDIM stochasticity (0 = deterministic).
    convention : str
        Noise timestep of the init latent, a key of :data:`NOISE_CONVENTIONS`.
    dtype : str
        "float16", "bfloat16" or "float32" for the UNet and autoencoder.
    size : int
        Side of the output (and of the init image fed to the autoencoder), a multiple of the
        autoencoder's downsampling (8 for kl-f8).
    vision_tokens, text_tokens : int
        Context tokens per image: 257 (CLS + 16×16 patches of CLIP ViT-L/14) and 77.
    batch_size : int
        Images per UNet call (results do not depend on it beyond float rounding).
    """

    strength: float = 0.75
    mix: float = 0.4
    guidance: float = 7.5
    steps: int = 50
    eta: float = 0.0
    convention: str = "ldm"
    dtype: str = "float16"
    size: int = 512
    vision_tokens: int = 257
    text_tokens: int = 77
    batch_size: int = 4

    def __post_init__(self) -> None:
        checks = [
            ("mix", 0 <= self.mix <= 1, "a text share in [0, 1] (0 = vision only, 1 = text only; Brain-Diffuser 0.4)"),
            ("guidance", self.guidance >= 1, "≥ 1 (1 = no guidance; Brain-Diffuser 7.5)"),
            ("steps", isinstance(self.steps, int) and self.steps >= 1, "a positive integer (Brain-Diffuser 50)"),
            ("eta", self.eta >= 0, "≥ 0 (0 = deterministic DDIM, Brain-Diffuser)"),
            ("convention", self.convention in NOISE_CONVENTIONS, f"one of {sorted(NOISE_CONVENTIONS)}"),
            ("dtype", self.dtype in _DTYPES, f"one of {sorted(_DTYPES)}"),
            ("size", isinstance(self.size, int) and self.size > 0, "a positive integer (512)"),
            ("vision_tokens", self.vision_tokens >= 1, "≥ 1 (257 for CLIP ViT-L/14, 77 for the reduced variant)"),
            ("text_tokens", self.text_tokens >= 1, "≥ 1 (77)"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "a positive integer"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"VDSettings.{name}={getattr(self, name)!r}; expected {expected}")
        top = self.steps - 1 if self.convention == "ldm" else self.steps
        if not 1 <= int(self.strength * self.steps) <= top:
            raise ValueError(
                f"VDSettings.strength={self.strength!r} gives t_enc = int(strength · steps) = "
                f"{int(self.strength * self.steps)} steps; expected 1 … {top} with steps={self.steps} and the "
                f"{self.convention!r} convention (Brain-Diffuser: 0.75 → 37 of 50)")

    @property
    def t_enc(self) -> int:
        """DDIM steps run: ``int(strength · steps)``."""
        return int(self.strength * self.steps)


#: named settings; :func:`preset` returns one with overrides.  ``mix`` is the text share of every
#: cross-attention residual (Brain-Diffuser's ``mix_str``; its ``mixed_ratio`` = 1 − mix is the vision
#: share), so "image/text weight 1/0" is mix 0 and "0/1" is mix 1.  The seed-* presets are the seed
#: paper's experiments (Bevington, Brigliadori & Johnson 2024, a student variant of Brain-Diffuser;
#: REFERENCE.md §6); they ran on its reduced features (10 VDVAE blocks, 77 CLIP-vision tokens), which
#: are feature settings, not stage-2 settings (see examples/seed_presets.toml).
PRESETS: dict[str, VDSettings] = {
    "brain-diffuser": VDSettings(strength=0.75, mix=0.4, guidance=7.5),
    "seed-vision": VDSettings(strength=0.75, mix=0.0, guidance=7.5),
    "seed-text": VDSettings(strength=0.75, mix=1.0, guidance=7.5),
    "seed-half": VDSettings(strength=0.75, mix=0.5, guidance=7.5),
    "seed-text-0.55": VDSettings(strength=0.55, mix=1.0, guidance=7.5),
}

#: what each preset is and where it comes from (one line each; the README's presets table)
PRESET_NOTES: dict[str, str] = {
    "brain-diffuser": "Brain-Diffuser's stage 2: strength 0.75 (37 of 50 DDIM steps), vision 0.6 / text 0.4, "
                      "guidance 7.5 (versatilediffusion_reconstruct_images.py -diff_str 0.75 -mix_str 0.4)",
    "seed-vision": "seed paper, vision only (image/text weight 1/0): strength 0.75, mixing 0 "
                   "(its versatilediffusion_reconstruct_images_onlyvision script)",
    "seed-text": "seed paper, text only (image/text weight 0/1): strength 0.75, mixing 1 "
                 "(its versatilediffusion_reconstruct_images_onlytxt script)",
    "seed-half": "seed paper, image/text weight 0.5/0.5 at strength 0.75: trials its report mentions "
                 "(run in an online Versatile Diffusion demo; not in its code)",
    "seed-text-0.55": "seed paper's preferred run: text only at strength 0.55 (27 of 50 DDIM steps) "
                      "(its versatilediffusion_reconstruct_images_diffusionstrength055 script)",
}


def preset(name: str, **overrides: Any) -> VDSettings:
    """The named :data:`PRESETS` entry, with fields replaced by ``overrides`` (e.g. ``dtype="float32"``)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"Versatile Diffusion preset {name!r} is unknown; expected one of {sorted(PRESETS)}") from None
    return replace(base, **overrides)


# --------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Schedule:
    """The DDIM timesteps of one run.

    Attributes
    ----------
    noise_t : int
        Timestep whose ᾱ noises the init latent.
    timesteps : list of int
        Denoising timesteps, descending (721, 701, …, 1 at the defaults).
    alphas_cumprod : Tensor of shape (num_train_timesteps,), float32
    """

    noise_t: int
    timesteps: list[int]
    alphas_cumprod: torch.Tensor

    def alpha_prev(self, i: int) -> torch.Tensor:
        """ᾱ after step ``i``: the next timestep's, or ᾱ at timestep 0 after the last step."""
        nxt = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0
        return self.alphas_cumprod[nxt]


def ddim_schedule(scheduler: Any, settings: VDSettings) -> Schedule:
    """Uniform ("leading") DDIM timesteps with ``steps_offset``, cut at ``t_enc``.

    Parameters
    ----------
    scheduler : diffusers DDIMScheduler
        Supplies ``num_train_timesteps``, ``steps_offset`` and ``alphas_cumprod``.
    settings : VDSettings
    """
    cfg = scheduler.config
    ts = np.arange(settings.steps) * (cfg.num_train_timesteps // settings.steps) + cfg.steps_offset
    t_enc = settings.t_enc
    return Schedule(noise_t=NOISE_CONVENTIONS[settings.convention](ts, t_enc),
                    timesteps=[int(t) for t in ts[:t_enc][::-1]],
                    alphas_cumprod=scheduler.alphas_cumprod.to(torch.float32))


# --------------------------------------------------------------------------- inputs
def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"{name} is None but the settings use it: pass it, or set VDSettings.mix to 1 (text only, "
                         f"no vision context needed) or 0 (vision only, no text context needed)")
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if not t.is_floating_point():
        raise ValueError(f"{name} has dtype {t.dtype}; expected floating-point CLIP embeddings")
    return t.detach().to(torch.float32, copy=True).cpu()


def _check_context(x: Any, name: str, n: int | None, tokens: int, dim: int, what: str, fix: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    want = (tokens, dim) if n is None else (n, tokens, dim)
    if n is None and t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != want:
        got = tuple(t.shape)
        if t.dim() == len(want) and got[-1] == dim and got[-2] != tokens:
            raise ValueError(f"{name} has {got[-2]} tokens per image (shape {got}) but the Versatile Diffusion "
                             f"{what} context expects {tokens} (VDSettings.{what}_tokens): {fix}")
        raise ValueError(f"{name} has shape {got}; expected {want} ({'' if n is None else 'images × '}tokens × "
                         f"features, features = the UNet's cross_attention_dim {dim})"
                         + (": the embeddings come from a CLIP of another projection size than this Versatile "
                            "Diffusion model (ViT-L/14: 768)" if got[-1:] != (dim,) else ""))
    if not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)).flatten().tolist()
        raise ValueError(f"{name} holds NaN or Inf (rows {bad[:10]}): check the regression predictions")
    return t


_VISION_FIX = ("predict all 257 CLIP-vision tokens (token reduction 'all'), or for the reduced variant of the seed "
               "paper set VDSettings.vision_tokens=77 and pass vision_uncond[:77]")
_TEXT_FIX = "pass the 77 CLIP-text tokens (the length CLIP pads captions to)"


def _init_pixels(images: Any, size: int) -> torch.Tensor:
    """(n, H, W, 3) uint8 → (n, 3, size, size) float32 in [−1, 1] (PIL bicubic when H, W ≠ size)."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"init_images has shape {arr.shape} and dtype {arr.dtype}; expected (n, height, width, 3) "
                         f"uint8 stage-1 reconstructions (models.vdvae.upsample_512 output)")
    if arr.shape[1:3] != (size, size):
        arr = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC)) for a in arr])
    x = torch.from_numpy(arr.astype(np.float32) / np.float32(255)).permute(0, 3, 1, 2)
    return x * 2 - 1


# --------------------------------------------------------------------------- the three parts
@torch.no_grad()
def encode_init(components: VDComponents, pixels: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Posterior sample × scaling factor: (n, 3, S, S) in [−1, 1] → (n, 4, S/f, S/f) float32."""
    vae = components.vae
    dist = vae.encode(pixels.to(components.device, components.dtype)).latent_dist
    eps = torch.cat([torch.randn((1, *dist.mean.shape[1:]), generator=g) for g in generators])
    z = dist.mean.float() + dist.std.float() * eps.to(dist.mean.device)
    return z * float(vae.config.scaling_factor)


@torch.no_grad()
def denoise(components: VDComponents, z0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, spec: MixSpec,
            schedule: Schedule, guidance: float, eta: float,
            generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Noise z0 to ``schedule.noise_t`` and run the guided DDIM loop; returns float32 latents like z0.

    cond, uncond : Tensor of shape (n, tokens, d), the concatenated [vision | text] contexts.
    """
    dev, dt = components.device, components.dtype
    acp = schedule.alphas_cumprod
    noise = torch.cat([torch.randn((1, *z0.shape[1:]), generator=g) for g in generators]).to(dev)
    a = acp[schedule.noise_t]
    x = a.sqrt() * z0 + (1 - a).sqrt() * noise
    guided = guidance != 1
    context = torch.cat([uncond, cond]) if guided else cond
    context = context.to(dev, dt)
    kwargs = {MIX_KEY: spec}
    for i, t in enumerate(schedule.timesteps):
        x_in = torch.cat([x, x]) if guided else x
        tt = torch.full((x_in.shape[0],), t, device=dev, dtype=torch.long)
        out = components.unet(x_in.to(dt), tt, encoder_hidden_states=context,
                              cross_attention_kwargs=kwargs).sample.float()
        if guided:
            e_u, e_c = out.chunk(2)
            eps = e_u + guidance * (e_c - e_u)
        else:
            eps = out
        a_t, a_prev = acp[t], schedule.alpha_prev(i)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).sqrt() * eps
        if eta > 0:
            xi = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in generators]).to(dev)
            x = x + sigma * xi
    return x


@torch.no_grad()
def decode(components: VDComponents, latents: torch.Tensor) -> torch.Tensor:
    """(n, 4, h, w) latents → (n, 3, S, S) float32 ``(x + 1)/2``, NOT yet clamped (so NaN/Inf stay visible)."""
    vae = components.vae
    x = vae.decode((latents / float(vae.config.scaling_factor)).to(components.device, components.dtype)).sample
    return (x.float() + 1) / 2


def to_uint8(images01: torch.Tensor) -> np.ndarray:
    """(n, 3, S, S) → (n, S, S, 3) uint8: clamp to [0, 1], ×255, truncate (torchvision ``ToPILImage``)."""
    x = images01.clamp(0, 1).mul(255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# --------------------------------------------------------------------------- public entry
def _contexts(vision, text, vision_uncond, text_uncond, mix: float) -> tuple[torch.Tensor, torch.Tensor, MixSpec]:
    n = (vision if vision is not None else text).shape[0]
    cond, uncond = [], []
    if mix < 1:
        cond.append(vision)
        uncond.append(vision_uncond[None].expand(n, -1, -1))
    if mix > 0:
        cond.append(text)
        uncond.append(text_uncond[None].expand(n, -1, -1))
    spec = MixSpec(vision_tokens=vision.shape[1] if mix < 1 else 0, text_weight=float(mix))
    return torch.cat(cond, 1), torch.cat(uncond, 1), spec


def _run(components: VDComponents, pixels, cond, uncond, spec, ids, seed,
         settings) -> tuple[torch.Tensor, torch.Tensor]:
    gens = [image_generator(seed, i) for i in ids]
    z0 = encode_init(components, pixels, gens)
    lat = denoise(components, z0, cond, uncond, spec, ddim_schedule(components.scheduler, settings),
                  settings.guidance, settings.eta, gens)
    return lat, decode(components, lat)


def _finite_rows(*tensors: torch.Tensor) -> np.ndarray:
    ok = [torch.isfinite(t.reshape(t.shape[0], -1)).all(1).cpu().numpy() for t in tensors]
    return np.logical_and.reduce(ok)


def sample(components: VDComponents, init_images: np.ndarray, vision: Any, text: Any, vision_uncond: Any,
           text_uncond: Any, image_ids: Sequence[int], seed: int,
           settings: VDSettings | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`reconstruct` before quantisation: latents, float images and the fp32-redo flags.

    Returns
    -------
    latents : Tensor of shape (n, 4, size/f, size/f), float32
    images : Tensor of shape (n, 3, size, size), float32 ``(x + 1)/2`` (unclamped)
    redone_fp32 : array of shape (n,), bool
    """
    s = settings or VDSettings()
    ids = [int(i) for i in np.asarray(image_ids).reshape(-1)]
    pixels = _init_pixels(init_images, s.size)
    n, d = len(pixels), components.context_dim
    if len(ids) != n:
        raise ValueError(f"image_ids has {len(ids)} entries but init_images has {n} images; pass one NSD image id "
                         f"per image (they seed each image's randomness)")
    if s.size % components.latent_scale:
        raise ValueError(f"VDSettings.size={s.size} is not a multiple of the autoencoder's downsampling "
                         f"{components.latent_scale}; use 512")
    vis = vu = txt = tu = None
    if s.mix < 1:
        vis = _check_context(vision, "vision", n, s.vision_tokens, d, "vision", _VISION_FIX)
        vu = _check_context(vision_uncond, "vision_uncond", None, s.vision_tokens, d, "vision", _VISION_FIX)
    if s.mix > 0:
        txt = _check_context(text, "text", n, s.text_tokens, d, "text", _TEXT_FIX)
        tu = _check_context(text_uncond, "text_uncond", None, s.text_tokens, d, "text", _TEXT_FIX)
    cond, uncond, spec = _contexts(vis, txt, vu, tu, s.mix)
    with components.lock:
        if components.dtype != _DTYPES[s.dtype]:
            logger.info("casting Versatile Diffusion from %s to %s", components.dtype, s.dtype)
            components.to(dtype=_DTYPES[s.dtype])
        lats, imgs, redone = [], [], np.zeros(n, bool)
        for lo in range(0, n, s.batch_size):
            sl = slice(lo, lo + s.batch_size)
            lat, img = _run(components, pixels[sl], cond[sl], uncond[sl], spec, ids[sl], seed, s)
            bad = np.flatnonzero(~_finite_rows(lat, img))
            if len(bad):
                lat, img = _redo_fp32(components, bad, lat, img, pixels[sl], cond[sl], uncond[sl], spec,
                                      ids[sl], seed, s)
                redone[lo + bad] = True
            lats.append(lat.cpu())
            imgs.append(img.cpu())
    return torch.cat(lats), torch.cat(imgs), redone


def _redo_fp32(components, bad, lat, img, pixels, cond, uncond, spec, ids, seed, s):
    """Rerun the images at ``bad`` in float32 (the components are cast and cast back)."""
    shown = [ids[i] for i in bad]
    if components.dtype == torch.float32:
        raise FloatingPointError(f"images {shown} gave NaN or Inf latents or pixels in float32: check their "
                                 f"embeddings and init images for extreme values")
    logger.warning("images %s gave NaN/Inf in %s; redoing them in float32", shown, s.dtype)
    back = components.dtype
    idx = torch.as_tensor(bad)
    try:
        components.to(dtype=torch.float32)
        lat2, img2 = _run(components, pixels[idx], cond[idx], uncond[idx], spec, shown, seed, s)
    finally:
        components.to(dtype=back)
    if not _finite_rows(lat2, img2).all():
        raise FloatingPointError(f"images {shown} gave NaN or Inf even in float32: check their embeddings and init "
                                 f"images for extreme values")
    lat, img = lat.clone(), img.clone()
    lat[idx], img[idx] = lat2.to(lat.device), img2.to(img.device)
    return lat, img


def reconstruct(components: VDComponents, init_images: np.ndarray, vision: Any, text: Any, vision_uncond: Any,
                text_uncond: Any, image_ids: Sequence[int], seed: int = 0,
                settings: VDSettings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Stage 2 of Brain-Diffuser: img2img from the stage-1 images with predicted CLIP contexts.

    Parameters
    ----------
    components : VDComponents
        From :func:`~fmri2img.models.vd_load.load_vd`, :func:`~fmri2img.models.vd_load.load_vd_original`
        or :func:`~fmri2img.models.versatile.tiny_vd_components`.
    init_images : array of shape (n, H, W, 3), uint8
        Stage-1 reconstructions (resized to ``settings.size`` with PIL bicubic if needed).
    vision : array of shape (n, vision_tokens, d), float
        Predicted CLIP-vision context (257 × 768 for ViT-L/14); unused (may be None) when mix = 1.
    text : array of shape (n, text_tokens, d), float
        Predicted CLIP-text context (77 × 768); unused (may be None) when mix = 0.
    vision_uncond : array of shape (vision_tokens, d)
        :func:`fmri2img.models.clip.clip_vision_uncond`.
    text_uncond : array of shape (text_tokens, d)
        :func:`fmri2img.models.clip.clip_text_uncond`.
    image_ids : sequence of int, length n
        NSD image ids; with ``seed`` they seed each image's random draws.
    seed : int
        Run seed.
    settings : VDSettings, optional
        Default: Brain-Diffuser's (:data:`PRESETS` ``"brain-diffuser"``).

    Returns
    -------
    images : array of shape (n, size, size, 3), uint8
    info : dict
        ``redone_fp32`` (n,) bool: images redone in float32 after NaN/Inf; ``t_enc``;
        ``noise_timestep``; ``timesteps`` (denoising, descending); ``dtype``; ``settings``.
    """
    s = settings or VDSettings()
    _, imgs, redone = sample(components, init_images, vision, text, vision_uncond, text_uncond, image_ids, seed, s)
    sched = ddim_schedule(components.scheduler, s)
    info = {"redone_fp32": redone, "t_enc": s.t_enc, "noise_timestep": sched.noise_t,
            "timesteps": sched.timesteps, "dtype": s.dtype, "settings": s}
    return to_uint8(imgs), info
