"""The feature-extractor registry: name → factory (imported lazily, so torch-free stages stay light).

A configured extractor has a name (its ``features/<name>`` group) and a kind (the registry
entry that builds it): the ``kind`` option, or the name itself.  So one configuration can hold
two of a kind side by side, e.g. ``vdvae`` (31 blocks) and ``vdvae-10`` (``kind = "vdvae"``,
10 blocks, the seed paper's reduced VDVAE).

Every factory takes ``weights`` (a local path or opened weights, never a URL), ``tiny``,
``device``, ``dtype``, ``batch_size`` and its own options, and returns an object with ``name``, ``input``
(``"images"`` or ``"captions"``), ``feature_shape``, ``feature_dims``,
``random_weights``, ``attrs()`` and ``extract(batch, image_ids, seed)``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping

#: extractor name → "module:factory"
EXTRACTORS: dict[str, str] = {
    "pixels": "fmri2img.models.pixels:make_pixels_extractor",
    "vdvae": "fmri2img.models.vdvae:make_vdvae_extractor",
    "clip-text": "fmri2img.models.clip_extract:make_clip_text_extractor",
    "clip-vision": "fmri2img.models.clip_extract:make_clip_vision_extractor",
}

#: which entry of the [weights] configuration section each extractor loads
WEIGHTS_KEY: dict[str, str] = {"vdvae": "vdvae", "clip-text": "clip", "clip-vision": "clip"}


#: options every extractor takes besides its factory's: its kind, and the fsspec options of its weights URL
#: (the stage opens the URL with them, :func:`fmri2img.storage.weights.opened_options`; factories never see URLs)
SHARED_OPTIONS = ("kind", "storage_options")


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


def kind_of(name: str, options: Mapping[str, Any] | None, where: str = "features") -> str:
    """The registered kind that builds extractor ``name``: its ``kind`` option, else the name itself.

    Raises
    ------
    ExtractorError
        When the kind is not registered (the message lists the kinds and how to name a second
        extractor of a known kind).
    """
    kind = (options or {}).get("kind", name)
    if isinstance(kind, str) and kind in EXTRACTORS:
        return kind
    if "kind" in (options or {}):
        raise ExtractorError(f"{where}.{name}.kind = {kind!r} is not a feature extractor; expected one of "
                             f"{sorted(EXTRACTORS)}")
    raise ExtractorError(f"{where}.{name}: unknown feature extractor {name!r}; available: {sorted(EXTRACTORS)}. "
                         f"To add a second extractor of a known kind under another name, give its table a kind, "
                         f"e.g. [{where}.{name}] kind = \"vdvae\"")


def check_options(name: str, options: Mapping[str, Any], where: str = "features") -> None:
    """Refuse an unknown kind, and options the factory of the kind does not take, naming them and the valid ones."""
    kind = kind_of(name, options, where)
    params = inspect.signature(factory(kind)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params) - set(SHARED_OPTIONS))
    if unknown:
        raise ExtractorError(f"{where}.{name}: unknown option(s) {unknown}; valid: {sorted({*params, *SHARED_OPTIONS})}")


def build(name: str, **options: Any) -> Any:
    """Build extractor ``name`` with ``options`` (validated; ``kind`` picks the factory, default ``name``)."""
    check_options(name, options)
    kind = options.pop("kind", name)
    return factory(kind)(**options)
