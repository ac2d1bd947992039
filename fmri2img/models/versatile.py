"""Versatile Diffusion components for stage 2: image UNet with dual-context cross-attention, VAE, DDIM.

Versatile Diffusion (VD) pairs an image-flow UNet with a text-flow UNet.  Brain-Diffuser runs
the image flow on image latents and, in every cross-attention (``SpatialTransformer``) layer,
mixes two residuals (REFERENCE.md §4.2 step 8)::

    h ← h + (1 − mix)·[T_image(h, vision context) − h] + mix·[T_text(h, text context) − h]

where ``T_image`` is the image flow's transformer and ``T_text`` the text flow's transformer at
the same position; every other layer comes from the image flow.  :class:`DualContextTransformer`
holds both transformers of one position and applies that mix; :func:`dual_unet` puts one in
place of every ``Transformer2DModel`` of a diffusers :class:`~diffusers.UNet2DConditionModel`.
The two contexts travel concatenated along the token axis as the UNet's
``encoder_hidden_states``; a :class:`MixSpec` in ``cross_attention_kwargs`` says where the
vision tokens end and what the text share is, so any token counts work (257 or 77 vision
tokens, 77 text tokens).  Without a :class:`MixSpec` the UNet is the plain image flow.

Loading (:mod:`fmri2img.models.vd_load`): ``load_vd`` reads a diffusers-format directory
(``image_unet/``, ``text_unet/``, ``vae/``, ``scheduler/``) and takes from ``text_unet`` only its
cross-attention transformers; ``load_vd_original`` reads the original four-flow ``.pth`` and
``kl-f8.pth`` through the key mapping of :mod:`fmri2img.models.vd_keys`.
:func:`tiny_vd_components` builds a seeded random-weight model of the same structure.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from fmri2img.models.weights import WeightsError


logger = logging.getLogger(__name__)

#: Brain-Diffuser's DDIM (REFERENCE §4.2): 1000 steps, scaled-linear betas 0.00085–0.012, timesteps 1, 21, …, 981
VD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                    prediction_type="epsilon")
#: the image flow of VD: 320 channels, mult (1, 2, 4, 4), 2 res-blocks, cross-attention on 3 levels,
#: 8 heads, context 768
VD_IMAGE_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
                     cross_attention_dim=768, attention_head_dim=8)
#: kl-f8: 128 channels, mult (1, 2, 4, 4), 2 res-blocks, 4-channel latent, scale 0.18215
VD_VAE = dict(sample_size=256, in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              latent_channels=4, layers_per_block=2, scaling_factor=0.18215)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SUBDIRS = ("image_unet", "text_unet", "vae", "scheduler")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")


@dataclass(frozen=True)
class MixSpec:
    """How to split and mix the concatenated context of one UNet call.

    Attributes
    ----------
    vision_tokens : int
        The first ``vision_tokens`` tokens of ``encoder_hidden_states`` are the vision context,
        the rest the text context.
    text_weight : float
        Share of the text residual (Brain-Diffuser's ``mix_str``, 0.4); the vision residual gets
        ``1 − text_weight``.  At 0 only the image-flow transformer runs, at 1 only the text one.
    """

    vision_tokens: int
    text_weight: float


#: the ``cross_attention_kwargs`` entry that carries the :class:`MixSpec`
MIX_KEY = "vd_mix"


class DualContextTransformer(nn.Module):
    """The image-flow and text-flow transformers of one cross-attention position, mixed residually.

    Parameters
    ----------
    vision : diffusers Transformer2DModel
        The image flow's transformer (attends to the vision context).
    text : diffusers Transformer2DModel
        The text flow's transformer at the same position (attends to the text context).
    """

    def __init__(self, vision: nn.Module, text: nn.Module):
        super().__init__()
        self.vision = vision
        self.text = text

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None, return_dict: bool = True,
                encoder_attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """hidden_states (B, C, H, W); encoder_hidden_states (B, vision_tokens + text_tokens, d)."""
        rest = dict(cross_attention_kwargs or {})
        spec = rest.pop(MIX_KEY, None)
        if encoder_attention_mask is not None:
            raise ValueError("encoder_attention_mask is not supported by the dual-context mix: pass none "
                             "(Versatile Diffusion attends to every context token)")
        call = dict(kwargs, cross_attention_kwargs=rest or None, return_dict=False)
        if spec is None:
            out = self.vision(hidden_states, encoder_hidden_states=encoder_hidden_states, **call)[0]
        else:
            out = self._mix(hidden_states, encoder_hidden_states, spec, call)
        return (out,) if not return_dict else Transformer2DModelOutput(sample=out)

    def _mix(self, h: torch.Tensor, context: torch.Tensor, spec: MixSpec, call: dict) -> torch.Tensor:
        vision_ctx, text_ctx = context[:, :spec.vision_tokens], context[:, spec.vision_tokens:]
        if spec.text_weight == 0:
            return self.vision(h, encoder_hidden_states=vision_ctx, **call)[0]
        if spec.text_weight == 1:
            return self.text(h, encoder_hidden_states=text_ctx, **call)[0]
        d_vision = self.vision(h, encoder_hidden_states=vision_ctx, **call)[0] - h
        d_text = self.text(h, encoder_hidden_states=text_ctx, **call)[0] - h
        return h + (1 - spec.text_weight) * d_vision + spec.text_weight * d_text


def transformer_paths(unet: nn.Module) -> list[str]:
    """Module paths of the cross-attention transformers (``Transformer2DModel``) of a UNet."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return [n for n, m in unet.named_modules() if isinstance(m, Transformer2DModel)]


def dual_unet(image_unet: nn.Module, text_transformers: Mapping[str, nn.Module]) -> nn.Module:
    """Replace, in place, each transformer of ``image_unet`` by a :class:`DualContextTransformer`.

    Parameters
    ----------
    image_unet : diffusers UNet2DConditionModel
        The image flow.
    text_transformers : mapping of str to Transformer2DModel
        The text flow's transformers keyed by the same module path
        (``down_blocks.0.attentions.0``, …, ``mid_block.attentions.0``, …).

    Returns
    -------
    The same UNet object.
    """
    paths = transformer_paths(image_unet)
    if sorted(paths) != sorted(text_transformers):
        raise WeightsError(f"the text flow's cross-attention layers {sorted(text_transformers)} do not match the "
                           f"image flow's {sorted(paths)}: both UNets must come from the same Versatile Diffusion "
                           f"checkpoint")
    for path in paths:
        parent, index = path.rsplit(".", 1)
        blocks = image_unet.get_submodule(parent)
        blocks[int(index)] = DualContextTransformer(blocks[int(index)], text_transformers[path])
    return image_unet


@dataclass
class VDComponents:
    """Everything stage 2 runs: the dual-context image UNet, the autoencoder and the DDIM scheduler.

    Attributes
    ----------
    unet : diffusers UNet2DConditionModel
        The image flow, its transformers replaced by :class:`DualContextTransformer` (:func:`dual_unet`).
    vae : diffusers AutoencoderKL
        kl-f8 (4-channel latent, ``config.scaling_factor`` 0.18215).
    scheduler : diffusers DDIMScheduler
        Supplies the training noise schedule (``alphas_cumprod``); the sampling loop is ours.
    lock : threading.RLock
        Held while the components run or change dtype (one reconstruction at a time per model).
    """

    unet: nn.Module
    vae: nn.Module
    scheduler: Any
    lock: Any = field(default_factory=threading.RLock, repr=False)

    @property
    def context_dim(self) -> int:
        """Feature size of a context token that the cross-attention accepts (768 for VD)."""
        return int(self.unet.config.cross_attention_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def latent_scale(self) -> int:
        """Pixels per latent cell (8 for kl-f8)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "VDComponents":
        """Move/cast the UNet and autoencoder in place; returns self."""
        with self.lock:
            for module in (self.unet, self.vae):
                # nn.Module.to: ModelMixin.to warns about fp32-kept modules, of which VD has none
                nn.Module.to(module, device=device, dtype=dtype)
        return self


def vd_scheduler(config: Mapping[str, Any] | None = None):
    """The DDIM scheduler of Brain-Diffuser; ``config`` may supply the noise schedule (betas) of a checkpoint."""
    from diffusers import DDIMScheduler

    settings = dict(VD_SCHEDULER)
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"):
        if config and key in config:
            settings[key] = config[key]
    if settings["prediction_type"] != "epsilon":
        raise WeightsError(f"scheduler prediction_type={settings['prediction_type']!r}; Versatile Diffusion predicts "
                           f"'epsilon': check the scheduler/ folder of the weights")
    return DDIMScheduler(**settings)


def components_from_models(image_unet: nn.Module, text_unet: nn.Module, vae: nn.Module,
                           scheduler: Any = None) -> VDComponents:
    """Assemble :class:`VDComponents` from full diffusers models (the text flow's transformers are shared)."""
    texts = {p: text_unet.get_submodule(p) for p in transformer_paths(text_unet)}
    unet = dual_unet(image_unet, texts)
    sched = scheduler if scheduler is not None else vd_scheduler()
    return VDComponents(unet=unet.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False), scheduler=sched)


# --------------------------------------------------------------------------- tiny
def tiny_vd_models(seed: int = 0, context_dim: int = 32):
    """Seeded random-weight diffusers models with VD's structure at toy width.

    Image UNet and text-flow UNet: channels (32, 64), cross-attention on the first level and
    the middle block, 8 heads, ``cross_attention_dim=context_dim``; AutoencoderKL: channels
    (32, 64) (2× downsampling), 4-channel latent, scale 0.18215.

    Returns
    -------
    image_unet : UNet2DConditionModel
    text_unet : UNetFlatConditionModel
    vae : AutoencoderKL
    scheduler : DDIMScheduler
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    common = dict(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=context_dim,
                  attention_head_dim=8, norm_num_groups=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **common)
        text_unet = UNetFlatConditionModel(in_channels=(32, 1, 1), out_channels=(32, 1, 1),
                                           down_block_types=("CrossAttnDownBlockFlat", "DownBlockFlat"),
                                           up_block_types=("UpBlockFlat", "CrossAttnUpBlockFlat"), **common)
        vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            norm_num_groups=32, sample_size=32, scaling_factor=0.18215)
        # zero-initialised output layers would make the UNets ignore their input: give them weights
        for model in (image_unet, text_unet):
            for name, p in model.named_parameters():
                if p.dim() > 1 and not p.abs().sum():
                    p.data.normal_(0, 0.05)
    return image_unet, text_unet, vae, vd_scheduler()


def tiny_vd_components(seed: int = 0, context_dim: int = 32) -> VDComponents:
    """:func:`tiny_vd_models` assembled into :class:`VDComponents` (float32, CPU)."""
    return components_from_models(*tiny_vd_models(seed, context_dim))


# --------------------------------------------------------------------------- diffusers-format directory
def dtype_of(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype={name!r}; expected one of {sorted(_DTYPES)} (Brain-Diffuser runs the UNet "
                         f"in float16)") from None


def original_namer(branch_prefix: str):
    from fmri2img.models import vd_keys

    return lambda scope, key: vd_keys.original_name(scope, key, branch_prefix)


def unet_key_map(image_unet: nn.Module) -> dict[str, tuple[str, str]]:
    """The diffusers → original key table for a plain image UNet (see :mod:`fmri2img.models.vd_keys`)."""
    from fmri2img.models import vd_keys

    up_attention = [t.startswith("CrossAttn") for t in image_unet.config.up_block_types]
    return vd_keys.unet_key_map(image_unet.state_dict().keys(), image_unet.config.layers_per_block, up_attention)


def vae_key_map(vae: nn.Module) -> dict[str, tuple[str, str]]:
    """The diffusers → original key table for the autoencoder."""
    from fmri2img.models import vd_keys

    return vd_keys.vae_key_map(vae.state_dict().keys(), len(vae.config.block_out_channels))


def to_original_checkpoint(image_unet: nn.Module, text_unet: nn.Module,
                           vae: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The inverse mapping: plain diffusers models → (four-flow UNet state dict, kl-f8 state dict).

    Only what :func:`load_vd_original` reads is written: the image flow, the shared time
    embedding and the text flow's cross-attention transformers.
    """
    from fmri2img.models import vd_keys

    table = unet_key_map(image_unet)
    unet_state = vd_keys.to_original(table, image_unet.state_dict(),
                                     original_namer(vd_keys.ORIGINAL_PREFIXES["image"]))
    paths = transformer_paths(image_unet)
    text_table = {k: v for k, v in table.items() if any(k.startswith(p + ".") for p in paths)}
    unet_state.update(vd_keys.to_original(text_table, text_unet.state_dict(),
                                          original_namer(vd_keys.ORIGINAL_PREFIXES["text"])))
    vae_state = vae.state_dict()
    vae_table = vae_key_map(vae)
    return unet_state, vd_keys.to_original(vae_table, vae_state, lambda s, k: k,
                                           vd_keys.vae_conv_attention_keys(vae_state))
