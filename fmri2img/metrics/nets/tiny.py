"""Tiny seeded random-weight stand-ins for the evaluation CNNs (``[evaluate] tiny = true``; the demo).

The full-size AlexNet, Inception-v3, EfficientNet-B1 and ResNet-50 with random weights cost most
of a demo's time on a laptop and, being random, measure nothing a small random net does not.
:class:`TinyEvalCNN` keeps each feature set's kind (a spatial convolution map for AlexNet(2) and
AlexNet(5), a globally pooled vector for InceptionV3, EffNet-B and SwAV) at a few percent of the
cost.  They exist only with random weights: their scores are plumbing checks, and the evaluate
stage marks them ``random_weights`` like any random net.  Real runs load the published weights
into the full-size networks.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._common import seeded_build, unknown_tap

#: tap name → (layer index of ``features`` to run up to, global average pool after it)
TAPS = {"features.4": (4, False), "features.11": (11, False), "avgpool": (11, True)}


class TinyEvalCNN(nn.Module):
    """Five convolutions in AlexNet's pattern at 1/16 of its width (4, 12, 24, 16, 16 channels).

    ``features.4`` is the ReLU after conv2 (12 × 27 × 27 at 224²), ``features.11`` after conv5
    (16 × 13 × 13), ``avgpool`` the global average of the latter (16).
    """

    def __init__(self) -> None:
        super().__init__()
        conv = [(3, 4, 11, 4, 2), (4, 12, 5, 1, 2), (12, 24, 3, 1, 1), (24, 16, 3, 1, 1), (16, 16, 3, 1, 1)]
        layers: list[nn.Module] = []
        for i, (cin, cout, k, s, p) in enumerate(conv):
            layers += [nn.Conv2d(cin, cout, k, stride=s, padding=p), nn.ReLU(inplace=True)]
            if i in (0, 1, 4):
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        self.features = nn.Sequential(*layers)

    def tap(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Activation ``name`` (a key of :data:`TAPS`) for images of shape (n, 3, H, W)."""
        if name not in TAPS:
            raise unknown_tap("TinyEvalCNN", name, TAPS)
        last, pool = TAPS[name]
        h = self.features[: last + 1](x)
        return h.mean(dim=(2, 3)) if pool else h


def build_tiny_cnn(weights: Any = None,
                   seed: int = 0) -> TinyEvalCNN:
    """A :class:`TinyEvalCNN` with seeded random weights (it has no published weights to load)."""
    if weights is not None:
        raise ValueError(f"weights={weights!r} given for a tiny evaluation net; tiny nets have random weights "
                         f"only: the full-size network loads published weights (set [evaluate] tiny = false)")
    return seeded_build(TinyEvalCNN, seed).eval()
