"""CLIP ViT-L/14 features as Brain-Diffuser computes them (REFERENCE.md §2.2, §2.3).

* Text: per image, its non-empty captions → tokens padded/truncated to 77 with
  ``<|endoftext|>`` (no attention mask: the text tower is causal, as in Brain-Diffuser) →
  ``last_hidden_state`` (after the final LayerNorm) → ``text_projection`` on all 77 tokens
  → every token ÷ ‖projected pooled (EOS) token‖ → mean over the captions → (77, d).
* Vision: the exact preprocessing chain of §2.3, written out here (never a
  ``CLIPProcessor``, whose float handling changed between transformers versions:
  Brain-Diffuser issue #9) → ``last_hidden_state`` → ``post_layernorm`` →
  ``visual_projection`` on all 257 tokens → ÷ ‖projected CLS‖ → (257, d), optionally
  reduced by a registered token reduction (:data:`TOKEN_REDUCTIONS`).

Weights come from a transformers-format directory (local or fsspec URL) through
:func:`load_clip`; :func:`tiny_clip` builds a seeded random-weight model of the same
structure (257 vision tokens, 77 text positions) with a real small tokenizer.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from fmri2img.models.weights import LocalWeights, WeightsError, as_weights, pick_device, weights_name

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TOKENS = 77
VISION_SIDE = 224
RESIZE_SIDE = 512  # Brain-Diffuser resizes the 425² stimulus to 512² before CLIP's own resize

#: dtype option → torch dtype
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                                  "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json")


# --------------------------------------------------------------------------- models
def vit_l14_config(projection_dim: int = 768, vocab_size: int = 49408):
    """The :class:`transformers.CLIPConfig` of CLIP ViT-L/14 (openai/clip-vit-large-patch14).

    Vision: hidden 1024, 24 layers, 16 heads, MLP 4096, patch 14, image 224 (257 tokens).
    Text: hidden 768, 12 layers, 12 heads, MLP 3072, 77 positions.  Projection 768, quick-GELU.
    """
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
                bos_token_id=0, eos_token_id=2, pad_token_id=1)  # as published: eos 2 = argmax pooling
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=VISION_SIDE, patch_size=14, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def tiny_clip(seed: int = 0, projection_dim: int = 32):
    """A seeded random-weight CLIP with the structure of ViT-L/14 at toy width, and its tokenizer.

    Vision: hidden 32, 2 layers, 4 heads, patch 14 on 224² images (still 257 tokens).
    Text: hidden 32, 2 layers, 4 heads, 77 positions, the vocabulary of
    :func:`fmri2img.models.tokenizer.tiny_clip_tokenizer`.  Deterministic for a seed.

    Returns
    -------
    model : transformers.CLIPModel (eval mode, float32, CPU)
    tokenizer : transformers.CLIPTokenizer
    """
    from transformers import CLIPConfig, CLIPModel

    from fmri2img.models.tokenizer import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=VISION_SIDE, patch_size=14, hidden_act="quick_gelu")
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
        # the default init leaves LayerNorms at (1, 0): perturb them so the test exercises them
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name:
                p.data.add_(0.1 * torch.randn_like(p))
    return model.eval().requires_grad_(False), tok


def _check_clip_dir(local: str, shown: str) -> None:
    files = set(os.listdir(local)) if os.path.isdir(local) else set()
    problems = []
    if "config.json" not in files:
        problems.append("config.json is missing")
    else:
        with open(os.path.join(local, "config.json")) as f:
            kind = json.load(f).get("model_type")
        if kind != "clip":
            problems.append(f"config.json has model_type={kind!r}, expected 'clip'")
    if not files & set(_MODEL_FILES):
        problems.append("no model.safetensors or pytorch_model.bin")
    if not ({"vocab.json", "merges.txt"} <= files or "tokenizer.json" in files):
        problems.append("no tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
    if problems:
        raise WeightsError(
            f"CLIP weights {shown} are not a transformers-format CLIP directory: {'; '.join(problems)}. "
            f"Set weights.clip to a directory holding config.json, model.safetensors (or pytorch_model.bin) and "
            f"the tokenizer files of openai/clip-vit-large-patch14 (other formats, e.g. OpenAI .pt, are not read)"
        )


def load_clip(weights: Any, *, device: str = "auto", dtype: str = "float32"):
    """Load a transformers-format CLIP model and tokenizer from a directory.

    Nothing is fetched from a model hub: the architecture comes from ``config.json``
    (``local_files_only=True``), the weights through :func:`fmri2img.models.weights.load_state_dict`
    (safetensors, or ``torch.load(weights_only=True)``) and are checked key for key and shape
    for shape by :func:`~fmri2img.models.weights.check_state_dict` (one :class:`WeightsError`
    listing missing, unexpected and misshapen keys).  A remote folder (opened weights from
    :func:`fmri2img.storage.weights.open_weights`) is copied into a temporary local directory,
    the one local copy this loader makes; it is deleted once the model is in memory.

    Parameters
    ----------
    weights : str, path-like or opened weights
        Directory with ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, and
        ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``).
    device : str
        "auto", "cpu", "cuda", "mps".
    dtype : str
        One of :data:`DTYPES` (Brain-Diffuser runs CLIP in float32).

    Returns
    -------
    model : transformers.CLIPModel (eval mode)
    tokenizer : transformers.CLIPTokenizer
    """
    torch_dtype = dtype_of(dtype)
    source, shown = as_weights(weights), weights_name(weights)
    if isinstance(source, LocalWeights) and not os.path.isdir(source.path):
        raise WeightsError(f"CLIP weights directory {shown} not found: set weights.clip to a transformers-format "
                           f"CLIP ViT-L/14 directory (nothing is downloaded at run time)")
    with source.local_dir({"config.json", *_MODEL_FILES, *_TOKENIZER_FILES}) as local:
        return _load_local(local, shown, device, torch_dtype)


def _load_local(local: str, shown: str, device: str, torch_dtype: torch.dtype):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from fmri2img.models.weights import check_state_dict, load_state_dict

    _check_clip_dir(local, shown)
    config = CLIPConfig.from_pretrained(local, local_files_only=True)
    model = CLIPModel(config)
    file = next(f for f in _MODEL_FILES if os.path.exists(os.path.join(local, f)))
    state = load_state_dict(os.path.join(local, file))
    # older checkpoints store the position_ids buffers, which current transformers does not persist
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    check_state_dict(model, state, f"CLIP ({shown}/{file})")
    model.load_state_dict(state, strict=True)
    tok = CLIPTokenizer.from_pretrained(local, local_files_only=True, model_max_length=MAX_TOKENS)
    logger.info("loaded CLIP from %s", shown)
    return model.to(device=pick_device(device), dtype=torch_dtype).eval().requires_grad_(False), tok


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype={name!r}; expected one of {sorted(DTYPES)} (CLIP runs in float32 in "
                         f"Brain-Diffuser)") from None


def _model_dtype(model) -> torch.dtype:
    return model.visual_projection.weight.dtype


def _device(model) -> torch.device:
    return model.visual_projection.weight.device


# --------------------------------------------------------------------------- text
def check_captions(captions: Any) -> np.ndarray:
    arr = np.asarray(captions)
    if arr.ndim != 2 or arr.dtype.kind not in "UO":
        raise ValueError(f"captions has shape {arr.shape} and dtype {arr.dtype}; expected (n, k) strings "
                         f"('' = missing), as stored in the captions array (NSD: (n, 5))")
    return arr


def image_captions(row: np.ndarray) -> list[str]:
    """The captions Brain-Diffuser uses for one image: the entries that are not ``''``.

    An image with no caption at all gets ``['']`` (the empty caption, i.e. the tokens
    ``<|startoftext|> <|endoftext|>`` padded), so its features equal :func:`clip_text_uncond`.
    """
    kept = [str(c) for c in row if str(c) != ""]
    return kept or [""]


@torch.no_grad()
def _encode_text(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """(len(texts), 77, d) projected tokens ÷ ‖projected EOS‖, float32 on the CPU."""
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                    return_tensors="pt")["input_ids"].to(_device(model))
    out = model.text_model(input_ids=ids)
    z = model.text_projection(out.last_hidden_state)
    pooled = model.text_projection(out.pooler_output)
    z = z / torch.linalg.vector_norm(pooled, dim=-1)[:, None, None]
    return z.float().cpu()


def clip_text_features(model, tokenizer, captions: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """CLIP-text features: mean over each image's captions of the normalised projected tokens.

    Parameters
    ----------
    model : transformers.CLIPModel
    tokenizer : transformers.CLIPTokenizer
    captions : array of shape (n, k), str
        ``''`` marks a missing caption; see :func:`image_captions`.
    batch_size : int
        Captions per forward pass (results do not depend on it beyond float rounding).

    Returns
    -------
    array of shape (n, 77, projection_dim), float32
    """
    caps = check_captions(captions)
    per_image = [image_captions(row) for row in caps]
    flat = [c for cs in per_image for c in cs]
    parts = [_encode_text(model, tokenizer, flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)]
    z = torch.cat(parts) if parts else torch.zeros(0, MAX_TOKENS, model.config.projection_dim)
    out, start = [], 0
    for cs in per_image:
        out.append(z[start:start + len(cs)].double().mean(0))
        start += len(cs)
    if not out:
        return np.zeros((0, MAX_TOKENS, model.config.projection_dim), np.float32)
    return torch.stack(out).float().numpy()


def clip_text_uncond(model, tokenizer) -> np.ndarray:
    """The unconditional text context of stage 2: the features of the empty caption ``''``.

    Returns
    -------
    array of shape (77, projection_dim), float32
    """
    return _encode_text(model, tokenizer, [""])[0].numpy()


# --------------------------------------------------------------------------- vision
def check_images(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images has shape {arr.shape} and dtype {arr.dtype}; expected (n, height, width, 3) "
                         f"uint8 RGB stimuli (NSD: 425 × 425); add a batch axis with images[None] for one image")
    return arr


def _pool_map(fn: Callable[[np.ndarray], np.ndarray], items: np.ndarray, out: np.ndarray,
              workers: int | None) -> np.ndarray:
    """``out[i] = fn(items[i])`` on a thread pool (PIL resizes and large NumPy ops release the GIL)."""
    n_workers = max(1, min(len(items), workers or min(8, os.cpu_count() or 1)))
    if n_workers == 1:
        for i, item in enumerate(items):
            out[i] = fn(item)
        return out

    def one(i: int) -> None:
        out[i] = fn(items[i])

    with ThreadPoolExecutor(n_workers) as pool:
        list(pool.map(one, range(len(items))))
    return out


def _signed_512_one(img: np.ndarray) -> np.ndarray:
    big = Image.fromarray(img).resize((RESIZE_SIDE, RESIZE_SIDE), Image.Resampling.BILINEAR)
    return (np.asarray(big, np.float32) / np.float32(255)) * np.float32(2) - np.float32(1)


def signed_512(images: np.ndarray, workers: int | None = None) -> np.ndarray:
    """Step 1 of §2.3: PIL bilinear resize to 512², ``x / 255`` in float32, then ``× 2 − 1``.

    Parameters
    ----------
    images : array of shape (n, height, width, 3), uint8
    workers : int, optional
        Threads, one image each (default: ``min(8, cpu_count)``); the result does not depend on it.

    Returns
    -------
    array of shape (n, 512, 512, 3), float32 in [−1, 1]
    """
    arr = check_images(images)
    out = np.empty((len(arr), RESIZE_SIDE, RESIZE_SIDE, 3), np.float32)
    return _pool_map(_signed_512_one, arr, out, workers)


def _processor_one(signed: np.ndarray) -> np.ndarray:
    unit = (signed + np.float32(1)) / np.float32(2)
    pil = Image.fromarray((unit * np.float32(255)).astype(np.uint8))
    w, h = pil.size
    short, long = min(w, h), max(w, h)
    if short != VISION_SIDE:
        new_long = int(VISION_SIDE * long / short)
        size = (VISION_SIDE, new_long) if w <= h else (new_long, VISION_SIDE)
        pil = pil.resize(size, Image.Resampling.BICUBIC)
    w, h = pil.size
    left, top = int((w - VISION_SIDE + 1) * 0.5), int((h - VISION_SIDE + 1) * 0.5)
    pil = pil.crop((left, top, left + VISION_SIDE, top + VISION_SIDE))
    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    return ((np.asarray(pil, np.float32) / np.float32(255) - mean) / std).transpose(2, 0, 1)


def _processor_steps(signed: np.ndarray, workers: int | None = None) -> torch.Tensor:
    """Steps 2–3 of §2.3 on (n, H, W, 3) float32 in [−1, 1] → (n, 3, 224, 224) float32.

    ``(x + 1) / 2`` → ``× 255`` → uint8 by truncation (not rounding: 127.5 → 127) → PIL →
    shortest side to 224 (bicubic; the long side ``int(224 · long / short)``; skipped when
    already 224) → centre crop 224 (offset ``int((side − 224 + 1) / 2)``) → ``÷ 255`` →
    ``(x − mean) / std`` with CLIP's mean and std, all in float32.
    """
    out = np.empty((len(signed), 3, VISION_SIDE, VISION_SIDE), np.float32)
    return torch.from_numpy(_pool_map(_processor_one, signed, out, workers))


def clip_vision_preprocess(images: np.ndarray, workers: int | None = None) -> torch.Tensor:
    """The full §2.3 preprocessing chain of Brain-Diffuser's CLIP-vision features.

    uint8 stimulus (any side) → PIL bilinear 512² → [0, 1] → ×2−1 → (x+1)/2 → ×255 → uint8
    by truncation → PIL bicubic shortest side 224 → centre crop 224 → ÷255 → CLIP
    mean/std normalisation.  The float32 round trip through [−1, 1] is kept on purpose:
    it moves some pixels down one grey level before the truncation, as in the original.
    Images are processed independently on ``workers`` threads (default ``min(8, cpu_count)``),
    one image at a time, so a GPU worker is not held back by a single-threaded resize.

    Parameters
    ----------
    images : array of shape (n, height, width, 3), uint8
    workers : int, optional

    Returns
    -------
    Tensor of shape (n, 3, 224, 224), float32
    """
    arr = check_images(images)
    out = np.empty((len(arr), 3, VISION_SIDE, VISION_SIDE), np.float32)
    return torch.from_numpy(_pool_map(lambda img: _processor_one(_signed_512_one(img)), arr, out, workers))


@torch.no_grad()
def clip_vision_features(model, pixel_values: torch.Tensor) -> np.ndarray:
    """Vision tokens: ``post_layernorm`` and ``visual_projection`` on all tokens, ÷ ‖projected CLS‖.

    Parameters
    ----------
    model : transformers.CLIPModel
    pixel_values : Tensor of shape (n, 3, 224, 224)
        From :func:`clip_vision_preprocess`.

    Returns
    -------
    array of shape (n, 257, projection_dim), float32
    """
    px = pixel_values.to(device=_device(model), dtype=_model_dtype(model))
    hidden = model.vision_model(pixel_values=px).last_hidden_state
    z = model.visual_projection(model.vision_model.post_layernorm(hidden))
    z = z / torch.linalg.vector_norm(z[:, :1], dim=-1, keepdim=True)
    return z.float().cpu().numpy()


def clip_vision_batches(model, images: np.ndarray, batch_size: int, workers: int | None = None):
    """:func:`clip_vision_features` of ``images`` a batch at a time, preprocessing the next batch meanwhile.

    The §2.3 chain runs on CPU threads while the tower runs on the model's device, so on a GPU
    the slower of the two sets the pace instead of their sum.  Yields (batch, 257, d) float32.
    """
    starts = range(0, len(images), batch_size)
    with ThreadPoolExecutor(1) as ahead:
        pending = ahead.submit(clip_vision_preprocess, images[:batch_size], workers) if len(images) else None
        for start in starts:
            pixels = pending.result()
            nxt = start + batch_size
            pending = ahead.submit(clip_vision_preprocess, images[nxt:nxt + batch_size], workers) \
                if nxt < len(images) else None
            yield clip_vision_features(model, pixels)


def clip_vision_uncond(model) -> np.ndarray:
    """The unconditional vision context of stage 2 (REFERENCE §4.2 step 6).

    Brain-Diffuser passes a zero (1, 3, 224, 224) tensor in [−1, 1] to ``clip_encode_vision``,
    which maps it with (x+1)/2 to a uniform 0.5 image and sends it through the CLIP
    processor: ×255 → 127 (truncation) → normalisation.  This function runs those same
    steps (:func:`_processor_steps` on zeros; the resize and crop are no-ops at 224²), so
    the tower sees a uniform grey of 127/255, not the raw zero tensor.

    Returns
    -------
    array of shape (257, projection_dim), float32
    """
    zeros = np.zeros((1, VISION_SIDE, VISION_SIDE, 3), np.float32)
    return clip_vision_features(model, _processor_steps(zeros))[0]
