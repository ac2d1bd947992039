"""The feature-extractor registry: name → factory (imported lazily, so torch-free stages stay light).

Every factory takes ``weights``, ``storage_options``, ``tiny``, ``device``, ``dtype``,
``batch_size`` and its own options, and returns an object with ``name``, ``input``
(``"images"`` or ``"captions"``), ``feature_shape``, ``feature_dims``,
``random_weights``, ``attrs()`` and ``extract(batch, image_ids, seed)``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

#: extractor name → "module:factory"
EXTRACTORS: dict[str, str] = {
    "pixels": "fmri2img.models.pixels:make_pixels_extractor",
    "vdvae": "fmri2img.models.vdvae:make_vdvae_extractor",
    "clip-text": "fmri2img.models.clip:make_clip_text_extractor",
    "clip-vision": "fmri2img.models.clip:make_clip_vision_extractor",
}

#: which entry of the [weights] configuration section each extractor loads
WEIGHTS_KEY: dict[str, str] = {"vdvae": "vdvae", "clip-text": "clip", "clip-vision": "clip"}


class ExtractorError(ValueError):
    """An unknown extractor or option; the message lists what is available."""


def factory(name: str) -> Callable[..., Any]:
    """The factory function of extractor ``name``."""
    try:
        target = EXTRACTORS[name]
    except KeyError:
        raise ExtractorError(f"unknown feature extractor {name!r}; available: {sorted(EXTRACTORS)}") from None
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ExtractorError(f"feature extractor {name!r} is not available in this installation ({exc})") from None


def check_options(name: str, options: dict[str, Any], where: str = "features") -> None:
    """Refuse options the factory of ``name`` does not take, naming them and the valid ones."""
    params = inspect.signature(factory(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ExtractorError(f"{where}.{name}: unknown option(s) {unknown}; valid: {sorted(params)}")


def build(name: str, **options: Any) -> Any:
    """Build extractor ``name`` with ``options`` (validated)."""
    check_options(name, options)
    return factory(name)(**options)
