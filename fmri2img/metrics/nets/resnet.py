"""ResNet-50 with torchvision's state-dict names, for the SwAV metric.

torchvision's layout (stride in the 3 × 3 convolution, "v1.5"): ``conv1``, ``bn1``,
``layer1`` … ``layer4`` of Bottleneck blocks (``conv1/bn1``, ``conv2/bn2``, ``conv3/bn3``,
``downsample.0/1``), ``fc``.  The evaluation tap is ``avgpool`` (2048 values).

Loads either torchvision's ``resnet50`` weight file or the SwAV checkpoint
``swav_800ep_pretrain.pth.tar`` exactly as ``torch.hub.load("facebookresearch/swav:main",
"resnet50")`` does: keys lose their ``module.`` prefix, the SwAV projection head
(``projection_head.*``) and prototypes (``prototypes*``) are dropped, and ``fc`` - which the
checkpoint does not have - stays at its (seeded) random initialisation; it does not
influence the ``avgpool`` tap.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from fmri2img.models.weights import load_state_dict

from ._common import load_checked, seeded_build, unknown_tap

logger = logging.getLogger(__name__)

TAPS = ("avgpool",)

_SWAV_HEADS = ("projection_head.", "prototypes")


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 ×4 residual block."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, 4 * width, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != 4 * width:
            self.downsample = nn.Sequential(*_conv_bn(cin, 4 * width, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 (3, 4, 6, 3 Bottleneck blocks)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, width, stride=2 if (b == 0 and i > 0) else 1))
                cin = 4 * width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The ``avgpool`` output, flattened: shape (n, 2048) for images of shape (n, 3, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (n, num_classes)."""
        return self.fc(self.pooled(x))

    def tap(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Activation ``name`` ("avgpool") for images of shape (n, 3, H, W)."""
        if name not in TAPS:
            raise unknown_tap("ResNet-50", name, TAPS)
        return self.pooled(x)


def swav_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a SwAV checkpoint's keys onto torchvision's ResNet-50 names (no-op for a torchvision file).

    Strips a leading ``module.`` (DistributedDataParallel) and drops the projection head and
    prototypes, which the evaluation does not use.
    """
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if not k.startswith(_SWAV_HEADS):
            out[k] = v
    return out


def build_resnet50(weights: Any = None,
                   seed: int = 0) -> ResNet50:
    """ResNet-50 in eval mode from torchvision's weight file or the SwAV checkpoint, or seeded random weights.

    Parameters
    ----------
    weights : str, optional
        Path or fsspec URL of ``resnet50-*.pth`` (torchvision) or ``swav_800ep_pretrain.pth.tar``.
        A checkpoint without ``fc`` (SwAV) leaves ``fc`` at its seeded random initialisation.
    seed : int

    Raises
    ------
    fmri2img.models.weights.WeightsError
        When a backbone key is missing, unexpected or misshapen.
    """
    net = seeded_build(ResNet50, seed)
    if weights is None:
        return net.eval()
    state = swav_to_torchvision(load_state_dict(weights))
    ignore: tuple[str, ...] = ()
    if not any(k.startswith("fc.") for k in state):
        logger.info("ResNet-50 checkpoint has no fc layer (SwAV): fc stays random; the avgpool tap is unaffected")
        ignore = ("fc.",)
    return load_checked(net, state, "ResNet-50 (torchvision resnet50 or SwAV swav_800ep_pretrain)", ignore)
