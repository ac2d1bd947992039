"""Shared building and weight loading for the evaluation networks.

Random-weight networks are built under a forked, seeded torch RNG so that building
one never disturbs the caller's random state.  Published weight files are read
through :mod:`fmri2img.models.weights` (safe loading, path or fsspec URL) and checked
key by key and shape by shape before they are loaded.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import torch

from fmri2img.models.weights import check_state_dict, load_state_dict

logger = logging.getLogger(__name__)


def seeded_build(factory: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Call ``factory`` with the torch RNG seeded to ``seed``, leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return factory()


def fill_bn_counters(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the module's ``num_batches_tracked`` buffers where an old checkpoint lacks them.

    Checkpoints saved before PyTorch 0.4.1 (torchvision's Inception-v3 and ResNet-50 files)
    have no such counters; they only matter when training with momentum=None.
    """
    state = dict(state)
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    return state


def load_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str,
                 ignore: tuple[str, ...] = ()) -> torch.nn.Module:
    """Load ``state`` into ``module`` after a strict key/shape check; return the module in eval mode.

    Parameters
    ----------
    module : torch.nn.Module
    state : mapping of str to Tensor
        With the module's key names (rename checkpoint keys first).
    what : str
        Names the network and weight file in error messages.
    ignore : tuple of str
        Key prefixes left out of the check; absent ones keep their initial values.

    Raises
    ------
    fmri2img.models.weights.WeightsError
        Listing missing, unexpected and misshapen keys.
    """
    state = fill_bn_counters(module, dict(state))
    check_state_dict(module, state, what, ignore=ignore)
    module.load_state_dict(state, strict=not ignore)
    logger.info("loaded %s", what)
    return module.eval()


def finish(module: torch.nn.Module, weights: Any, what: str) -> torch.nn.Module:
    """Load the state-dict file ``weights`` (a local path or opened weights) into ``module`` with :func:`load_checked`;
    None keeps the seeded random initialisation.  Returns the module in eval mode."""
    if weights is None:
        return module.eval()
    return load_checked(module, load_state_dict(weights), what)


def unknown_tap(net: str, tap: str, taps: Mapping[str, Any] | tuple[str, ...]) -> ValueError:
    """The error for a tap name a network does not have."""
    return ValueError(f"{net} has no tap {tap!r}: use one of {list(taps)}")
