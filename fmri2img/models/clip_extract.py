"""CLIP's token reductions and the ``clip-text`` / ``clip-vision`` feature extractors.

The features themselves (Brain-Diffuser's text and vision chains) are computed by
:mod:`fmri2img.models.clip`; this module wraps them as registered extractors
(:mod:`fmri2img.models.extractors`) and reduces the 257 vision tokens when asked.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fmri2img.models.clip import (MAX_TOKENS, check_captions, check_images, clip_text_features, clip_vision_batches,
                                  dtype_of, load_clip, tiny_clip)
from fmri2img.models.weights import WeightsError, pick_device, weights_name

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- token reductions
def _all(z: np.ndarray, pool_grid: int) -> np.ndarray:
    return z


def _first77(z: np.ndarray, pool_grid: int) -> np.ndarray:
    return z[:, :MAX_TOKENS]


def _pooled(z: np.ndarray, pool_grid: int) -> np.ndarray:
    n, t, d = z.shape
    side = int(round((t - 1) ** 0.5))
    if side * side != t - 1 or side % pool_grid:
        raise ValueError(f"pool_grid={pool_grid} does not divide the {side}×{side} patch grid; "
                         f"use a divisor of {side} (for ViT-L/14: 1, 2, 4, 8 or 16)")
    k = side // pool_grid
    grid = z[:, 1:].reshape(n, pool_grid, k, pool_grid, k, d).mean(axis=(2, 4), dtype=np.float64)
    return np.concatenate([z[:, :1], grid.reshape(n, pool_grid * pool_grid, d).astype(z.dtype)], axis=1)


@dataclass(frozen=True)
class TokenReduction:
    """A way to cut the 257 vision tokens down; ``n_tokens(pool_grid)`` gives the result's count."""

    reduce: Callable[[np.ndarray, int], np.ndarray]
    n_tokens: Callable[[int], int]
    description: str


#: name → token reduction of (n, 257, d) vision features
TOKEN_REDUCTIONS: dict[str, TokenReduction] = {
    "all": TokenReduction(_all, lambda g: 257, "all 257 tokens (Brain-Diffuser)"),
    "first77": TokenReduction(_first77, lambda g: MAX_TOKENS,
                              "tokens [:77]: CLS + the first 76 patches in row-major order, i.e. the top ~4.75 "
                              "rows of the 16×16 grid (the seed paper's cut; spatially biased)"),
    "pooled": TokenReduction(_pooled, lambda g: 1 + g * g,
                             "CLS + the 16×16 patch grid average-pooled to pool_grid × pool_grid "
                             "(keeps the whole visual field)"),
}


def reduce_tokens(features: np.ndarray, tokens: str = "all", pool_grid: int = 4) -> np.ndarray:
    """Apply token reduction ``tokens`` (a key of :data:`TOKEN_REDUCTIONS`) to (n, 257, d) features."""
    return _reduction(tokens).reduce(np.asarray(features), pool_grid)


def _reduction(tokens: str) -> TokenReduction:
    try:
        return TOKEN_REDUCTIONS[tokens]
    except KeyError:
        raise ValueError(f"tokens={tokens!r}; expected one of {sorted(TOKEN_REDUCTIONS)}") from None



# --------------------------------------------------------------------------- extractors
@dataclass
class _ClipExtractor:
    """Shared state of the two CLIP extractors: the model, where it runs, and its provenance."""

    model: Any
    tokenizer: Any
    weights_name: str | None
    batch_size: int
    dtype: str

    @property
    def random_weights(self) -> bool:
        return self.weights_name is None

    def _base_attrs(self) -> dict[str, Any]:
        return {"extractor": self.name, "model": "CLIP ViT-L/14 (transformers)" if not self.random_weights
                else "tiny CLIP (seeded random weights; proves the plumbing, not the features)",
                "weights": self.weights_name, "random_weights": self.random_weights, "dtype": self.dtype,
                "projection_dim": int(self.model.config.projection_dim), "batch_size": self.batch_size}

    @staticmethod
    def _check_ids(n: int, image_ids: Any) -> None:
        m = len(np.asarray(image_ids).reshape(-1))
        if m != n:
            raise ValueError(f"image_ids has {m} entries but the batch has {n} rows: pass one id per image")


class ClipTextExtractor(_ClipExtractor):
    """The 'clip-text' extractor: (n, 5) captions → (n, 77, d) float32 (deterministic; no randomness)."""

    name = "clip-text"
    input = "captions"

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (MAX_TOKENS, int(self.model.config.projection_dim))

    feature_dims = ("token", "dim")

    def attrs(self) -> dict[str, Any]:
        return {**self._base_attrs(), "tokens": MAX_TOKENS,
                "recipe": "projection on all 77 tokens, / |projected EOS|, mean over non-empty captions "
                          "(no caption: the empty caption)"}

    def extract(self, batch: np.ndarray, image_ids: np.ndarray, seed: int) -> np.ndarray:
        """Features of a batch of caption rows: array (n, k) str → (n, 77, d) float32."""
        caps = check_captions(batch)
        self._check_ids(len(caps), image_ids)
        return clip_text_features(self.model, self.tokenizer, caps, self.batch_size)


class ClipVisionExtractor(_ClipExtractor):
    """The 'clip-vision' extractor: uint8 images → (n, n_tokens, d) float32 (deterministic)."""

    name = "clip-vision"
    input = "images"
    feature_dims = ("token", "dim")

    def __init__(self, *args: Any, tokens: str = "all", pool_grid: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens, self.pool_grid = tokens, pool_grid

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (_reduction(self.tokens).n_tokens(self.pool_grid), int(self.model.config.projection_dim))

    def attrs(self) -> dict[str, Any]:
        extra = {"pool_grid": self.pool_grid} if self.tokens == "pooled" else {}
        return {**self._base_attrs(), "token_reduction": self.tokens,
                "token_reduction_description": _reduction(self.tokens).description, **extra,
                "preprocessing": "PIL bilinear 512, x/255*2-1, (x+1)/2*255 truncated to uint8, PIL bicubic "
                                 "shortest side 224, centre crop 224, /255, CLIP mean/std",
                "recipe": "post_layernorm + visual_projection on all tokens, / |projected CLS|"}

    def extract(self, batch: np.ndarray, image_ids: np.ndarray, seed: int) -> np.ndarray:
        """Features of uint8 images (n, H, W, 3) → (n, n_tokens, d) float32."""
        imgs = check_images(batch)
        self._check_ids(len(imgs), image_ids)
        out = [reduce_tokens(f, self.tokens, self.pool_grid)
               for f in clip_vision_batches(self.model, imgs, self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, *self.feature_shape), np.float32)


def _build(weights: Any, tiny: bool, device: str, dtype: str, batch_size: int) -> dict[str, Any]:
    torch_dtype = dtype_of(dtype)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer (for example 16)")
    if tiny:
        model, tok = tiny_clip()
        model = model.to(device=pick_device(device), dtype=torch_dtype)
        name = None
    elif not weights:
        raise WeightsError("no CLIP weights given: set weights.clip in the configuration to a transformers-format "
                           "CLIP ViT-L/14 directory (local path or fsspec URL), or use tiny = true for the "
                           "random-weight test model")
    else:
        model, tok = load_clip(weights, device=device, dtype=dtype)
        shown = weights_name(weights)
        name = os.path.basename(shown.rstrip("/")) or shown
    return dict(model=model, tokenizer=tok, weights_name=name, batch_size=int(batch_size), dtype=dtype)


def make_clip_text_extractor(*, weights: Any = None, tiny: bool = False,
                             device: str = "auto", dtype: str = "float32",
                             batch_size: int = 64) -> ClipTextExtractor:
    """Build the 'clip-text' extractor (feature shape (77, projection_dim), dims ("token", "dim")).

    Parameters
    ----------
    weights : str, path-like or opened weights, optional
        A transformers-format CLIP directory (see :func:`~fmri2img.models.clip.load_clip`).
    tiny : bool
        Use :func:`tiny_clip` (seeded random weights) instead of ``weights``.
    device, dtype : str
        Device choice ("auto" picks CUDA, MPS or CPU) and one of :data:`DTYPES`.
    batch_size : int
        Captions per forward pass.
    """
    return ClipTextExtractor(**_build(weights, tiny, device, dtype, batch_size))


def make_clip_vision_extractor(*, weights: Any = None, tiny: bool = False,
                               device: str = "auto", dtype: str = "float32", batch_size: int = 16,
                               tokens: str = "all", pool_grid: int = 4) -> ClipVisionExtractor:
    """Build the 'clip-vision' extractor (feature shape (n_tokens, projection_dim), dims ("token", "dim")).

    Parameters
    ----------
    weights, tiny, device, dtype
        As :func:`make_clip_text_extractor`.
    batch_size : int
        Images per forward pass.
    tokens : str
        Token reduction, a key of :data:`TOKEN_REDUCTIONS`: "all" (257, Brain-Diffuser),
        "first77" (the seed paper's spatially biased cut) or "pooled" (1 + pool_grid²).
    pool_grid : int
        Side of the pooled patch grid for ``tokens="pooled"`` (4 → 17 tokens, 8 → 65).
    """
    red = _reduction(tokens)
    if tokens == "pooled" and (isinstance(pool_grid, bool) or not isinstance(pool_grid, (int, np.integer))
                               or pool_grid < 1 or 16 % pool_grid):
        raise ValueError(f"pool_grid={pool_grid!r}; expected a divisor of the 16×16 patch grid: 1, 2, 4, 8 or 16")
    logger.debug("clip-vision token reduction: %s", red.description)
    return ClipVisionExtractor(**_build(weights, tiny, device, dtype, batch_size),
                               tokens=tokens, pool_grid=int(pool_grid))
