"""The torch backend: the ridge math of :mod:`.solvers` and :mod:`._blocks` on one torch
device (``BlockRidge(device="cuda")``, ``"cuda:1"``, ``"cpu"``, ...).

Imported only when a ``device`` is given. It keeps the NumPy path's numerics: the Gram
matrix is a product in the compute dtype (float32 by default) stored as float64; the
Cholesky factors (or the eigendecomposition, in ``eigh_dtype``) and the solves that
build the operators are float64; each target block is moved to the device, checked for
NaN/inf, centred, multiplied by its operator and calibrated there, and comes back as
NumPy in the compute dtype. Float32 products need torch's default "highest" matmul
precision; TF32 is reported once as a warning.

Device memory: the standardised training fMRI, the factor and the operators stay on the
device; block tasks take one lock per device and process (:func:`device_lock`), so one
target block at a time sits there while the other Dask threads read the next blocks.

Dask graphs hold NumPy only: the operators and the factor that block tasks take pickle
as NumPy arrays and move to the device on first use in each process, so the same graphs
run under a distributed scheduler without a GPU.
"""

from __future__ import annotations

import logging
import threading
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import torch

from . import _blocks
from ._validation import DeviceUnavailableError
from .calibration import CALIBRATIONS
from .selection import gcv_from_projection, loo_from_projection
from .solvers import CholeskyFactor, SpectralFactor, choose_form, factor_kind, factorize, loo_operator

logger = logging.getLogger(__name__)

__all__ = ["TorchBackend", "resolve_device", "device_lock", "TorchCholeskyFactor",
           "TorchSpectralFactor"]

_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
_WARNED: set[str] = set()


# ------------------------------------------------------------------------ devices
def resolve_device(device: Any) -> torch.device:
    """Check a ``device`` parameter and return it as a torch device (``"cuda"`` → ``cuda:N``).

    Raises
    ------
    DeviceUnavailableError
        Not a torch device string, CUDA absent or index out of range, or a device that
        cannot hold the float64 factorisation (Apple MPS).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceUnavailableError(
            f"device={device!r} is not a torch device ({exc}). Use None (NumPy), 'cpu', "
            "'cuda' or 'cuda:N'."
        ) from None
    if dev.type == "cuda":
        return _cuda_device(device, dev)
    if dev.type != "cpu":
        try:
            torch.zeros(1, dtype=torch.float64, device=dev)
        except (RuntimeError, TypeError) as exc:
            raise DeviceUnavailableError(
                f"device={device!r} cannot hold the float64 tensors the factorisation needs "
                f"({exc}). Use device='cpu' or 'cuda', or device=None (NumPy)."
            ) from None
    return dev


def _cuda_device(device: Any, dev: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r}: CUDA is not available on this machine (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). Use "
            "device=None (NumPy) or device='cpu' (torch on the CPU)."
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < count:
        raise DeviceUnavailableError(
            f"device={device!r}: this machine has {count} CUDA device(s), numbered 0 to "
            f"{count - 1}. Use device='cuda' (the current one) or 'cuda:0'."
        )
    if _tf32() and "tf32" not in _WARNED:
        _WARNED.add("tf32")
        logger.warning(
            "torch runs float32 matmuls on CUDA in TF32: the ridge products lose about 3 "
            "significant digits. Set torch.backends.cuda.matmul.fp32_precision = 'ieee' (or "
            "call torch.set_float32_matmul_precision('highest')) before fitting to silence this.")
    return torch.device("cuda", index)


def _tf32() -> bool:
    """Whether CUDA float32 matmuls use TF32 (new ``fp32_precision`` API, else the legacy flag)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; the legacy getter raises after it is set
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def device_lock(device: str) -> threading.Lock:
    """The lock that block tasks on ``device`` hold while they use it (one per process)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(device), threading.Lock())


def as_tensor(a: Any, device: Any) -> torch.Tensor:
    """``a`` (NumPy or torch) on ``device``; no copy for a NumPy array and device "cpu"."""
    if isinstance(a, torch.Tensor) or np.asarray(a).flags.writeable:
        return torch.as_tensor(a, device=device)
    with warnings.catch_warnings():  # read-only input (e.g. a memory map): never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(a, device=device)


def to_numpy(a: Any) -> np.ndarray:
    """A tensor (any device) or array as a NumPy array."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


class _Resident:
    """Array attributes (named in ``_arrays``) that live on ``self.device`` as tensors.

    :meth:`state` and pickles (Dask graphs, distributed workers) hold them as NumPy;
    :meth:`on_device` moves one back on first use. Block tasks call it under
    :func:`device_lock`.
    """

    _arrays: tuple[str, ...] = ()

    def on_device(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if not isinstance(value, torch.Tensor):
            value = as_tensor(value, self.device)
            setattr(self, name, value)
        return value

    def state(self) -> dict[str, np.ndarray]:
        return {name: to_numpy(getattr(self, name)) for name in self._arrays}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, **self.state()}

    def __dask_tokenize__(self) -> tuple:
        token = self.__dict__.setdefault("_token", uuid.uuid4().hex)
        return type(self).__name__, token, np.asarray(getattr(self, "alphas", ())).tolist()


class Operand(_Resident):
    """An operator stack of shape (n_alphas, r, n_samples) for the block tasks."""

    _arrays = ("values",)

    def __init__(self, values: torch.Tensor, device: str) -> None:
        self.values, self.device = values, device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)


# ------------------------------------------------------------------- factors
@dataclass
class TorchCholeskyFactor(_Resident, CholeskyFactor):
    """:class:`~.solvers.CholeskyFactor` with ``chols`` (float64) on ``device``."""

    device: str = "cpu"
    _arrays = ("chols",)

    @classmethod
    def build(cls, G: torch.Tensor, alphas: np.ndarray, form: str) -> "TorchCholeskyFactor":
        """Factorise ``G + a I`` for each alpha; ``G`` (float64 tensor) is overwritten."""
        chols = []
        for i, a in enumerate(alphas):
            A = G if i == len(alphas) - 1 else G.clone()
            A.diagonal().add_(float(a))
            chols.append(torch.linalg.cholesky(A))
            del A
        stacked = chols[0][None] if len(chols) == 1 else torch.stack(chols)
        return cls(form, np.asarray(alphas, dtype=np.float64), stacked, device=str(G.device))

    def operator(self, Z: torch.Tensor | None, Xc: torch.Tensor) -> torch.Tensor:
        """``M[a] = Z Xcᵀ (K + alphas[a] I)^-1`` on the device (see the NumPy factor)."""
        chols = self.on_device("chols")
        r = Xc.shape[1] if Z is None else Z.shape[0]
        out = Xc.new_empty((len(self.alphas), r, Xc.shape[0]))
        if self.form == "dual":
            KzT = (Xc if Z is None else Xc @ Z.T).double()  # (Z Xcᵀ)ᵀ
            for i, c in enumerate(chols):
                out[i] = torch.cholesky_solve(KzT, c).T
            return out
        Zt = torch.eye(r, dtype=torch.float64, device=Xc.device) if Z is None else Z.T.double()
        for i, c in enumerate(chols):
            out[i] = (Xc @ torch.cholesky_solve(Zt, c).to(Xc.dtype)).T
        return out


@dataclass
class TorchSpectralFactor(_Resident, SpectralFactor):
    """:class:`~.solvers.SpectralFactor` with ``U`` and ``s`` on ``device``."""

    device: str = "cpu"
    _arrays = ("U", "s")

    @classmethod
    def build(cls, G: torch.Tensor, alphas: np.ndarray, form: str, Xc: torch.Tensor,
              dtype: Any = np.float64) -> "TorchSpectralFactor":
        s, V = torch.linalg.eigh(G.to(_DTYPES[np.dtype(dtype)]))
        s = s.double().clamp_min(0.0)
        if form == "dual":
            U = V.to(Xc.dtype)
        else:
            keep = s > s.max() * len(s) * np.finfo(dtype).eps
            s = s[keep]
            U = (Xc @ V[:, keep].to(Xc.dtype)) / s.sqrt().to(Xc.dtype)
        return cls(form, np.asarray(alphas, dtype=np.float64), U, s, device=str(G.device))

    def operator(self, Z: torch.Tensor | None, Xc: torch.Tensor) -> torch.Tensor:
        """``M[a] = Z Xcᵀ (K + alphas[a] I)^-1`` on the device (see the NumPy factor)."""
        U, s = self.on_device("U"), self.on_device("s")
        KzU = ((Xc.T if Z is None else Z @ Xc.T) @ U).double()
        out = Xc.new_empty((len(self.alphas), KzU.shape[0], Xc.shape[0]))
        for i, a in enumerate(self.alphas.tolist()):
            out[i] = (KzU / (s + a)).to(Xc.dtype) @ U.T
        return out


#: Factorisation name → builder(G, alphas, form, Xc, dtype), as solvers.FACTORIZERS.
TORCH_FACTORIZERS = {
    "cholesky": lambda G, alphas, form, Xc, dtype: TorchCholeskyFactor.build(G, alphas, form),
    "eigen": TorchSpectralFactor.build,
}
_TORCH_KIND = {CholeskyFactor: TorchCholeskyFactor, SpectralFactor: TorchSpectralFactor}


# ------------------------------------------------------------------ block tasks
def _upload(Yb: np.ndarray, device: str, block_info: dict | None) -> torch.Tensor:
    """One target block as an (n, b) tensor on ``device``; NaN/inf raise as in NumPy."""
    Y2 = np.asarray(Yb).reshape(Yb.shape[0], -1)
    Yd = as_tensor(Y2, device)
    if not bool(torch.isfinite(Yd).all()):
        _blocks._check_block(Yb, Y2, "Y", block_info)
    return Yd


def _apply(ops: torch.Tensor, aidx: np.ndarray, Y2: torch.Tensor, ybar: torch.Tensor) -> torch.Tensor:
    """``ops[alpha(col)] @ (Y2 - ybar)`` per column, float64 (as :func:`._blocks._apply`)."""
    out = Y2.new_empty((ops.shape[1], Y2.shape[1]), dtype=torch.float64)
    for a in np.unique(aidx):
        mask = aidx == a
        cols = slice(None) if mask.all() else torch.as_tensor(mask, device=Y2.device)
        M = ops[int(a)]
        Mbar = torch.outer(M.sum(axis=1, dtype=torch.float64), ybar[cols])
        out[:, cols] = (M @ Y2[:, cols]).double() - Mbar
    return out


def _centred_sumsq(Y2: torch.Tensor, ybar: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """Column sums of ``(Y2 - ybar)**2`` in float64, a few rows at a time."""
    yb = ybar.to(Y2.dtype)
    return sum(((Y2[i:i + rows] - yb) ** 2).sum(axis=0, dtype=torch.float64)
               for i in range(0, Y2.shape[0], rows))


def stream_block(Yb: np.ndarray, aidx_b: np.ndarray, ops: Operand, add_mean: bool,
                 calibration: str, loo_ops: Any, dtype: Any,
                 block_info: dict | None = None) -> np.ndarray:
    """:func:`._blocks.stream_block` on ``ops.device`` (``loo_ops``: (Operand, rows) or None)."""
    a = np.asarray(aidx_b).ravel()
    with device_lock(ops.device):
        Y2 = _upload(Yb, ops.device, block_info).to(_DTYPES[np.dtype(dtype)])
        ybar = Y2.mean(axis=0, dtype=torch.float64)
        P = _apply(ops.on_device("values"), a, Y2, ybar)
        if add_mean:
            P += ybar
        if calibration != "none":

            def loo() -> torch.Tensor:
                Q, rows = loo_ops
                Yr = Y2[torch.as_tensor(rows, device=Y2.device)].double()
                return Yr - _apply(Q.on_device("values"), a, Y2, ybar)

            y_std = (_centred_sumsq(Y2, ybar) / Y2.shape[0]).sqrt()
            P = CALIBRATIONS[calibration](P, ybar, y_std, loo)
        out = to_numpy(P.to(Y2.dtype))
    return out.reshape((out.shape[0],) + Yb.shape[1:])


def _scores(factor: "TorchSpectralFactor", Y2: torch.Tensor, m: np.ndarray,
            criterion: str) -> torch.Tensor:
    """(n_alphas, m.sum()) scores of the masked columns of a block on the device."""
    U = factor.on_device("U")
    factor.on_device("s")  # read as factor.s by the scorers
    n, k = Y2.shape[0], len(factor.alphas)
    if m.all() and criterion == "gcv":  # one projection of the block, no copy of it
        Y2 = Y2.to(U.dtype)
        ybar = Y2.mean(axis=0, dtype=torch.float64)
        proj = _apply(U.T[None], np.zeros(m.size, int), Y2, ybar)
        out = proj.new_empty((k, m.size))
        return gcv_from_projection(factor, proj, _centred_sumsq(Y2, ybar), n, out)
    Ys = Y2[:, torch.as_tensor(m, device=Y2.device)].double()
    Yc = (Ys - Ys.mean(axis=0)).to(U.dtype)
    proj = (U.T @ Yc).double()
    out = proj.new_empty((k, Yc.shape[1]))
    if criterion == "gcv":
        return gcv_from_projection(factor, proj, (Yc.double() ** 2).sum(axis=0), n, out)
    U64 = U.double()
    return loo_from_projection(factor, U64, proj, Yc.double() - U64 @ proj, out)


def score_block(Yb: np.ndarray, mask_b: np.ndarray, factor: "TorchSpectralFactor",
                criterion: str, block_info: dict | None = None) -> np.ndarray:
    """:func:`._blocks.score_block` on ``factor.device``."""
    m = np.asarray(mask_b).ravel()
    out = np.full((len(factor.alphas), m.size), np.nan)
    if not m.any():
        _blocks._check_block(Yb, np.asarray(Yb).reshape(Yb.shape[0], -1), "Y", block_info)
    else:
        with device_lock(factor.device):
            out[:, m] = to_numpy(_scores(factor, _upload(Yb, factor.device, block_info), m, criterion))
    return out.reshape((out.shape[0],) + Yb.shape[1:])


# ------------------------------------------------------------------- backend
class TorchBackend:
    """The backend operations (see :mod:`.backends`) in torch on one device."""

    def __init__(self, device: Any) -> None:
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)

    def asarray(self, X: Any) -> torch.Tensor:
        return as_tensor(X, self.torch_device)

    @staticmethod
    def copy(G: torch.Tensor) -> torch.Tensor:
        return G.clone()

    @staticmethod
    def gram(Xc: torch.Tensor, form: str) -> torch.Tensor:
        """Gram matrix in the compute dtype of ``Xc``, as float64 (as :func:`.solvers.gram`)."""
        return (Xc @ Xc.T if form == "dual" else Xc.T @ Xc).double()

    def factorize(self, Xc: torch.Tensor, alphas: Any, method: str = "cholesky",
                  form: str = "auto", eigh_dtype: Any = np.float64,
                  G: torch.Tensor | None = None) -> Any:
        """:func:`.solvers.factorize` on the device."""
        form = choose_form(*Xc.shape) if form == "auto" else form
        G = self.gram(Xc, form) if G is None else G
        return factorize(Xc, alphas, method, form, eigh_dtype, G, factorizers=TORCH_FACTORIZERS)

    def adopt(self, factor: Any) -> Any:
        if isinstance(factor, _Resident) and factor.device == self.device:
            return factor
        kind = _TORCH_KIND[factor_kind(factor)]
        return kind(factor.form, factor.alphas, **factor.state(), device=self.device)

    def operator(self, factor: Any, Z: Any, Xc: torch.Tensor) -> torch.Tensor:
        return factor.operator(None if Z is None else self.asarray(Z), Xc)

    def loo_operator(self, factor: Any, Xc: torch.Tensor, rows: np.ndarray, dtype: Any) -> torch.Tensor:
        r = torch.as_tensor(rows, device=self.torch_device)
        H = factor.operator(Xc[r], Xc).double()
        idx = torch.arange(len(rows), device=self.torch_device)
        return loo_operator(H, idx, r, Xc.shape[0]).to(_DTYPES[np.dtype(dtype)])

    def stream(self, Yb: da.Array, aidx: da.Array, ops: torch.Tensor, add_mean: bool,
               calibration: str = "none", loo_ops: Any = None, dtype: Any = np.float32) -> da.Array:
        """:func:`._blocks.stream` with the block task :func:`stream_block`."""
        loo = None if loo_ops is None else (Operand(loo_ops[0], self.device), loo_ops[1])
        return _blocks.stream(Yb, aidx, Operand(ops, self.device), add_mean, calibration, loo,
                              dtype, block=stream_block)

    @staticmethod
    def score(Yb: da.Array, mask: da.Array, factor: Any, criterion: str) -> da.Array:
        """:func:`._blocks.score` with the block task :func:`score_block`."""
        return _blocks.score(Yb, mask, factor, criterion, block=score_block)
