"""Feature extraction for the high-level metrics (REFERENCE.md §5, ``eval_extract_features.py``).

Every network sees the same preprocessing: PIL resize to 224 × 224 (bilinear, no crop), scale
to [0, 1], normalise per channel with ImageNet mean/std, or with CLIP's for the CLIP network.
:data:`EVAL_NETS` names each feature set, the network that computes it, its tap and its
normalisation:

========== ================================================ ==========================
name       network / tap                                    dims at 224 × 224
========== ================================================ ==========================
alexnet2   AlexNet ``features.4`` (ReLU after conv2)        192 × 27 × 27 = 139,968
alexnet5   AlexNet ``features.11`` (ReLU after conv5)       256 × 13 × 13 = 43,264
inceptionv3 Inception-v3 ``avgpool`` (transform_input on)   2048
clip       CLIP ViT-L/14 projected image embedding          768 (not normalised)
efficientnet_b1 EfficientNet-B1 ``avgpool``                 1280
swav       SwAV ResNet-50 ``avgpool``                       2048
========== ================================================ ==========================
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from PIL import Image

from .nets import build_alexnet, build_efficientnet_b1, build_inception_v3, build_resnet50
from .nets.tiny import build_tiny_cnn
from .scores import _as_uint8, _check_images

logger = logging.getLogger(__name__)

EVAL_SIDE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: normalisation name → (mean, std) per RGB channel
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}


def build_clip(weights: Any = None, seed: int = 0):
    """CLIP for the evaluation: a transformers-format directory (path or URL), or a tiny seeded random model.

    Returns
    -------
    transformers.CLIPModel (eval mode, CPU)
    """
    from fmri2img.models.clip import load_clip, tiny_clip

    if weights is None:
        return tiny_clip(seed)[0]
    return load_clip(weights, device="cpu")[0]


def _clip_embedding(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``visual_projection(pooler_output)``: the projected CLS embedding, not normalised."""
    if not (hasattr(model, "vision_model") and hasattr(model, "visual_projection")):
        raise TypeError(f"the CLIP evaluation net must be a transformers CLIPModel (or "
                        f"CLIPVisionModelWithProjection), got {type(model).__name__}")
    pooled = model.vision_model(pixel_values=x).pooler_output
    return model.visual_projection(pooled)


def _tap(name: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    def run(net: Any, x: torch.Tensor) -> torch.Tensor:
        return net.tap(x, name)
    return run


@dataclass(frozen=True)
class EvalNet:
    """One feature set of the evaluation.

    Attributes
    ----------
    builder : callable
        ``builder(weights=None, seed=0)`` → network in eval mode (``weights``: a local path or opened weights).
    tap : str
        The layer whose output is the feature (for the record).
    normalization : str
        Key of :data:`NORMALIZATIONS`.
    dims : int
        Feature length at 224 × 224 input with the published weights' configuration.
    weights_key : str
        The ``[weights]`` configuration entry that names this network's file.
    extract : callable
        ``extract(net, x)`` → tensor of shape (n, ...) for preprocessed x of shape (n, 3, 224, 224).
    """

    builder: Callable[..., Any]
    tap: str
    normalization: str
    dims: int
    weights_key: str
    extract: Callable[[Any, torch.Tensor], torch.Tensor]


#: feature name → how to compute it (the keys :attr:`fmri2img.metrics.scores.Metric.feature` uses)
EVAL_NETS: dict[str, EvalNet] = {
    "alexnet2": EvalNet(build_alexnet, "features.4", "imagenet", 192 * 27 * 27, "alexnet", _tap("features.4")),
    "alexnet5": EvalNet(build_alexnet, "features.11", "imagenet", 256 * 13 * 13, "alexnet", _tap("features.11")),
    "inceptionv3": EvalNet(build_inception_v3, "avgpool", "imagenet", 2048, "inception_v3", _tap("avgpool")),
    "clip": EvalNet(build_clip, "visual_projection", "clip", 768, "clip", _clip_embedding),
    "efficientnet_b1": EvalNet(build_efficientnet_b1, "avgpool", "imagenet", 1280, "efficientnet_b1",
                               _tap("avgpool")),
    "swav": EvalNet(build_resnet50, "avgpool", "imagenet", 2048, "swav", _tap("avgpool")),
}


def _tiny(seed: int) -> Callable[..., Any]:
    def build(weights: Any = None, seed: int = seed):
        return build_tiny_cnn(weights, seed)
    build.__name__ = f"build_tiny_cnn_{seed}"
    return build


#: cheap stand-ins for :data:`EVAL_NETS` without weights (``[evaluate] tiny = true``, the demo): the same
#: feature kinds from tiny seeded random CNNs, one seed per network; CLIP is already the tiny random model
#: when no weights are given.  Random weights either way: their scores are plumbing checks.
TINY_EVAL_NETS: dict[str, EvalNet] = {
    "alexnet2": EvalNet(_tiny(1), "features.4", "imagenet", 12 * 27 * 27, "alexnet", _tap("features.4")),
    "alexnet5": EvalNet(_tiny(1), "features.11", "imagenet", 16 * 13 * 13, "alexnet", _tap("features.11")),
    "inceptionv3": EvalNet(_tiny(2), "avgpool", "imagenet", 16, "inception_v3", _tap("avgpool")),
    "clip": EVAL_NETS["clip"],
    "efficientnet_b1": EvalNet(_tiny(3), "avgpool", "imagenet", 16, "efficientnet_b1", _tap("avgpool")),
    "swav": EvalNet(_tiny(4), "avgpool", "imagenet", 16, "swav", _tap("avgpool")),
}


def eval_net_spec(name: str, weights: Mapping[str, Any] | None = None, tiny: bool = False) -> EvalNet:
    """The :class:`EvalNet` that computes feature set ``name``: the full-size network, or with ``tiny``
    and no weights for it in ``weights`` (the ``[weights]`` entries), its tiny random stand-in."""
    spec = _eval_net(name)
    return TINY_EVAL_NETS[name] if tiny and not (weights or {}).get(spec.weights_key) else spec


def _eval_net(name: str) -> EvalNet:
    try:
        return EVAL_NETS[name]
    except KeyError:
        raise ValueError(f"evaluation feature {name!r} is not known: use one of {list(EVAL_NETS)}") from None


def preprocess(images: np.ndarray, normalization: str = "imagenet") -> torch.Tensor:
    """The evaluation preprocessing: PIL bilinear resize to 224 × 224 (no crop), [0, 1], normalise.

    Parameters
    ----------
    images : array of shape (n, H, W, 3), uint8
    normalization : {"imagenet", "clip"}

    Returns
    -------
    Tensor of shape (n, 3, 224, 224), float32
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} is not known: use one of {list(NORMALIZATIONS)}")
    images = _check_images("images", images)
    if images.dtype != np.uint8:
        raise ValueError(f"images has dtype {images.dtype} but preprocess needs uint8: convert with "
                         f".astype(np.uint8), or call eval_features, which also takes float images with NaN")
    mean, std = (np.asarray(v, dtype=np.float32).reshape(1, 1, 3) for v in NORMALIZATIONS[normalization])
    out = np.empty((len(images), 3, EVAL_SIDE, EVAL_SIDE), dtype=np.float32)
    for i, img in enumerate(images):
        if img.shape[:2] != (EVAL_SIDE, EVAL_SIDE):
            img = np.asarray(Image.fromarray(img).resize((EVAL_SIDE, EVAL_SIDE), Image.Resampling.BILINEAR))
        out[i] = ((img.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    return torch.from_numpy(out)


def _device_dtype(net: Any) -> tuple[torch.device, torch.dtype]:
    try:
        p = next(net.parameters())
    except (StopIteration, AttributeError):
        return torch.device("cpu"), torch.float32
    return p.device, p.dtype


def eval_features(name: str, net: Any, images: np.ndarray, batch_size: int = 64, spec: EvalNet | None = None
                  ) -> np.ndarray:
    """Features ``name`` of :data:`EVAL_NETS` for a batch of images, flattened per image.

    Parameters
    ----------
    name : str
        Key of :data:`EVAL_NETS` ("alexnet2", "clip", ...).
    net : torch.nn.Module
        The network ``EVAL_NETS[name].builder`` returned (any transformers CLIPModel for "clip"),
        on any device; inputs are moved to it.
    images : array of shape (n, H, W, 3), uint8 (or float in [0, 255]; an image with a NaN pixel
        gets a row of NaN and is never passed to the network)
    batch_size : int
    spec : EvalNet, optional
        How to run ``net`` (:func:`eval_net_spec`; default ``EVAL_NETS[name]``).

    Returns
    -------
    array of shape (n, d), float32
        d is the network's tap size (:attr:`EvalNet.dims` for the published configurations).
    """
    spec = spec or _eval_net(name)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    images = _check_images("images", images)
    converted = [_as_uint8(img) for img in images]
    ok = [i for i, img in enumerate(converted) if img is not None]
    if len(ok) < len(images):
        logger.warning("%s: %d image(s) with non-finite pixels get NaN features: %s", name,
                       len(images) - len(ok), sorted(set(range(len(images))) - set(ok))[:20])
    device, dtype = _device_dtype(net)
    rows: list[np.ndarray] = []
    with torch.inference_mode():
        for s in range(0, len(ok), int(batch_size)):
            idx = ok[s:s + int(batch_size)]
            x = preprocess(np.stack([converted[i] for i in idx]), spec.normalization).to(device, dtype)
            rows.append(spec.extract(net, x).float().reshape(len(idx), -1).cpu().numpy())
    d = rows[0].shape[1] if rows else spec.dims
    out = np.full((len(images), d), np.nan, dtype=np.float32)
    if ok:
        out[ok] = np.concatenate(rows)
    return out
