"""Safe weight loading from opened weights files, with clear architecture errors.

Models never open a URL: they take a local path or an opened weights object, anything with a
``name`` (shown in messages) and ``open()`` (a binary file object) and, for folder formats,
``local_dir()`` (a context manager giving a local directory). The stages make those objects
with :func:`fmri2img.storage.weights.open_weights` from the ``[weights]`` section's URLs.

Nothing here downloads from a model hub: the caller names the file. Loading is safe:
``.safetensors`` files through safetensors, anything else through
``torch.load(weights_only=True)`` (no arbitrary pickles). A state dict that does not fit a
module gets one error listing the missing, unexpected and misshapen keys.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import IO, Any, Iterator, Mapping, Protocol

import torch

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not match the architecture."""


class Weights(Protocol):
    """What loaders take: a weights file or folder, already resolved by the caller."""

    name: str

    def open(self) -> IO[bytes]: ...

    def local_dir(self, names: Any = None) -> contextlib.AbstractContextManager[str]: ...


class LocalWeights:
    """A weights file or folder on this machine's disk, named by a plain path (no URL)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        text = os.fspath(path)
        if "://" in text and not text.startswith("file://"):
            raise WeightsError(f"weights {text.split('://', 1)[0]}://... is a URL: models take a local path or "
                               f"opened weights; open it with fmri2img.storage.weights.open_weights(url, "
                               f"storage_options)")
        self.path = os.path.expanduser(text[len("file://"):] if text.startswith("file://") else text)
        self.name = self.path

    def open(self) -> IO[bytes]:
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise WeightsError(f"weights file {self.name} not found: set the path in the [weights] section of the "
                               f"configuration (nothing is downloaded at run time); `fmri2img weights check CONFIG` "
                               f"lists what is missing") from None

    @contextlib.contextmanager
    def local_dir(self, names: Any = None) -> Iterator[str]:
        yield self.path


def as_weights(weights: Any) -> Any:
    """``weights`` as an object with ``name``, ``open()`` and ``local_dir()``: a path becomes :class:`LocalWeights`."""
    if hasattr(weights, "open") and hasattr(weights, "name"):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        return LocalWeights(weights)
    raise WeightsError(f"weights must be a local path or opened weights (fmri2img.storage.weights.open_weights), "
                       f"got {type(weights).__name__}")


def weights_name(weights: Any) -> str:
    """The name to show for ``weights`` (a path, or an opened object's credential-free name)."""
    return str(getattr(weights, "name", weights))


def read_weights(weights: Any) -> bytes:
    """The bytes of a weights file (a local path or opened weights)."""
    source = as_weights(weights)
    try:
        with source.open() as f:
            return f.read()
    except FileNotFoundError as exc:
        raise WeightsError(str(exc)) from None


def load_state_dict(weights: Any, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a weights file.

    Parameters
    ----------
    weights : str, path-like or opened weights
        ``.safetensors`` or a torch checkpoint (``.pt``, ``.pth``, ``.th``, ``.bin``): a local path,
        or an object from :func:`fmri2img.storage.weights.open_weights`.
    key : str, optional
        When the checkpoint is a dict that wraps the state dict (``{"state_dict": ...}``),
        the entry to take.  Tried automatically for ``state_dict`` and ``model``.

    Returns
    -------
    dict of str to Tensor
    """
    raw = read_weights(weights)
    name = weights_name(weights)
    if name.endswith(".safetensors"):
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


def load_into(module: torch.nn.Module, weights: Any, what: str, **kwargs: Any) -> torch.nn.Module:
    """Load ``weights`` (a local path or opened weights) into ``module`` after :func:`check_state_dict`."""
    state = load_state_dict(weights)
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
