"""A weight-free low-level feature: the stimulus image at a small side.

The pixel feature is the image resized to ``side × side`` RGB with PIL's bilinear filter
(which is antialiased when shrinking: PIL widens the filter support by the scale factor)
and scaled to ``[0, 1]``.  Regressing fMRI onto it and turning the prediction back into an
image (:func:`pixels_to_image`) gives real, blurry reconstructions with no pretrained
weights at all, which is what the demo needs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


def _check_images(images: Any, what: str = "images") -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"{what} has shape {arr.shape}; expected (n, height, width, 3) RGB images: "
            f"add a batch axis with images[None] for a single image, or convert greyscale to RGB"
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{what} has dtype {arr.dtype}; expected uint8 in 0..255 (NSD stimuli are uint8): "
            f"convert with np.clip(x, 0, 255).astype(np.uint8) or pixels_to_image for [0, 1] floats"
        )
    return arr


def resize_pixels(images: np.ndarray, side: int) -> np.ndarray:
    """Resize uint8 images to ``side × side`` with PIL bilinear and scale to [0, 1].

    Parameters
    ----------
    images : array of shape (n, height, width, 3), uint8
    side : int
        Output side in pixels.

    Returns
    -------
    array of shape (n, side, side, 3), float32 in [0, 1]
    """
    arr = _check_images(images)
    out = np.empty((arr.shape[0], side, side, 3), dtype=np.float32)
    for i, img in enumerate(arr):
        small = Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR)
        out[i] = np.asarray(small, dtype=np.float32) / 255.0
    return out


def pixels_to_image(features: np.ndarray) -> np.ndarray:
    """Turn pixel features (or their predictions) back into uint8 images.

    Parameters
    ----------
    features : array of shape (n, side, side, 3) or (side, side, 3), float
        Values in [0, 1]; predictions outside that range are clipped.

    Returns
    -------
    array of the same shape, uint8 (``round(clip(x, 0, 1) · 255)``)
    """
    arr = np.asarray(features)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(
            f"features has shape {arr.shape}; expected (n, side, side, 3) or (side, side, 3) pixel features "
            f"as written by the 'pixels' extractor"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"features has dtype {arr.dtype}; expected floats in [0, 1] (pixel features)")
    arr = np.nan_to_num(arr, nan=0.0)
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class PixelsExtractor:
    """The 'pixels' feature extractor (no weights; deterministic; ignores the seed).

    Attributes
    ----------
    side : int
        Output side; features have shape (side, side, 3).
    """

    side: int = 64
    name: str = "pixels"
    input: str = "images"
    random_weights: bool = False

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (self.side, self.side, 3)

    @property
    def feature_dims(self) -> tuple[str, ...]:
        return ("y", "x", "rgb")

    def attrs(self) -> dict[str, Any]:
        """JSON-able facts recorded with the features."""
        return {"extractor": self.name, "side": self.side, "resize": "PIL bilinear (antialiased)",
                "scale": "x / 255, float32 in [0, 1]", "random_weights": False, "weights": None}

    def extract(self, batch: np.ndarray, image_ids: np.ndarray, seed: int) -> np.ndarray:
        """Pixel features of a batch.

        Parameters
        ----------
        batch : array of shape (n, height, width, 3), uint8
        image_ids : array of shape (n,)
            Unused (no randomness); checked for length.
        seed : int
            Unused.

        Returns
        -------
        array of shape (n, side, side, 3), float32 in [0, 1]
        """
        arr = _check_images(batch, "batch")
        if len(np.asarray(image_ids).reshape(-1)) != arr.shape[0]:
            raise ValueError(f"image_ids has {len(np.asarray(image_ids).reshape(-1))} entries but the batch has "
                             f"{arr.shape[0]} images: pass one id per image")
        return resize_pixels(arr, self.side)


def make_pixels_extractor(*, side: int = 64, weights: Any = None,
                          tiny: bool = False, device: str = "auto", dtype: str = "float32",
                          batch_size: int = 64) -> PixelsExtractor:
    """Build the 'pixels' extractor.

    Parameters
    ----------
    side : int
        Output side in pixels (default 64: 64 × 64 × 3 = 12,288 features).
    weights, tiny, device, dtype, batch_size
        Accepted for the common factory signature; the feature has no weights and runs on
        the CPU with PIL, so they are ignored (``weights`` must be None).

    Returns
    -------
    PixelsExtractor
    """
    if weights is not None:
        raise ValueError(f"weights={weights!r} given for the 'pixels' extractor, which has no weights: "
                         f"remove the pixels entry from the [weights] section")
    if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not 1 <= int(side) <= 4096:
        raise ValueError(f"side={side!r}; expected an integer number of pixels in 1..4096 (for example 64)")
    return PixelsExtractor(side=int(side))
