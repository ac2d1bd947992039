"""Loading Versatile Diffusion's weights: a diffusers-format folder, or the original .pth checkpoints.

The architecture (the dual-context UNet, the components) is :mod:`fmri2img.models.versatile`;
the key mapping of the original checkpoints is :mod:`fmri2img.models.vd_keys`. Loaders take a
local path or opened weights (:func:`fmri2img.storage.weights.open_weights`), never a URL.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import torch
from torch import nn

from fmri2img.models.versatile import (SUBDIRS, VD_IMAGE_UNET, VD_VAE, WEIGHT_FILES, VDComponents, dtype_of,
                                       dual_unet, original_namer, transformer_paths, unet_key_map, vae_key_map,
                                       vd_scheduler)
from fmri2img.models.weights import (LocalWeights, WeightsError, as_weights, check_state_dict, load_state_dict,
                                     pick_device, weights_name)

logger = logging.getLogger(__name__)


def _read_dir(local: str, sub: str, shown: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = os.path.join(local, sub)
    files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    weights = next((f for f in WEIGHT_FILES if f in files), None)
    if "config.json" not in files or weights is None:
        raise WeightsError(f"Versatile Diffusion weights {shown}: {sub}/ needs config.json and "
                           f"diffusion_pytorch_model.safetensors (or .bin); found {sorted(files) or 'nothing'}. "
                           f"Set weights.versatile_diffusion to a diffusers-format VD directory (image_unet/, "
                           f"text_unet/, vae/, scheduler/), or pass the original .pth to load_vd_original")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    return config, load_state_dict(os.path.join(folder, weights))


def _like(transformer: nn.Module) -> nn.Module:
    """A new Transformer2DModel with the architecture of ``transformer`` (fresh weights).

    Built from explicit arguments: ``from_config`` would restore the defaults of the entries
    the UNet passed positionally (listed in ``_use_default_values``), e.g. 16 heads × 88.
    """
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return Transformer2DModel(**{k: v for k, v in dict(transformer.config).items() if not k.startswith("_")})


def _text_transformers(image_unet: nn.Module, state: Mapping[str, torch.Tensor], shown: str) -> dict[str, nn.Module]:
    """Build the text flow's transformers from the image flow's configs and the text_unet state dict."""
    out = {}
    for path in transformer_paths(image_unet):
        module = _like(image_unet.get_submodule(path))
        sub = {k[len(path) + 1:]: v for k, v in state.items() if k.startswith(path + ".")}
        check_state_dict(module, sub, f"Versatile Diffusion text flow {path} ({shown}/text_unet)")
        module.load_state_dict(sub)
        out[path] = module
    return out


def load_vd(weights: Any, *, device: str = "auto", dtype: str = "float16") -> VDComponents:
    """Load Versatile Diffusion from a diffusers-format directory.

    Reads ``image_unet/`` (UNet2DConditionModel), ``text_unet/`` (only its cross-attention
    transformers are kept: every other text-flow layer is unused when the image flow runs),
    ``vae/`` (AutoencoderKL) and ``scheduler/`` (its betas; optional).  Architectures come from
    each ``config.json``; weights through :func:`fmri2img.models.weights.load_state_dict`
    (safetensors, or ``torch.load(weights_only=True)``) and are checked key for key.  A remote
    folder is copied to a temporary directory that is deleted once the models are in memory.

    Parameters
    ----------
    weights : str, path-like or opened weights
        A local directory, or opened weights (:func:`fmri2img.storage.weights.open_weights`).
    device : str
        "auto", "cpu", "cuda", "mps".
    dtype : str
        "float16" (Brain-Diffuser), "bfloat16" or "float32".

    Returns
    -------
    VDComponents
    """
    torch_dtype = dtype_of(dtype)
    source, shown = as_weights(weights), weights_name(weights)
    if isinstance(source, LocalWeights) and not os.path.isdir(source.path):
        raise WeightsError(f"Versatile Diffusion weights directory {shown} not found: set "
                           f"weights.versatile_diffusion (nothing is downloaded at run time)")
    wanted = [f"{sub}/{name}" for sub in SUBDIRS for name in ("config.json", "scheduler_config.json", *WEIGHT_FILES)]
    with source.local_dir(wanted) as local:
        return _load_local(local, shown, device, torch_dtype)


def _load_local(local: str, shown: str, device: str, torch_dtype: torch.dtype) -> VDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    config, state = _read_dir(local, "image_unet", shown)
    image_unet = UNet2DConditionModel.from_config(config)
    check_state_dict(image_unet, state, f"Versatile Diffusion image flow ({shown}/image_unet)")
    image_unet.load_state_dict(state)
    _, text_state = _read_dir(local, "text_unet", shown)
    texts = _text_transformers(image_unet, text_state, shown)
    del state, text_state
    config, state = _read_dir(local, "vae", shown)
    vae = AutoencoderKL.from_config(config)
    check_state_dict(vae, state, f"Versatile Diffusion autoencoder ({shown}/vae)")
    vae.load_state_dict(state)
    sched_file = os.path.join(local, "scheduler", "scheduler_config.json")
    sched_config = None
    if os.path.exists(sched_file):
        with open(sched_file) as f:
            sched_config = json.load(f)
    comps = VDComponents(unet=dual_unet(image_unet, texts).eval().requires_grad_(False),
                         vae=vae.eval().requires_grad_(False), scheduler=vd_scheduler(sched_config))
    logger.info("loaded Versatile Diffusion from %s", shown)
    return comps.to(device=pick_device(device), dtype=torch_dtype)


# --------------------------------------------------------------------------- original checkpoints
def _original_state(weights: Any, strip: tuple[str, ...]) -> dict:
    state = load_state_dict(weights)
    for prefix in strip:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_vd_original(unet_pth: Any, vae_pth: Any, *,
                     unet_config: Mapping[str, Any] | None = None, vae_config: Mapping[str, Any] | None = None,
                     device: str = "auto", dtype: str = "float16") -> VDComponents:
    """Load the original four-flow checkpoint and kl-f8 autoencoder through the written-out key mapping.

    Parameters
    ----------
    unet_pth : str
        ``vd-four-flow-v1-0-fp16-deprecated.pth`` (or any VD checkpoint with the
        ``model.diffusion_model.unet_image.`` / ``unet_text.`` layout): a local path or opened weights.
        Flows other than the image flow and the text flow's transformers (optimus, CLIP,
        the text flow's other layers) are ignored.
    vae_pth : str
        ``kl-f8.pth`` (LDM autoencoder layout; a ``first_stage_model.`` prefix is stripped).
    unet_config, vae_config : mapping, optional
        diffusers constructor arguments; default :data:`VD_IMAGE_UNET` and :data:`VD_VAE`.
    device, dtype : str
        As in :func:`load_vd`.

    Returns
    -------
    VDComponents
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from fmri2img.models import vd_keys

    torch_dtype = dtype_of(dtype)
    image_unet = UNet2DConditionModel(**dict(unet_config or VD_IMAGE_UNET))
    vae = AutoencoderKL(**dict(vae_config or VD_VAE))
    original = _original_state(unet_pth, ())
    shown = weights_name(unet_pth)
    expected = {k: v.shape for k, v in image_unet.state_dict().items()}
    table = unet_key_map(image_unet)
    name = original_namer(vd_keys.ORIGINAL_PREFIXES["image"])
    image_unet.load_state_dict(vd_keys.from_original(table, original, expected, name, f"{shown} (image flow)"))
    texts = {}
    text_name = original_namer(vd_keys.ORIGINAL_PREFIXES["text"])
    for path in transformer_paths(image_unet):
        module = _like(image_unet.get_submodule(path))
        sub_table = {k[len(path) + 1:]: v for k, v in table.items() if k.startswith(path + ".")}
        sub_expected = {k: v.shape for k, v in module.state_dict().items()}
        module.load_state_dict(vd_keys.from_original(sub_table, original, sub_expected, text_name,
                                                     f"{shown} (text flow {path})"))
        texts[path] = module
    del original
    vae_state = _original_state(vae_pth, ("first_stage_model.", "autokl."))
    vae_expected = {k: v.shape for k, v in vae.state_dict().items()}
    vae.load_state_dict(vd_keys.from_original(vae_key_map(vae), vae_state, vae_expected, lambda s, k: k,
                                              weights_name(vae_pth)))
    comps = VDComponents(unet=dual_unet(image_unet, texts).eval().requires_grad_(False),
                         vae=vae.eval().requires_grad_(False), scheduler=vd_scheduler())
    logger.info("loaded Versatile Diffusion from original checkpoints %s and %s", shown, weights_name(vae_pth))
    return comps.to(device=pick_device(device), dtype=torch_dtype)
