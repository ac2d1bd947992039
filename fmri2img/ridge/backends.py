"""Where the heavy ridge math runs: NumPy/SciPy in this process, or torch on a device.

A backend supplies the few operations :class:`~fmri2img.ridge.BlockRidge` needs, so the
estimator has no per-library branches:

- ``asarray(X)``: X as the backend computes with it (a device copy for torch);
- ``gram(Xc, form)``: the float64 Gram matrix (:func:`.solvers.gram`);
- ``factorize(Xc, alphas, method, form, eigh_dtype, G)``: a factor of it
  (:func:`.solvers.factorize`); ``copy(G)`` copies a Gram matrix (factorising overwrites it);
- ``adopt(factor)``: this backend's factor, made from any backend's one;
- ``operator(factor, Z, Xc)``: the operator stack ``M`` (``Z`` may be NumPy);
- ``loo_operator(factor, Xc, rows, dtype)``: the LOO-calibration operator
  (:func:`.solvers.loo_operator`);
- ``stream(...)``, ``score(...)``: lazy Dask results over target blocks (:mod:`._blocks`).

``device=None`` gives the NumPy backend, the reference path; a torch device string gives
:class:`fmri2img.ridge._torch.TorchBackend`, and torch is imported only then.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import numpy as np

from . import _blocks
from ._validation import DeviceUnavailableError
from .solvers import CholeskyFactor, SpectralFactor, factor_kind, factorize, gram, loo_operator

logger = logging.getLogger(__name__)

__all__ = ["NumpyBackend", "get_backend", "factor_kind"]




class NumpyBackend:
    """NumPy/SciPy in this process (``device=None``): the functions of :mod:`.solvers`
    and :mod:`._blocks` unchanged."""

    device = None
    gram = staticmethod(gram)
    factorize = staticmethod(factorize)
    stream = staticmethod(_blocks.stream)
    score = staticmethod(_blocks.score)

    @staticmethod
    def asarray(X: np.ndarray) -> np.ndarray:
        return X

    @staticmethod
    def copy(G: np.ndarray) -> np.ndarray:
        return G.copy()

    @staticmethod
    def adopt(factor: Any) -> CholeskyFactor | SpectralFactor:
        kind = factor_kind(factor)
        return factor if type(factor) is kind else kind(factor.form, factor.alphas, **factor.state())

    @staticmethod
    def operator(factor: Any, Z: np.ndarray | None, Xc: np.ndarray) -> np.ndarray:
        return factor.operator(Z, Xc)

    @staticmethod
    def loo_operator(factor: Any, Xc: np.ndarray, rows: np.ndarray, dtype: Any) -> np.ndarray:
        H = factor.operator(Xc[rows], Xc).astype(np.float64)
        return loo_operator(H, np.arange(len(rows)), rows, Xc.shape[0]).astype(dtype)


_NUMPY = NumpyBackend()


def get_backend(device: Any) -> Any:
    """The backend for a ``device`` parameter (None: NumPy; else a torch device string).

    Raises
    ------
    DeviceUnavailableError
        torch is not installed, the string is not a torch device, or the device is
        absent (e.g. "cuda" on a machine without CUDA).
    """
    if device is None:
        return _NUMPY
    if importlib.util.find_spec("torch") is None:
        raise DeviceUnavailableError(
            f"device={device!r} needs PyTorch, which is not installed in this environment: "
            "install torch, or use device=None (NumPy/SciPy)."
        )
    from ._torch import TorchBackend

    return TorchBackend(device)
