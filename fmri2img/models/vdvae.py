"""VDVAE latents for Brain-Diffuser: encode stimuli to posterior latents, decode latents to images.

Encoding (REFERENCE.md §2.1): uint8 image → PIL bilinear 64×64 → ``(x − 115.92961967)/69.37404``
→ encoder → the decoder's forward pass with posterior *samples* ``z = μ + exp(log σ)·ε`` for the
first ``n_blocks`` blocks (31 → 91,168 dims at imagenet64), each (zdim, r, r) flattened in C
order and concatenated in block order.

Decoding (§4.1): split the vector by block; blocks below ``n_blocks`` use the given z (the prior
net still runs and its feature residual is added); the others sample z from the prior at a
temperature; the discretized mixture-of-logistics head samples pixels, clipped to [−1, 1] and
mapped to uint8 64×64; :func:`upsample_512` gives the stage-1 output size.

Every random draw comes from ``image_generator(seed, image_id)`` (one generator per image, on
the CPU, in a fixed order), so results do not depend on batch composition or device.
Weights come only through :mod:`fmri2img.models.weights`.
"""
from __future__ import annotations

import logging
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from fmri2img.models.vdvae_blocks import DEMO, IMAGENET64, TINY, VDVAE, VDVAEHparams, init_random_weights
from fmri2img.models.weights import WeightsError, check_state_dict, image_generator, load_state_dict, pick_device

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET64", "TINY", "VDVAE", "VDVAEHparams", "VDVAEExtractor", "build_random_vdvae", "decode_latents",
    "encode_latents", "latent_shapes", "latent_size", "load_vdvae", "make_vdvae_extractor", "preprocess_images",
    "upsample_512",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
"""Compute dtypes by name (the ``dtype`` option)."""

HPARAMS: dict[str, VDVAEHparams] = {"imagenet64": IMAGENET64, "tiny": TINY, "demo": DEMO}
"""Known configurations by name (``demo``: trained by ``fmri2img demo``, see :mod:`fmri2img.models.vdvae_train`)."""

_U_LO, _U_HI = 1e-5, 1.0 - 1e-5  # the official uniform range for Gumbel and logistic draws


# ----------------------------------------------------------------------------- checks
def _check_images(images: Any, what: str = "images") -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{what} has shape {arr.shape}; expected (n, height, width, 3) RGB images: add a batch "
                         f"axis with images[None] for a single image, or convert greyscale to RGB")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} has dtype {arr.dtype}; expected uint8 in 0..255 (NSD stimuli are uint8): "
                         f"convert with np.clip(x, 0, 255).astype(np.uint8)")
    return arr


def _check_ids(image_ids: Any, n: int) -> np.ndarray:
    ids = np.asarray(image_ids).reshape(-1)
    if len(ids) != n:
        raise ValueError(f"image_ids has {len(ids)} entries but there are {n} images: pass one id per image "
                         f"(the NSD 73k id), which seeds that image's random draws")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"image_ids has dtype {ids.dtype}; expected integers (NSD 73k image ids)")
    return ids


def _check_n_blocks(hp: VDVAEHparams, n_blocks: Any) -> int:
    total = len(hp.decoder_layers())
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or not 1 <= n_blocks <= total:
        raise ValueError(f"n_blocks={n_blocks!r}; expected an integer in 1..{total} (the {hp.name} decoder has "
                         f"{total} latent blocks; Brain-Diffuser keeps 31, the reduced variant 10)")
    return int(n_blocks)


def _dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype={name!r}; expected one of {sorted(DTYPES)}") from None


def _batches(n: int, batch_size: int | None) -> list[slice]:
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer (for example 30)")
    step = max(n, 1) if batch_size is None else int(batch_size)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _model_device_dtype(model: VDVAE) -> tuple[torch.device, torch.dtype]:
    p = model.decoder.gain
    return p.device, p.dtype


# ----------------------------------------------------------------------------- shapes
def latent_shapes(hparams: VDVAEHparams, n_blocks: int = 31) -> list[tuple[int, int, int]]:
    """Latent shape (zdim, r, r) of each of the first ``n_blocks`` decoder blocks.

    Parameters
    ----------
    hparams : VDVAEHparams
    n_blocks : int

    Returns
    -------
    list of (int, int, int)
    """
    n = _check_n_blocks(hparams, n_blocks)
    return [(hparams.zdim, res, res) for res, _ in hparams.decoder_layers()[:n]]


def latent_size(hparams: VDVAEHparams, n_blocks: int = 31) -> int:
    """Number of latent dims in the first ``n_blocks`` blocks (imagenet64: 31 → 91,168; 10 → 5,152)."""
    return int(sum(np.prod(s) for s in latent_shapes(hparams, n_blocks)))


# ----------------------------------------------------------------------------- images
def preprocess_images(images: np.ndarray, hparams: VDVAEHparams = IMAGENET64) -> np.ndarray:
    """Brain-Diffuser's VDVAE input: PIL bilinear resize, then ``(x + shift) · scale``.

    Parameters
    ----------
    images : array of shape (n, height, width, 3), uint8
        Any side (NSD stimuli are 425²).
    hparams : VDVAEHparams
        Gives the side (``image_size``) and the normalisation (imagenet64: shift −115.92961967,
        scale 1/69.37404).

    Returns
    -------
    array of shape (n, image_size, image_size, 3), float32 (NHWC, as the encoder takes it)
    """
    arr = _check_images(images)
    s = hparams.image_size
    out = np.empty((arr.shape[0], s, s, 3), dtype=np.float32)
    for i, img in enumerate(arr):
        small = Image.fromarray(img, mode="RGB").resize((s, s), Image.Resampling.BILINEAR)
        out[i] = np.asarray(small, dtype=np.float32)
    out += np.float32(hparams.shift)
    out *= np.float32(hparams.scale)
    return out


def upsample_512(images: np.ndarray, side: int = 512) -> np.ndarray:
    """Upsample decoded images with PIL bicubic (Brain-Diffuser's stage-1 output).

    Parameters
    ----------
    images : array of shape (n, h, w, 3), uint8
    side : int
        Output side (512).

    Returns
    -------
    array of shape (n, side, side, 3), uint8
    """
    arr = _check_images(images)
    return np.stack([np.asarray(Image.fromarray(im, mode="RGB").resize((side, side), Image.Resampling.BICUBIC))
                     for im in arr]) if len(arr) else np.zeros((0, side, side, 3), np.uint8)


# ----------------------------------------------------------------------------- noise
def _uniform(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return _U_LO + (_U_HI - _U_LO) * torch.rand(shape, generator=g)


def dmol_sample(params: torch.Tensor, nr_mix: int, gumbel_u: torch.Tensor, logistic_u: torch.Tensor
                ) -> torch.Tensor:
    """Sample RGB pixels from a discretized mixture of logistics, given the uniforms.

    The parameter layout is openai/vdvae's: ``nr_mix`` logits, then per channel
    ``nr_mix`` means, ``nr_mix`` log-scales (floored at −7) and ``nr_mix`` coefficients
    (tanh) that make G depend on R and B on R, G.

    Parameters
    ----------
    params : Tensor of shape (n, H, W, nr_mix · 10)
    nr_mix : int
    gumbel_u : Tensor of shape (n, H, W, nr_mix)
        Uniforms for the Gumbel-max choice of component.
    logistic_u : Tensor of shape (n, H, W, 3)
        Uniforms for the logistic draw.

    Returns
    -------
    Tensor of shape (n, H, W, 3), float32 in [−1, 1]
    """
    params = params.float()
    n, h, w, _ = params.shape
    logits = params[..., :nr_mix]
    rest = params[..., nr_mix:].reshape(n, h, w, 3, 3 * nr_mix)
    k = torch.argmax(logits - torch.log(-torch.log(gumbel_u)), dim=3)  # (n, h, w)
    idx = k[..., None, None].expand(n, h, w, 3, 1)
    mean = rest[..., :nr_mix].gather(4, idx)[..., 0]
    log_scale = rest[..., nr_mix:2 * nr_mix].gather(4, idx)[..., 0].clamp(min=-7.0)
    coef = torch.tanh(rest[..., 2 * nr_mix:].gather(4, idx)[..., 0])
    x = mean + torch.exp(log_scale) * (torch.log(logistic_u) - torch.log1p(-logistic_u))
    r = x[..., 0].clamp(-1.0, 1.0)
    g = (x[..., 1] + coef[..., 0] * r).clamp(-1.0, 1.0)
    b = (x[..., 2] + coef[..., 1] * r + coef[..., 2] * g).clamp(-1.0, 1.0)
    return torch.stack([r, g, b], dim=-1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[−1, 1] → uint8 as the official ``out_net.sample``: ``(x + 1) · 127.5``, clipped, truncated."""
    return np.clip((x.float().cpu().numpy() + 1.0) * 127.5, 0.0, 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- encode / decode
@torch.no_grad()
def encode_latents(model: VDVAE, images: np.ndarray, image_ids: np.ndarray, seed: int, n_blocks: int = 31,
                   batch_size: int | None = None) -> np.ndarray:
    """Posterior-sampled latents of the first ``n_blocks`` decoder blocks.

    Parameters
    ----------
    model : VDVAE
        On its device and compute dtype (see :func:`load_vdvae`).
    images : array of shape (n, height, width, 3), uint8
    image_ids : array of shape (n,), int
        Seeds each image's noise with ``seed`` (ε for block i is the i-th draw of that image).
    seed : int
    n_blocks : int
        Leading decoder blocks to keep (31 → 91,168 dims at imagenet64).
    batch_size : int, optional
        Images per forward pass (all at once by default); results do not depend on it.

    Returns
    -------
    array of shape (n, latent_size(hparams, n_blocks)), float32
    """
    hp = model.hparams
    n_blocks = _check_n_blocks(hp, n_blocks)
    x_all = preprocess_images(images, hp)
    ids = _check_ids(image_ids, len(x_all))
    device, dtype = _model_device_dtype(model)
    shapes = latent_shapes(hp, n_blocks)
    out = np.empty((len(x_all), latent_size(hp, n_blocks)), dtype=np.float32)
    for sl in _batches(len(x_all), batch_size):
        gens = [image_generator(seed, int(i)) for i in ids[sl]]
        # Per image, all ε in block order: independent of the batch it sits in.
        eps_img = [[torch.randn(s, generator=g) for s in shapes] for g in gens]
        eps = [torch.stack([e[b] for e in eps_img]).to(device=device, dtype=dtype) for b in range(n_blocks)]
        acts = model.encoder(torch.from_numpy(x_all[sl]).to(device=device, dtype=dtype))
        zs, _ = model.decoder.posterior_latents(acts, eps)
        out[sl] = torch.cat([z.reshape(z.shape[0], -1) for z in zs], 1).float().cpu().numpy()
    return out


def _split_latents(latents: np.ndarray, hp: VDVAEHparams, n_blocks: int) -> list[np.ndarray]:
    arr = np.asarray(latents)
    want = latent_size(hp, n_blocks)
    if arr.ndim != 2 or arr.shape[1] != want:
        sizes = np.cumsum([np.prod(s) for s in latent_shapes(hp, len(hp.decoder_layers()))])
        fits = [i + 1 for i, c in enumerate(sizes) if arr.ndim == 2 and c == arr.shape[1]]
        hint = f"; that width fits n_blocks={fits[0]}" if fits else ""
        raise ValueError(f"latents has shape {arr.shape}; expected (n, {want}) for n_blocks={n_blocks} of the "
                         f"{hp.name} VDVAE{hint}: pass the n_blocks the latents were extracted with")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"latents contains {int(np.sum(~np.isfinite(arr)))} NaN/inf values; expected finite "
                         f"predicted latents: check the regression output for NaN (zero-variance voxels?)")
    out, start = [], 0
    for s in latent_shapes(hp, n_blocks):
        size = int(np.prod(s))
        out.append(arr[:, start:start + size].reshape((arr.shape[0],) + s))
        start += size
    return out


@torch.no_grad()
def decode_latents(model: VDVAE, latents: np.ndarray, image_ids: np.ndarray, seed: int, n_blocks: int = 31,
                   temperature: float = 1.0, batch_size: int | None = None) -> np.ndarray:
    """Decode latents of the first ``n_blocks`` blocks to 64×64 images (Brain-Diffuser stage 1).

    Per image, the draws are: ε for blocks ``n_blocks…L−1`` in block order (prior samples
    ``z = μ_p + exp(log σ_p)·T·ε``), then the Gumbel uniforms (H, W, nr_mix), then the logistic
    uniforms (H, W, 3) of the output head.

    Parameters
    ----------
    model : VDVAE
    latents : array of shape (n, latent_size(hparams, n_blocks)), float
    image_ids : array of shape (n,), int
    seed : int
    n_blocks : int
    temperature : float
        Prior temperature T ≥ 0 for the blocks above ``n_blocks`` (1 in Brain-Diffuser; 0 = prior mean).
    batch_size : int, optional

    Returns
    -------
    array of shape (n, image_size, image_size, 3), uint8
    """
    hp = model.hparams
    n_blocks = _check_n_blocks(hp, n_blocks)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not np.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature={temperature!r}; expected a finite number ≥ 0 (1.0 as Brain-Diffuser)")
    blocks = _split_latents(latents, hp, n_blocks)
    n = blocks[0].shape[0]
    ids = _check_ids(image_ids, n)
    device, dtype = _model_device_dtype(model)
    above = [(hp.zdim, r, r) for r, _ in hp.decoder_layers()[n_blocks:]]
    s, m = hp.image_size, hp.num_mixtures
    out = np.empty((n, s, s, 3), dtype=np.uint8)
    for sl in _batches(n, batch_size):
        gens = [image_generator(seed, int(i)) for i in ids[sl]]
        eps_img = [[torch.randn(sh, generator=g) for sh in above] for g in gens]
        eps = [torch.stack([e[b] for e in eps_img]).to(device=device, dtype=dtype) for b in range(len(above))]
        lat = [torch.from_numpy(np.ascontiguousarray(b[sl])).to(device=device, dtype=dtype) for b in blocks]
        px_z = model.decoder.manual_latents(len(gens), lat, eps, float(temperature))
        params = model.decoder.out_net(px_z)
        gumbel = torch.stack([_uniform(g, (s, s, m)) for g in gens]).to(device)
        logistic = torch.stack([_uniform(g, (s, s, 3)) for g in gens]).to(device)
        out[sl] = to_uint8(dmol_sample(params, m, gumbel, logistic))
    return out


# ----------------------------------------------------------------------------- building / loading
def build_random_vdvae(hparams: VDVAEHparams = TINY, seed: int = 0, device: str = "cpu",
                       dtype: str = "float32") -> VDVAE:
    """A VDVAE with seeded random weights (a local generator; the global RNG is untouched).

    Parameters
    ----------
    hparams : VDVAEHparams
        TINY for tests and the demo; IMAGENET64 builds the full-size net (random weights).
    seed : int
    device, dtype : str

    Returns
    -------
    VDVAE in eval mode
    """
    with torch.device("meta"):
        model = VDVAE(hparams)
    model = model.to_empty(device="cpu")
    init_random_weights(model, torch.Generator().manual_seed(int(seed)))
    return model.to(device=pick_device(device), dtype=_dtype(dtype)).eval().requires_grad_(False)


def _strip_ddp(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix of DistributedDataParallel checkpoints (the non-EMA ``-model.th``)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def weights_name(weights: str) -> str:
    """The file name of a weights URL, without directories or credentials."""
    return os.path.basename(str(weights).split("?", 1)[0].rstrip("/"))


def load_vdvae(weights: Any, hparams: VDVAEHparams = IMAGENET64, device: str = "auto",
               dtype: str = "float32") -> VDVAE:
    """Load an openai/vdvae checkpoint (``imagenet64-iter-1600000-model-ema.th``) into :class:`VDVAE`.

    The EMA file is a plain ``state_dict`` saved with ``torch.save``; the non-EMA file of a
    distributed run may carry ``module.`` prefixes, which are removed.  Loading uses
    ``torch.load(weights_only=True)``; a file of another architecture raises
    :class:`~fmri2img.models.weights.WeightsError` listing the missing, unexpected and misshapen keys.

    Parameters
    ----------
    weights : str, path-like or opened weights
        A local path, or opened weights (:func:`fmri2img.storage.weights.open_weights`).
    hparams : VDVAEHparams
    device : str
        "auto" (CUDA, MPS, CPU), or a device name.
    dtype : str
        Compute dtype: "float32", "float16" or "bfloat16".

    Returns
    -------
    VDVAE in eval mode, on ``device`` in ``dtype``
    """
    torch_dtype = _dtype(dtype)
    state = _strip_ddp(load_state_dict(weights))
    with torch.device("meta"):  # no memory, no random init: every tensor comes from the file
        model = VDVAE(hparams)
    check_state_dict(model, state, f"VDVAE {hparams.name} ({weights_name(weights)})")
    model.load_state_dict(state, assign=True)
    logger.info("loaded VDVAE %s from %s", hparams.name, weights_name(weights))
    return model.to(device=pick_device(device), dtype=torch_dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- extractor
@dataclass
class VDVAEExtractor:
    """The 'vdvae' feature extractor: posterior latents of the first ``n_blocks`` blocks.

    Attributes
    ----------
    model : VDVAE
    n_blocks : int
    batch_size : int
    weights : str or None
        Weights file name (no directories or credentials); None for random weights.
    random_weights : bool
    """

    model: VDVAE
    n_blocks: int = 31
    batch_size: int = 30
    weights: str | None = None
    random_weights: bool = False
    name: str = "vdvae"
    input: str = "images"
    extra: dict = field(default_factory=dict)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (latent_size(self.model.hparams, self.n_blocks),)

    @property
    def feature_dims(self) -> tuple[str, ...]:
        return ("latent",)

    def attrs(self) -> dict[str, Any]:
        """JSON-able facts recorded with the features."""
        hp = self.model.hparams
        device, dtype = _model_device_dtype(self.model)
        return {"extractor": self.name, "hparams": hp.name, "hparams_values": hp.to_dict(),
                "n_blocks": self.n_blocks, "latent_shapes": [list(s) for s in latent_shapes(hp, self.n_blocks)],
                "latent": "posterior sample mu + exp(logsigma) * eps, eps from image_generator(seed, image_id)",
                "preprocess": f"PIL bilinear {hp.image_size}x{hp.image_size}, (x + {hp.shift}) * {hp.scale}",
                "dtype": str(dtype).replace("torch.", ""), "weights": self.weights,
                "random_weights": self.random_weights, **self.extra}

    def extract(self, batch: np.ndarray, image_ids: np.ndarray, seed: int) -> np.ndarray:
        """Latents of a batch of stimuli.

        Parameters
        ----------
        batch : array of shape (n, height, width, 3), uint8
        image_ids : array of shape (n,), int
        seed : int

        Returns
        -------
        array of shape (n, latent_size), float32
        """
        return encode_latents(self.model, batch, image_ids, seed, self.n_blocks, self.batch_size)


def make_vdvae_extractor(*, weights: Any = None, tiny: bool = False,
                         device: str = "auto", dtype: str = "float32", batch_size: int = 30, n_blocks: int = 31,
                         hparams: str = "imagenet64", seed: int = 0, note: str = "") -> VDVAEExtractor:
    """Build the 'vdvae' extractor.

    Parameters
    ----------
    weights : str, path-like or opened weights, optional
        ``imagenet64-iter-1600000-model-ema.th`` (the ``[weights] vdvae`` key).
    tiny : bool
        Use the TINY configuration with seeded random weights (tests; plumbing only); ``weights`` must be None.
    device, dtype : str
    batch_size : int
        Images per forward pass (Brain-Diffuser: 30).
    n_blocks : int
        Leading decoder blocks whose latents are kept (31; the reduced variant 10).
    hparams : str
        Configuration name for real weights (``"imagenet64"``; ``"demo"`` for the demo's trained file).
    seed : int
        Seed of the random weights when ``tiny``.
    note : str
        Provenance of the weights (recorded as ``weights_note``; the demo names its training run).

    Returns
    -------
    VDVAEExtractor
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer (for example 30)")
    if tiny:
        if weights is not None:
            raise ValueError(f"weights={weights!r} given with tiny=True; the tiny VDVAE uses seeded random weights: "
                             f"drop one of the two")
        model = build_random_vdvae(TINY, seed=seed, device=device, dtype=dtype)
        ext = VDVAEExtractor(model, _check_n_blocks(TINY, n_blocks), int(batch_size), None, True)
        ext.extra["weights_seed"] = int(seed)
        return ext
    if weights is None:
        raise WeightsError("no weights for the 'vdvae' extractor: set [weights] vdvae to the path or URL of "
                           "imagenet64-iter-1600000-model-ema.th (nothing is downloaded at run time), or use "
                           "tiny=True for random weights")
    if hparams not in HPARAMS:
        raise ValueError(f"hparams={hparams!r}; expected one of {sorted(HPARAMS)}")
    hp = HPARAMS[hparams]
    n_blocks = _check_n_blocks(hp, n_blocks)
    model = load_vdvae(weights, hp, device=device, dtype=dtype)
    extra = {"weights_note": str(note)} if note else {}
    return VDVAEExtractor(model, n_blocks, int(batch_size), weights_name(weights), False, extra=extra)
