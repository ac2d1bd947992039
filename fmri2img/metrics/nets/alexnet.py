"""AlexNet with torchvision's layer layout and state-dict names (``features.0`` … ``classifier.6``).

Evaluation taps (REFERENCE.md §5): ``features.4`` (ReLU after conv2; 192 × 27 × 27 =
139,968 values at 224 × 224 input) and ``features.11`` (ReLU after conv5; 256 × 13 × 13 =
43,264).  Loads torchvision's ``alexnet-owt-7be5be79.pth`` (IMAGENET1K_V1) unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._common import finish, seeded_build, unknown_tap

#: Tap name → index of the last ``features`` layer to run.
TAPS = {"features.4": 4, "features.11": 11}


class AlexNet(nn.Module):
    """AlexNet (the one-weird-trick variant torchvision ships), 1000 ImageNet classes."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        conv = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
                (256, 256, 3, 1, 1)]
        layers: list[nn.Module] = []
        for i, (cin, cout, k, s, p) in enumerate(conv):
            layers += [nn.Conv2d(cin, cout, k, stride=s, padding=p), nn.ReLU(inplace=True)]
            if i in (0, 1, 4):  # max-pool after conv1, conv2 and conv5
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, array of shape (n, num_classes), from images of shape (n, 3, H, W)."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)

    def tap(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Activation ``name`` (a key of :data:`TAPS`) for images of shape (n, 3, H, W)."""
        if name not in TAPS:
            raise unknown_tap("AlexNet", name, TAPS)
        return self.features[: TAPS[name] + 1](x)


def build_alexnet(weights: Any = None,
                  seed: int = 0) -> AlexNet:
    """AlexNet in eval mode: torchvision's weight file at ``weights`` (path or URL), or seeded random weights.

    Raises
    ------
    fmri2img.models.weights.WeightsError
        When the file is missing, unsafe, or has other keys or shapes than torchvision's AlexNet.
    """
    net = seeded_build(AlexNet, seed)
    return finish(net, weights, "AlexNet (torchvision alexnet IMAGENET1K_V1)")
