"""Safe weight loading from a local path or an fsspec URL, with clear architecture errors.

Nothing here downloads from a model hub: the caller names the file (the
``weights`` section of the configuration).  Loading is safe: ``.safetensors``
files through safetensors, anything else through ``torch.load(weights_only=True)``
(no arbitrary pickles).  A state dict that does not fit a module gets one error
listing the missing, unexpected and misshapen keys.
"""
from __future__ import annotations

from fmri2img.storage import secrets

import io
import logging
from typing import Any, Mapping

import torch

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not match the architecture."""


def _open_bytes(url: str, storage_options: Mapping[str, Any] | None) -> bytes:
    from fmri2img.storage import urls  # URLs are parsed in storage/ only

    fs, path = urls.filesystem(url, dict(storage_options or {}) or None)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise WeightsError(
            f"weights file {secrets.redact(url)} not found: set the path in the [weights] section of the "
            f"configuration (nothing is downloaded at run time); `fmri2img weights check CONFIG` lists what is missing"
        ) from None


def load_state_dict(url: str, storage_options: Mapping[str, Any] | None = None, *,
                    key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``url`` (local path or fsspec URL).

    Parameters
    ----------
    url : str
        ``.safetensors`` or a torch checkpoint (``.pt``, ``.pth``, ``.th``, ``.bin``).
    storage_options : mapping, optional
        fsspec options (credentials) for remote URLs.
    key : str, optional
        When the checkpoint is a dict that wraps the state dict (``{"state_dict": ...}``),
        the entry to take.  Tried automatically for ``state_dict`` and ``model``.

    Returns
    -------
    dict of str to Tensor
    """
    from fmri2img.storage import urls

    raw = _open_bytes(url, storage_options)
    name = secrets.redact(url)
    if str(url).endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        try:
            return dict(load_safetensors(raw))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise WeightsError(f"{name} is not a readable safetensors file ({exc}); download it again") from None
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors vary
        raise WeightsError(
            f"{name} could not be loaded safely with torch.load(weights_only=True) ({type(exc).__name__}: {exc}); "
            f"convert it to safetensors or a plain state dict of tensors"
        ) from None
    for k in ([key] if key else []) + ["state_dict", "model"]:
        if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
            obj = obj[k]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{name} does not hold a state dict of tensors (found {type(obj).__name__})")
    return obj


def check_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, *,
                     strict: bool = True, ignore: tuple[str, ...] = ()) -> None:
    """Raise :class:`WeightsError` unless ``state`` fits ``module`` key for key and shape for shape.

    Parameters
    ----------
    module : torch.nn.Module
    state : mapping of str to Tensor
    what : str
        Names the weights in the message (e.g. ``"VDVAE imagenet64 (imagenet64-iter-1600000-model-ema.th)"``).
    strict : bool
        When False, keys present in ``state`` but not in the module are allowed.
    ignore : tuple of str
        Key prefixes to ignore on both sides.
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith(ignore or ("\0",))}
    found = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(ignore or ("\0",))}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected)) if strict else []
    misshapen = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or unexpected or misshapen):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if misshapen:
        parts.append(f"{len(misshapen)} misshapen: " + _few([f"{k} {found[k]} (expected {expected[k]})"
                                                             for k in misshapen]))
    raise WeightsError(
        f"the weights for {what} do not match the architecture: " + "; ".join(parts)
        + ". Check that the file is the right checkpoint for this model and configuration"
    )


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", … (+{len(items) - n} more)" if len(items) > n else "")


def load_into(module: torch.nn.Module, url: str, what: str, storage_options: Mapping[str, Any] | None = None,
              **kwargs: Any) -> torch.nn.Module:
    """Load ``url`` into ``module`` after :func:`check_state_dict`; return the module."""
    state = load_state_dict(url, storage_options)
    check_state_dict(module, state, what, **kwargs)
    module.load_state_dict(state, strict=kwargs.get("strict", True))
    logger.info("loaded %s", what)
    return module


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA, Apple MPS or CPU, chosen once per worker; ``preference`` overrides ("cpu", "cuda", "mps")."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def image_generator(seed: int, image_id: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator seeded from (run seed, image id): results independent of batching and workers."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(image_id) * 7_919 + 17) % (2**63 - 1))
    return g
