"""Key mapping between the original Versatile Diffusion checkpoints and diffusers' layout.

The original four-flow checkpoint (``vd-four-flow-v1-0-fp16-deprecated.pth``) stores the
LDM ``openaimodel`` layout (``input_blocks`` / ``middle_block`` / ``output_blocks``) under
``model.diffusion_model.unet_image.`` (image flow) and ``model.diffusion_model.unet_text.``
(text flow), with the time embedding shared by both flows at ``model.diffusion_model.time_embed``.
The autoencoder (``kl-f8.pth``) uses the LDM ``encoder.down.i.block.j`` layout.

The mapping is written out as rules on the diffusers key (a registry of regular
expressions, each with the function that builds the original key).  Given the
architecture (``layers_per_block`` and which up blocks hold cross-attention), every
diffusers key has exactly one original key; :func:`unet_key_map` and :func:`vae_key_map`
build the table for a whole module, :func:`from_original` applies it (reshaping the
1×1-convolution attention weights of the autoencoder to linear weights), and
:func:`to_original` is its inverse.

UNet rules (``L`` = layers_per_block; block ``b``, layer ``j``)::

    time_embedding.linear_{1,2}          ↔ time_embed.{0,2}                  (shared by both flows)
    conv_in                              ↔ input_blocks.0.0
    down_blocks.b.resnets.j              ↔ input_blocks.{1 + b(L+1) + j}.0
    down_blocks.b.attentions.j           ↔ input_blocks.{1 + b(L+1) + j}.1
    down_blocks.b.downsamplers.0.conv    ↔ input_blocks.{1 + b(L+1) + L}.0.op
    mid_block.resnets.{0,1}              ↔ middle_block.{0,2}
    mid_block.attentions.0               ↔ middle_block.1
    up_blocks.b.resnets.j                ↔ output_blocks.{b(L+1) + j}.0
    up_blocks.b.attentions.j             ↔ output_blocks.{b(L+1) + j}.1
    up_blocks.b.upsamplers.0.conv        ↔ output_blocks.{b(L+1) + L}.{2 if attention else 1}.conv
    conv_norm_out, conv_out              ↔ out.0, out.2
    resnet: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut
          ↔ in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection
    transformer (norm, proj_in, transformer_blocks.*, proj_out): same names on both sides

Autoencoder rules (``n`` = number of resolution levels)::

    {en,de}coder.conv_norm_out           ↔ {en,de}coder.norm_out
    encoder.down_blocks.i.resnets.j      ↔ encoder.down.i.block.j
    encoder.down_blocks.i.downsamplers.0 ↔ encoder.down.i.downsample
    decoder.up_blocks.i.resnets.j        ↔ decoder.up.{n-1-i}.block.j
    decoder.up_blocks.i.upsamplers.0     ↔ decoder.up.{n-1-i}.upsample
    *.mid_block.resnets.k                ↔ *.mid.block_{k+1}
    *.mid_block.attentions.0.{group_norm, to_q, to_k, to_v, to_out.0}
                                         ↔ *.mid.attn_1.{norm, q, k, v, proj_out}   (1×1 conv ↔ linear)
    resnet conv_shortcut                 ↔ nin_shortcut
    everything else (conv_in, conv_out, quant_conv, post_quant_conv, resnet norm/conv): same name
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Iterable, Mapping, Sequence

import torch

from fmri2img.models.weights import WeightsError

logger = logging.getLogger(__name__)

#: where the flows live inside the original four-flow checkpoint
ORIGINAL_PREFIXES = {"shared": "model.diffusion_model.", "image": "model.diffusion_model.unet_image.",
                     "text": "model.diffusion_model.unet_text."}

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, names: Mapping[str, str]) -> str:
    head, _, tail = rest.partition(".")
    if head not in names:
        raise KeyError(rest)
    return f"{names[head]}.{tail}"


def _unet_rules(L: int, up_attention: Sequence[bool]) -> list[tuple[str, Callable[..., tuple[str, str]]]]:
    """(regex, builder) pairs; a builder returns (scope, original key) with scope "shared" or "branch"."""
    def i_in(b: str, j: str) -> int:
        return 1 + int(b) * (L + 1) + int(j)

    def i_out(b: str, j: str) -> int:
        return int(b) * (L + 1) + int(j)

    return [
        (r"time_embedding\.linear_1\.(.+)", lambda x: ("shared", f"time_embed.0.{x}")),
        (r"time_embedding\.linear_2\.(.+)", lambda x: ("shared", f"time_embed.2.{x}")),
        (r"conv_in\.(.+)", lambda x: ("branch", f"input_blocks.0.0.{x}")),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda b, j, x: ("branch", f"input_blocks.{i_in(b, j)}.0.{_resnet(x, _UNET_RESNET)}")),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda b, j, x: ("branch", f"input_blocks.{i_in(b, j)}.1.{x}")),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
         lambda b, x: ("branch", f"input_blocks.{i_in(b, str(L))}.0.op.{x}")),
        (r"mid_block\.resnets\.([01])\.(.+)",
         lambda k, x: ("branch", f"middle_block.{2 * int(k)}.{_resnet(x, _UNET_RESNET)}")),
        (r"mid_block\.attentions\.0\.(.+)", lambda x: ("branch", f"middle_block.1.{x}")),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda b, j, x: ("branch", f"output_blocks.{i_out(b, j)}.0.{_resnet(x, _UNET_RESNET)}")),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda b, j, x: ("branch", f"output_blocks.{i_out(b, j)}.1.{x}")),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
         lambda b, x: ("branch", f"output_blocks.{i_out(b, str(L))}.{2 if up_attention[int(b)] else 1}.conv.{x}")),
        (r"conv_norm_out\.(.+)", lambda x: ("branch", f"out.0.{x}")),
        (r"conv_out\.(.+)", lambda x: ("branch", f"out.2.{x}")),
    ]


def _vae_rules(n: int) -> list[tuple[str, Callable[..., tuple[str, str]]]]:
    vae_resnet = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                  "conv_shortcut": "nin_shortcut"}

    def attn(x: str) -> str:
        for new, old in _VAE_ATTN.items():
            if x.startswith(new + "."):
                return f"{old}.{x[len(new) + 1:]}"
        raise KeyError(x)

    return [
        (r"(encoder|decoder)\.conv_norm_out\.(.+)", lambda c, x: ("vae", f"{c}.norm_out.{x}")),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda i, j, x: ("vae", f"encoder.down.{i}.block.{j}.{_resnet(x, vae_resnet)}")),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
         lambda i, x: ("vae", f"encoder.down.{i}.downsample.conv.{x}")),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda i, j, x: ("vae", f"decoder.up.{n - 1 - int(i)}.block.{j}.{_resnet(x, vae_resnet)}")),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
         lambda i, x: ("vae", f"decoder.up.{n - 1 - int(i)}.upsample.conv.{x}")),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)",
         lambda c, k, x: ("vae", f"{c}.mid.block_{int(k) + 1}.{_resnet(x, vae_resnet)}")),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", lambda c, x: ("vae", f"{c}.mid.attn_1.{attn(x)}")),
        (r"((?:encoder|decoder)\.conv_(?:in|out)|quant_conv|post_quant_conv)\.(.+)",
         lambda m, x: ("vae", f"{m}.{x}")),
    ]


def _apply(rules: list[tuple[str, Callable[..., tuple[str, str]]]], keys: Iterable[str],
           what: str) -> dict[str, tuple[str, str]]:
    compiled = [(re.compile(p + "$"), f) for p, f in rules]
    table: dict[str, tuple[str, str]] = {}
    for key in keys:
        for pattern, build in compiled:
            m = pattern.match(key)
            if m:
                try:
                    table[key] = build(*m.groups())
                except KeyError:
                    continue
                break
        else:
            raise WeightsError(f"no original-checkpoint name is known for the {what} parameter {key!r}: "
                               f"the architecture is not the Versatile Diffusion one this mapping covers")
    return table


def unet_key_map(keys: Iterable[str], layers_per_block: int,
                 up_attention: Sequence[bool]) -> dict[str, tuple[str, str]]:
    """diffusers UNet key → (scope, original key); scope "shared" (time embedding) or "branch".

    Parameters
    ----------
    keys : iterable of str
        ``state_dict()`` keys of a :class:`diffusers.UNet2DConditionModel` (or a subset).
    layers_per_block : int
        ``config.layers_per_block`` (2 for Versatile Diffusion).
    up_attention : sequence of bool
        For each up block, whether it has cross-attention (``CrossAttnUpBlock2D``).
    """
    return _apply(_unet_rules(layers_per_block, up_attention), keys, "UNet")


def vae_key_map(keys: Iterable[str], n_levels: int) -> dict[str, tuple[str, str]]:
    """diffusers AutoencoderKL key → ("vae", original LDM autoencoder key)."""
    return _apply(_vae_rules(n_levels), keys, "autoencoder")


def original_name(scope: str, key: str, branch_prefix: str) -> str:
    """Full key in the four-flow checkpoint for a (scope, key) entry of :func:`unet_key_map`."""
    return (ORIGINAL_PREFIXES["shared"] if scope == "shared" else branch_prefix) + key


def from_original(table: Mapping[str, tuple[str, str]], original: Mapping[str, torch.Tensor],
                  expected: Mapping[str, torch.Size], name: Callable[[str, str], str],
                  what: str) -> dict[str, torch.Tensor]:
    """Gather a diffusers state dict from an original one; one :class:`WeightsError` lists what is missing.

    Parameters
    ----------
    table : mapping
        diffusers key → (scope, key) from :func:`unet_key_map` / :func:`vae_key_map`.
    original : mapping of str to Tensor
        The original checkpoint's state dict.
    expected : mapping of str to torch.Size
        The diffusers module's parameter shapes; a 1×1 convolution weight (C, C, 1, 1) is
        reshaped to a linear weight (C, C) where the module expects one.
    name : callable (scope, key) → full original key
    what : str
        Names the checkpoint in the message.
    """
    out, missing, misshapen = {}, [], []
    for key, (scope, okey) in table.items():
        full = name(scope, okey)
        if full not in original:
            missing.append(full)
            continue
        t = original[full]
        if tuple(t.shape) != tuple(expected[key]):
            if t.numel() == expected[key].numel() and t.dim() > len(expected[key]):
                t = t.reshape(expected[key])
            else:
                misshapen.append(f"{full} {tuple(t.shape)} (expected {tuple(expected[key])})")
                continue
        out[key] = t
    if missing or misshapen:
        parts = ([f"{len(missing)} missing key(s): {', '.join(missing[:5])}"] if missing else []) + \
                ([f"{len(misshapen)} misshapen: {', '.join(misshapen[:5])}"] if misshapen else [])
        raise WeightsError(f"{what} does not hold the expected Versatile Diffusion weights: {'; '.join(parts)}. "
                           f"Check that it is vd-four-flow-v1-0(-fp16).pth / kl-f8.pth, or use a diffusers-format "
                           f"directory with load_vd")
    return out


def to_original(table: Mapping[str, tuple[str, str]], state: Mapping[str, torch.Tensor],
                name: Callable[[str, str], str], conv_keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_original`: diffusers state dict → original names.

    ``conv_keys`` lists diffusers keys whose (C, C) linear weights are stored as (C, C, 1, 1)
    convolutions in the original (the autoencoder's mid-block attention).
    """
    conv = set(conv_keys)
    out = {}
    for key, (scope, okey) in table.items():
        t = state[key]
        out[name(scope, okey)] = t[:, :, None, None] if key in conv and t.dim() == 2 else t
    return out


def vae_conv_attention_keys(keys: Iterable[str]) -> list[str]:
    """The autoencoder attention weights that are 1×1 convolutions in the original layout."""
    return [k for k in keys if re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", k)]
