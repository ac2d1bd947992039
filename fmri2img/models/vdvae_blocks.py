"""The VDVAE network (Child 2021, "Very Deep VAEs"): hyperparameters and modules.

The module tree reproduces the parameter names and shapes of openai/vdvae's ``VAE`` so
that its released checkpoints (``imagenet64-iter-1600000-model-ema.th``) load unchanged:

``encoder.in_conv``, ``encoder.enc_blocks.{i}.c{1..4}`` (bottleneck residual blocks),
``decoder.dec_blocks.{i}.{enc,prior,resnet}.c{1..4}``, ``decoder.dec_blocks.{i}.z_proj``,
``decoder.bias_xs.{j}`` (one learned start tensor per resolution), ``decoder.out_net.out_conv``
(the discretized mixture-of-logistics head), ``decoder.gain`` and ``decoder.bias``.

Everything stochastic takes its noise as an argument (``eps`` tensors, uniforms), so the
functions here are deterministic; :mod:`fmri2img.models.vdvae` draws that noise per image.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VDVAEHparams:
    """Architecture hyperparameters (the fields of openai/vdvae's ``hps.py`` that shape the net).

    Attributes
    ----------
    name : str
        Recorded with the features (``"imagenet64"``, ``"tiny"``).
    width : int
        Channels at every resolution (unless ``custom_width_str`` overrides one).
    zdim : int
        Latent channels per decoder block.
    bottleneck_multiple : float
        Bottleneck channels = ``int(width · bottleneck_multiple)``.
    num_mixtures : int
        Logistic mixture components of the output head (10 parameters each for RGB).
    no_bias_above : int
        Resolutions up to this one get a learned decoder start tensor (``bias_xs``).
    enc_blocks, dec_blocks : str
        Layer strings: ``"64x11"`` = 11 blocks at 64², ``"64d2"`` = a block that then
        average-pools by 2, ``"4m1"`` = a decoder block at 4² that first adds the 1² state
        upsampled (nearest).
    image_size, image_channels : int
    custom_width_str : str
        ``"res:width,..."`` overrides (empty for imagenet64).
    shift, scale : float
        Input normalisation ``(x + shift) · scale`` of 0..255 pixels (openai/vdvae data.py).
    """

    name: str
    width: int
    zdim: int
    bottleneck_multiple: float
    num_mixtures: int
    no_bias_above: int
    enc_blocks: str
    dec_blocks: str
    image_size: int = 64
    image_channels: int = 3
    custom_width_str: str = ""
    shift: float = -115.92961967
    scale: float = 1.0 / 69.37404

    def widths(self) -> dict[int, int]:
        """Channels per resolution for every resolution the net uses."""
        custom = {}
        for item in filter(None, self.custom_width_str.split(",")):
            res, w = item.split(":")
            custom[int(res)] = int(w)
        resos = {r for r, _ in parse_layer_string(self.enc_blocks, "enc_blocks")}
        resos |= {r for r, _ in parse_layer_string(self.dec_blocks, "dec_blocks")}
        resos |= {r // d for r, d in parse_layer_string(self.enc_blocks, "enc_blocks") if d}
        return {r: custom.get(r, self.width) for r in sorted(resos | {self.image_size})}

    def decoder_layers(self) -> list[tuple[int, int | None]]:
        """(resolution, mixin resolution or None) per decoder block."""
        return parse_layer_string(self.dec_blocks, "dec_blocks")

    def encoder_layers(self) -> list[tuple[int, int | None]]:
        """(resolution, down rate or None) per encoder block."""
        return parse_layer_string(self.enc_blocks, "enc_blocks")

    def to_dict(self) -> dict:
        """JSON-able copy of the fields."""
        return asdict(self)


IMAGENET64 = VDVAEHparams(
    name="imagenet64", width=512, zdim=16, bottleneck_multiple=0.25, num_mixtures=10, no_bias_above=64,
    enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
    dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
)
"""The released imagenet64 model (REFERENCE.md §2.1): 75 decoder blocks, 91,168 latents in the first 31."""

TINY = VDVAEHparams(
    name="tiny", width=16, zdim=4, bottleneck_multiple=0.25, num_mixtures=2, no_bias_above=64,
    enc_blocks="64x1,64d2,32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1",
    dec_blocks="1x2,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1,64m32,64x1",
)
"""Same structure rules at width 16, zdim 4, 12 decoder blocks: for tests (seeded random weights)."""

DEMO = VDVAEHparams(
    name="demo", width=32, zdim=8, bottleneck_multiple=0.5, num_mixtures=4, no_bias_above=64,
    enc_blocks="32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1",
    dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1", image_size=32,
)
"""32×32, width 32, zdim 8, 9 decoder blocks: the demo trains it on mini-NSD photographs
(:mod:`fmri2img.models.vdvae_train`); the demo keeps the latents of its first 7 blocks (1² to 16²,
5,384 values), as Brain-Diffuser keeps the imagenet64 blocks up to about 16² (31 of 75)."""


def parse_layer_string(s: str, what: str = "blocks") -> list[tuple[int, int | None]]:
    """Parse a VDVAE layer string (``"64x11,64d2,4m1,1"``) into (resolution, rate) pairs.

    Parameters
    ----------
    s : str
        Comma-separated items ``RxN`` (N blocks at R), ``RdK`` (down by K), ``RmM`` (mix in M), ``R``.
    what : str
        Field name for the error message.

    Returns
    -------
    list of (int, int or None)
    """
    layers: list[tuple[int, int | None]] = []
    for item in s.split(","):
        try:
            if "x" in item:
                res, num = item.split("x")
                layers += [(int(res), None)] * int(num)
            elif "m" in item or "d" in item:
                res, rate = item.replace("m", "d").split("d")
                layers.append((int(res), int(rate)))
            else:
                layers.append((int(item), None))
        except ValueError:
            raise ValueError(f"{what}={s!r}: item {item!r} is not of the form RxN, RdK, RmM or R "
                             f"(for example '64x11,64d2')") from None
    return layers


def _conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, 1, k // 2)


class Block(nn.Module):
    """Bottleneck block: four convolutions (1×1, 3×3, 3×3, 1×1), each after a GELU.

    ``out = x + f(x)`` when residual, else ``f(x)``; then optional average pooling by ``down_rate``.
    Resolutions of 2 or less use 1×1 convolutions in the middle (as the official net).
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, down_rate: int | None = None,
                 residual: bool = False, use_3x3: bool = True) -> None:
        super().__init__()
        k = 3 if use_3x3 else 1
        self.down_rate = down_rate
        self.residual = residual
        self.c1 = _conv(c_in, c_mid, 1)
        self.c2 = _conv(c_mid, c_mid, k)
        self.c3 = _conv(c_mid, c_mid, k)
        self.c4 = _conv(c_mid, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in (self.c1, self.c2, self.c3, self.c4):
            h = conv(F.gelu(h))
        out = x + h if self.residual else h
        if self.down_rate is not None:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


class Encoder(nn.Module):
    """Bottom-up pass: NHWC normalised image → activations per resolution (NCHW)."""

    def __init__(self, hp: VDVAEHparams) -> None:
        super().__init__()
        self.widths = hp.widths()
        self.in_conv = _conv(hp.image_channels, hp.width, 3)
        self.enc_blocks = nn.ModuleList(
            Block(self.widths[res], int(self.widths[res] * hp.bottleneck_multiple), self.widths[res],
                  down_rate=down, residual=True, use_3x3=res > 2)
            for res, down in hp.encoder_layers())

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """x : (n, H, W, C) normalised → {resolution: (n, width, r, r)}, the last block's output per r."""
        x = self.in_conv(x.permute(0, 3, 1, 2).contiguous())
        acts = {x.shape[2]: x}
        for block in self.enc_blocks:
            x = block(x)
            res = x.shape[2]
            if x.shape[1] != self.widths[res]:  # only with custom widths: zero-pad channels
                x = torch.cat([x, x.new_zeros(x.shape[0], self.widths[res] - x.shape[1], res, res)], 1)
            acts[res] = x
        return acts


class DecBlock(nn.Module):
    """One top-down block with its own latent z of shape (zdim, res, res).

    ``enc`` gives the posterior (mean, log σ) from [state, encoder activation]; ``prior`` gives
    the prior (mean, log σ) and a feature residual from the state; z enters through ``z_proj``;
    ``resnet`` refines the state.
    """

    def __init__(self, hp: VDVAEHparams, res: int, mixin: int | None, width: int) -> None:
        super().__init__()
        self.base, self.mixin, self.zdim, self.width = res, mixin, hp.zdim, width
        mid = int(width * hp.bottleneck_multiple)
        use_3x3 = res > 2
        self.enc = Block(width * 2, mid, hp.zdim * 2, residual=False, use_3x3=use_3x3)
        self.prior = Block(width, mid, hp.zdim * 2 + width, residual=False, use_3x3=use_3x3)
        self.z_proj = _conv(hp.zdim, width, 1)
        self.resnet = Block(width, mid, width, residual=True, use_3x3=use_3x3)

    def state_in(self, xs: dict[int, torch.Tensor], n: int, like: torch.Tensor) -> torch.Tensor:
        """The incoming state at this resolution (zeros if none yet), plus the upsampled mixin state."""
        x = xs.get(self.base)
        if x is None:
            x = like.new_zeros(n, self.width, self.base, self.base)
        elif x.shape[0] != n:
            x = x.expand(n, -1, -1, -1)
        if self.mixin is not None:
            x = x + F.interpolate(xs[self.mixin][:, :x.shape[1]], scale_factor=self.base // self.mixin)
        return x

    def split_prior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prior mean, prior log σ, and the state with the prior's feature residual added."""
        feats = self.prior(x)
        z = self.zdim
        return feats[:, :z], feats[:, z:2 * z], x + feats[:, 2 * z:]

    def posterior(self, x: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log σ, each (n, zdim, res, res)."""
        qm, qv = self.enc(torch.cat([x, acts], dim=1)).chunk(2, dim=1)
        return qm, qv

    def finish(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """State update after z is chosen."""
        return self.resnet(x + self.z_proj(z))


class DmolNet(nn.Module):
    """Output head: 1×1 conv to ``num_mixtures · 10`` discretized-logistic parameters per pixel."""

    def __init__(self, hp: VDVAEHparams) -> None:
        super().__init__()
        self.out_conv = _conv(hp.width, hp.num_mixtures * 10, 1)

    def forward(self, px_z: torch.Tensor) -> torch.Tensor:
        """(n, width, H, W) → (n, H, W, num_mixtures · 10)."""
        return self.out_conv(px_z).permute(0, 2, 3, 1)


class Decoder(nn.Module):
    """Top-down pass over ``dec_blocks``; learned start tensors; final gain and bias."""

    def __init__(self, hp: VDVAEHparams) -> None:
        super().__init__()
        self.hp = hp
        widths = hp.widths()
        layers = hp.decoder_layers()
        self.dec_blocks = nn.ModuleList(DecBlock(hp, res, mixin, widths[res]) for res, mixin in layers)
        resolutions = sorted({res for res, _ in layers})
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, widths[r], r, r)) for r in resolutions if r <= hp.no_bias_above)
        self.out_net = DmolNet(hp)
        self.gain = nn.Parameter(torch.ones(1, hp.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, hp.width, 1, 1))

    def _start(self) -> dict[int, torch.Tensor]:
        return {b.shape[2]: b for b in self.bias_xs}

    def posterior_latents(self, acts: dict[int, torch.Tensor], eps: Sequence[torch.Tensor]
                          ) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """Run the first ``len(eps)`` blocks with posterior samples ``z = qm + exp(qv) · eps``.

        Parameters
        ----------
        acts : dict of int to Tensor
            Encoder activations per resolution.
        eps : sequence of Tensor
            Standard normal noise per block, shapes (n, zdim, r, r).

        Returns
        -------
        zs : list of Tensor
            The sampled latents, one (n, zdim, r, r) per block run.
        xs : dict of int to Tensor
            Decoder states per resolution after those blocks.
        """
        xs = self._start()
        zs = []
        for block, e in zip(self.dec_blocks, eps):
            a = acts[block.base]
            x = block.state_in(xs, a.shape[0], a)
            qm, qv = block.posterior(x, a)
            _, _, x = block.split_prior(x)
            z = qm + torch.exp(qv) * e
            xs[block.base] = block.finish(x, z)
            zs.append(z)
        return zs, xs

    def manual_latents(self, n: int, latents: Sequence[torch.Tensor], eps: Sequence[torch.Tensor],
                       temperature: float = 1.0) -> torch.Tensor:
        """Top-down pass with given latents for the first blocks and prior samples above.

        Blocks ``i < len(latents)`` use ``latents[i]``; the others ``z = pm + exp(pv) · t · eps``
        (the official ``pv + log t``).  The prior's feature residual is added in every block.

        Parameters
        ----------
        n : int
            Batch size.
        latents : sequence of Tensor
            (n, zdim, r, r) per leading block.
        eps : sequence of Tensor
            Standard normal noise for the remaining blocks, in block order.
        temperature : float

        Returns
        -------
        Tensor of shape (n, width, image_size, image_size)
            The final state ``x · gain + bias`` that the output head reads.
        """
        xs = self._start()
        ref = self.gain
        k = len(latents)
        for i, block in enumerate(self.dec_blocks):
            x = block.state_in(xs, n, ref)
            pm, pv, x = block.split_prior(x)
            z = latents[i] if i < k else pm + torch.exp(pv) * temperature * eps[i - k]
            xs[block.base] = block.finish(x, z)
        return self.final(xs[self.hp.image_size])

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The official ``final_fn``: ``x · gain + bias``."""
        return x * self.gain + self.bias


class VDVAE(nn.Module):
    """VDVAE with openai/vdvae's state-dict layout (``encoder.*``, ``decoder.*``).

    Parameters
    ----------
    hparams : VDVAEHparams
    """

    def __init__(self, hparams: VDVAEHparams) -> None:
        super().__init__()
        self.hparams = hparams
        self.encoder = Encoder(hparams)
        self.decoder = Decoder(hparams)


def init_random_weights(model: VDVAE, generator: torch.Generator) -> VDVAE:
    """Fill ``model`` with seeded random weights (no global RNG use).

    Convolution weights are uniform in ±1/√fan_in (PyTorch's default bound); the official
    residual scalings are kept (encoder ``c4`` × √(1/n_enc), ``z_proj`` and ``resnet.c4`` ×
    √(1/n_dec)).  Layers the official code starts at zero (biases, ``prior.c4``, ``bias_xs``)
    get small random values instead, so that every path carries signal in tests.
    """
    n_enc = len(model.encoder.enc_blocks)
    n_dec = len(model.decoder.dec_blocks)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.dim() == 4:
                bound = 1.0 / math.sqrt(p.shape[1] * p.shape[2] * p.shape[3])
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        model.decoder.gain.add_(1.0)
        for b in model.encoder.enc_blocks:
            b.c4.weight.mul_(math.sqrt(1 / n_enc))
        for b in model.decoder.dec_blocks:
            b.z_proj.weight.mul_(math.sqrt(1 / n_dec))
            b.resnet.c4.weight.mul_(math.sqrt(1 / n_dec))
            b.prior.c4.weight.mul_(0.1)
    return model
