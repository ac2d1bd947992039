"""Inception-v3 with torchvision's state-dict names (IMAGENET1K_V1, ``inception_v3_google-*.pth``).

Modules ``Conv2d_1a_3x3`` … ``Conv2d_4a_3x3`` (each ``conv`` without bias + ``bn`` with eps
1e-3 + ReLU), ``Mixed_5b`` … ``Mixed_7c``, ``AuxLogits`` (``conv0``, ``conv1``, ``fc``) and
``fc``.  Like torchvision's pretrained model it is built with ``transform_input=True``: inputs
normalised with ImageNet mean/std are re-mapped to the [-1, 1] scaling the ported TensorFlow
weights expect.  The evaluation tap is ``avgpool`` (2048 values); at 224 × 224 input the last
feature map is 5 × 5.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import finish, seeded_build, unknown_tap

TAPS = ("avgpool",)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _chain(x: torch.Tensor, *mods: nn.Module) -> torch.Tensor:
    for m in mods:
        x = m(x)
    return x


def _pool_branch(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    return conv(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))


class InceptionA(nn.Module):
    """35 × 35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), _chain(x, self.branch5x5_1, self.branch5x5_2),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          _pool_branch(x, self.branch_pool)], 1)


class InceptionB(nn.Module):
    """35 → 17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17 × 17 block with factorised 7×7 convolutions (c7 inner channels)."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7, row, col = channels_7x7, dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = [getattr(self, f"branch7x7dbl_{i}") for i in range(1, 6)]
        return torch.cat([self.branch1x1(x), _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                          _chain(x, *dbl), _pool_branch(x, self.branch_pool)], 1)


class InceptionD(nn.Module):
    """17 → 8 reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([_chain(x, self.branch3x3_1, self.branch3x3_2),
                          _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8 × 8 block with split 1×3 / 3×1 outputs."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d3 = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3), _pool_branch(x, self.branch_pool)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (training only; kept so torchvision's file loads unchanged)."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(cin, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _chain(F.avg_pool2d(x, kernel_size=5, stride=3), self.conv0, self.conv1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionV3(nn.Module):
    """Inception-v3 (torchvision ``Inception3`` layout, aux classifier included)."""

    def __init__(self, num_classes: int = 1000, transform_input: bool = True) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.5)
        self.fc = nn.Linear(2048, num_classes)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input → (pixel − 0.5) / 0.5, per channel."""
        if not self.transform_input:
            return x
        mean = x.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The ``avgpool`` output, flattened: shape (n, 2048) for images of shape (n, 3, H, W) (H, W ≥ 75)."""
        stem = [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1, self.Conv2d_3b_1x1,
                self.Conv2d_4a_3x3, self.maxpool2]
        mixed = [getattr(self, f"Mixed_{n}") for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e",
                                                      "7a", "7b", "7c")]
        x = _chain(self._transform(x), *stem, *mixed)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (n, num_classes) (evaluation path; the auxiliary head is not run)."""
        return self.fc(self.dropout(self.pooled(x)))

    def tap(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Activation ``name`` ("avgpool") for images of shape (n, 3, H, W)."""
        if name not in TAPS:
            raise unknown_tap("InceptionV3", name, TAPS)
        return self.pooled(x)


def build_inception_v3(weights: Any = None,
                       seed: int = 0, transform_input: bool = True) -> InceptionV3:
    """Inception-v3 in eval mode: torchvision's IMAGENET1K_V1 file at ``weights``, or seeded random weights.

    Parameters
    ----------
    weights : str, optional
        Path or fsspec URL of ``inception_v3_google-0cc3c7bd.pth`` (or the same weights as safetensors).
    seed : int
    transform_input : bool
        True as in torchvision's pretrained model (and in Brain-Diffuser's evaluation).

    Raises
    ------
    fmri2img.models.weights.WeightsError
        When the file has other keys or shapes than torchvision's ``inception_v3``.
    """
    net = seeded_build(lambda: InceptionV3(transform_input=transform_input), seed)
    return finish(net, weights, "InceptionV3 (torchvision inception_v3 IMAGENET1K_V1)")
