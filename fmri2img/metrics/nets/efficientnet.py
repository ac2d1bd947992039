"""EfficientNet-B1 with torchvision's state-dict names (``features.0`` … ``features.8``, ``classifier.1``).

Layout (torchvision ``efficientnet_b1``: width 1.0, depth 1.1, BatchNorm eps 1e-5, SiLU):
``features.0`` stem (conv 3×3 stride 2 → 32, BN, SiLU); ``features.1`` … ``features.7`` the
seven MBConv stages with 2, 3, 3, 4, 4, 5, 2 blocks; ``features.8`` the 1×1 head conv to
1280; ``avgpool``; ``classifier`` = (Dropout 0.2, Linear 1280 → 1000).  Each MBConv block is
``block.0`` expand 1×1 (absent when the expansion ratio is 1), depthwise k×k, squeeze-excitation
(``fc1``/``fc2`` 1×1 convolutions to in_channels // 4), project 1×1 (no activation), with a
residual connection when the stride is 1 and the channel count is unchanged (stochastic depth
is the identity at evaluation).  The evaluation tap is ``avgpool`` (1280 values).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._common import finish, seeded_build, unknown_tap

TAPS = ("avgpool",)

#: EfficientNet-B0 stages: (expand ratio, kernel, stride, in channels, out channels, blocks).
_B0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def _divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without going below 90 % of it."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias, "same" padding) → BatchNorm → SiLU; keys ``0`` (conv), ``1`` (BN)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating: global mean → 1×1 conv → SiLU → 1×1 conv → sigmoid → scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))


class MBConv(nn.Module):
    """Inverted residual block with squeeze-excitation."""

    def __init__(self, expand: int, k: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = _divisible(cin * expand)
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(conv_bn_act(cin, mid, 1))
        layers += [conv_bn_act(mid, mid, k, stride, groups=mid), SqueezeExcitation(mid, max(1, cin // 4)),
                   conv_bn_act(mid, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class EfficientNetB1(nn.Module):
    """EfficientNet-B1 (width 1.0, depth 1.1)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, depth: float = 1.1) -> None:
        super().__init__()
        stages = [(e, k, s, _divisible(i * width), _divisible(o * width), int(math.ceil(n * depth)))
                  for e, k, s, i, o, n in _B0_STAGES]
        layers: list[nn.Module] = [conv_bn_act(3, stages[0][3], 3, stride=2)]
        for e, k, s, cin, cout, n in stages:
            layers.append(nn.Sequential(*[MBConv(e, k, s if b == 0 else 1, cin if b == 0 else cout, cout)
                                          for b in range(n)]))
        last = 4 * stages[-1][4]
        layers.append(conv_bn_act(stages[-1][4], last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(last, num_classes))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The ``avgpool`` output, flattened: shape (n, 1280) for images of shape (n, 3, H, W)."""
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (n, num_classes)."""
        return self.classifier(self.pooled(x))

    def tap(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Activation ``name`` ("avgpool") for images of shape (n, 3, H, W)."""
        if name not in TAPS:
            raise unknown_tap("EfficientNet-B1", name, TAPS)
        return self.pooled(x)


def build_efficientnet_b1(weights: Any = None,
                          seed: int = 0) -> EfficientNetB1:
    """EfficientNet-B1 in eval mode: torchvision's IMAGENET1K_V1 file at ``weights``, or seeded random weights.

    Raises
    ------
    fmri2img.models.weights.WeightsError
        When the file has other keys or shapes than torchvision's ``efficientnet_b1``.
    """
    net = seeded_build(EfficientNetB1, seed)
    return finish(net, weights, "EfficientNet-B1 (torchvision efficientnet_b1 IMAGENET1K_V1)")
