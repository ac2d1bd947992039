"""Pure ridge solvers: one Gram matrix, one factorisation per alpha, shared by all targets.

Objective (intercept handled by centring; ``Xc = X - mean(X)``, ``Yc = Y - mean(Y)``)::

    W = argmin_W ||Yc - Xc W||_F^2 + alpha ||W||_F^2
      = Xc^T (Xc Xc^T + alpha I)^-1 Yc        (dual,   n_samples <  n_features)
      = (Xc^T Xc + alpha I)^-1 Xc^T Yc        (primal, n_samples >= n_features)
    b = mean(Y) - mean(X) W

Everything downstream is expressed through one *operator*: for any row patterns
``Z`` (r × p) the matrix ``M = Z Xc^T (K + alpha I)^-1`` (r × n_samples), so that
``Z W = M Yc``. Predictions use ``Z = X_new - mean(X)``, explicit weights ``Z = I``, an
ROI pattern ``Z = pattern``. M is small; the targets are only ever streamed through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import scipy.linalg as sla

from ._validation import check_alphas, check_finite, check_n_samples

logger = logging.getLogger(__name__)

__all__ = [
    "choose_form",
    "gram",
    "CholeskyFactor",
    "SpectralFactor",
    "FACTORIZERS",
    "factorize",
    "loo_operator",
    "ridge_predict",
    "ridge_weights",
]


def choose_form(n_samples: int, n_features: int) -> str:
    """Return ``"dual"`` when ``n_samples < n_features`` (Gram n×n), else ``"primal"`` (p×p)."""
    return "dual" if n_samples < n_features else "primal"


def gram(Xc: np.ndarray, form: str) -> np.ndarray:
    """Gram matrix in the compute dtype of ``Xc``, returned as float64.

    Parameters
    ----------
    Xc : array of shape (n_samples, n_features)
        Centred (standardised) inputs.
    form : {"dual", "primal"}

    Returns
    -------
    K : array of shape (n_samples, n_samples) (dual) or (n_features, n_features) (primal)
    """
    G = Xc @ Xc.T if form == "dual" else Xc.T @ Xc
    return G.astype(np.float64, copy=False)


@dataclass
class CholeskyFactor:
    """Cholesky factors of ``G + alpha I`` for each alpha (G = K dual, or XᵀX primal).

    Attributes
    ----------
    form : {"dual", "primal"}
    alphas : array of shape (n_alphas,)
    chols : array of shape (n_alphas, m, m)
        Lower Cholesky factors, float64.
    """

    form: str
    alphas: np.ndarray
    chols: np.ndarray

    @classmethod
    def build(cls, G: np.ndarray, alphas: np.ndarray, form: str) -> "CholeskyFactor":
        """Factorise ``G + a I`` for each alpha; ``G`` (float64) is overwritten."""
        # G is overwritten by the last factor (no extra n×n copy for a single alpha);
        # G.T is a Fortran-ordered view of the symmetric G, so LAPACK works in place.
        chols = []
        for i, a in enumerate(alphas):
            A = G if i == len(alphas) - 1 else G.copy()
            A[np.diag_indices_from(A)] += a
            chols.append(sla.cholesky(A.T, lower=True, overwrite_a=True, check_finite=False))
        chols = chols[0][None] if len(chols) == 1 else np.stack(chols)
        return cls(form, np.asarray(alphas, dtype=np.float64), chols)

    def operator(self, Z: np.ndarray | None, Xc: np.ndarray) -> np.ndarray:
        """``M[a] = Z Xcᵀ (K + alphas[a] I)^-1``.

        Parameters
        ----------
        Z : array of shape (r, n_features), or None for the identity (r = n_features:
            then ``M[a] @ Yc`` are the explicit weights)
        Xc : array of shape (n_samples, n_features)

        Returns
        -------
        M : array of shape (n_alphas, r, n_samples), dtype of ``Xc``
        """
        r = Xc.shape[1] if Z is None else Z.shape[0]
        out = np.empty((len(self.alphas), r, Xc.shape[0]), dtype=Xc.dtype)
        if self.form == "dual":
            Kz = np.asarray(Xc.T if Z is None else Z @ Xc.T, dtype=np.float64)
            for i, c in enumerate(self.chols):
                out[i] = sla.cho_solve((c, True), Kz.T).T
        else:
            Zt = np.eye(r) if Z is None else np.asarray(Z, dtype=np.float64).T
            for i, c in enumerate(self.chols):
                T = sla.cho_solve((c, True), Zt).astype(Xc.dtype)
                out[i] = (Xc @ T).T
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"chols": self.chols}


@dataclass
class SpectralFactor:
    """Thin eigendecomposition of the centred kernel, ``K = U diag(s) Uᵀ``.

    ``(K + a I)^-1 = U diag(1/(s+a)) Uᵀ + (I - U Uᵀ)/a``; built from ``eigh(K)`` in the
    dual form, or from ``eigh(XᵀX) = V diag(s) Vᵀ`` and ``U = Xc V / sqrt(s)`` in the
    primal form. One decomposition serves every alpha, so a whole alpha grid is scored
    from it (see :mod:`fmri2img.ridge.selection`).

    Attributes
    ----------
    form : {"dual", "primal"}
    alphas : array of shape (n_alphas,)
    U : array of shape (n_samples, rank)
    s : array of shape (rank,)
        Non-negative eigenvalues, float64.
    """

    form: str
    alphas: np.ndarray
    U: np.ndarray
    s: np.ndarray

    @classmethod
    def build(cls, G: np.ndarray, alphas: np.ndarray, form: str, Xc: np.ndarray,
              dtype: Any = np.float64) -> "SpectralFactor":
        s, V = sla.eigh(np.asarray(G, dtype=dtype), driver="evd", overwrite_a=True)
        s = np.clip(s.astype(np.float64), 0.0, None)
        if form == "dual":
            U = V.astype(Xc.dtype, copy=False)
        else:
            keep = s > s.max() * len(s) * np.finfo(dtype).eps
            s = s[keep]
            U = (Xc @ V[:, keep].astype(Xc.dtype)) / np.sqrt(s).astype(Xc.dtype)
        return cls(form, np.asarray(alphas, dtype=np.float64), U, s)

    def operator(self, Z: np.ndarray | None, Xc: np.ndarray) -> np.ndarray:
        """``M[a] = Z Xcᵀ (K + alphas[a] I)^-1`` (see :meth:`CholeskyFactor.operator`)."""
        KzU = np.asarray((Xc.T if Z is None else Z @ Xc.T) @ self.U, dtype=np.float64)
        out = np.empty((len(self.alphas), KzU.shape[0], Xc.shape[0]), dtype=Xc.dtype)
        Ut = self.U.T
        for i, a in enumerate(self.alphas):
            out[i] = (KzU / (self.s + a)).astype(Xc.dtype) @ Ut
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"U": self.U, "s": self.s}


#: Factorisation name → builder(G, alphas, form, Xc, dtype).
FACTORIZERS: dict[str, Callable[..., Any]] = {
    "cholesky": lambda G, alphas, form, Xc, dtype: CholeskyFactor.build(G, alphas, form),
    "eigen": SpectralFactor.build,
}


def factorize(Xc: np.ndarray, alphas: Any, method: str = "cholesky", form: str = "auto",
              eigh_dtype: Any = np.float64, G: np.ndarray | None = None,
              factorizers: Mapping[str, Callable[..., Any]] = FACTORIZERS,
              ) -> CholeskyFactor | SpectralFactor:
    """Form the Gram matrix once and factorise it for the given alphas.

    Parameters
    ----------
    Xc : array of shape (n_samples, n_features)
        Centred inputs (float32 for speed, float64 for accuracy).
    alphas : float or array of shape (n_alphas,)
    method : {"cholesky", "eigen"}
        One Cholesky per alpha, or one eigendecomposition for any number of alphas.
    form : {"auto", "dual", "primal"}
        "auto" picks dual when n_samples < n_features.
    eigh_dtype : numpy dtype
        Precision of the eigendecomposition (float32 is about 2× faster at n≈9k).
    G : array, optional
        A precomputed float64 Gram matrix of this ``form`` (shared between target
        sets); it is overwritten.
    factorizers : mapping
        Method name → builder(G, alphas, form, Xc, dtype); the torch backend passes its
        own (then ``G`` must be given, as a tensor).

    Returns
    -------
    CholeskyFactor or SpectralFactor
    """
    alphas = check_alphas(alphas)
    if method not in factorizers:
        raise ValueError(f"method={method!r} is not one of {sorted(factorizers)}.")
    if form == "auto":
        form = choose_form(*Xc.shape)
    G = gram(Xc, form) if G is None else G
    logger.debug("ridge: %s form, Gram %s, %s factorisation", form, tuple(G.shape), method)
    factor = factorizers[method](G, alphas, form, Xc, eigh_dtype)
    del G
    return factor


def loo_operator(H: Any, idx: Any, rows: Any, n: int) -> Any:
    """Turn hat rows into the leave-one-out operator, in place (NumPy or torch, float64).

    With ``H[a] = X[rows] Xcᵀ (K + alphas[a] I)^-1`` (the rows of the centred hat
    matrix), the full hat matrix is ``Hf = H + 1/n`` (unpenalised intercept), and the
    LOO prediction of training image ``rows[i]`` is
    ``Y[rows[i]] - ((I - Hf) Yc)[i] / (1 - Hf[i, rows[i]])``. This returns ``Q`` with
    ``Q @ Yc = ((I - Hf) Yc)[rows] / (1 - diag Hf)``.

    Parameters
    ----------
    H : array of shape (n_alphas, r, n_samples), float64
        Overwritten.
    idx : int array of shape (r,)
        ``0 .. r-1`` (on the same device as ``H`` for torch).
    rows : int array of shape (r,)
        The training rows (same device as ``H``).
    n : int
        Number of training samples.

    Returns
    -------
    Q : array of shape (n_alphas, r, n_samples), float64 (``H`` itself)
    """
    H += 1.0 / n
    diag = H[:, idx, rows]
    H *= -1.0
    H[:, idx, rows] += 1.0
    H /= (1.0 - diag)[:, :, None]
    return H


def _centre(X: np.ndarray, Y: np.ndarray, dtype: Any) -> tuple:
    X = np.asarray(X, dtype=dtype)
    Y2 = np.asarray(Y, dtype=np.float64).reshape(Y.shape[0], -1)
    x_mean, y_mean = X.mean(axis=0), Y2.mean(axis=0)
    return X - x_mean, x_mean, (Y2 - y_mean).astype(dtype), y_mean


def ridge_predict(X_train: Any, Y_train: Any, X_test: Any, alpha: float,
                  form: str = "auto", dtype: Any = np.float64) -> np.ndarray:
    """In-memory ridge with intercept: predictions without forming the weights.

    Parameters
    ----------
    X_train : array of shape (n_samples, n_features)
    Y_train : array of shape (n_samples,) or (n_samples, ...)
    X_test : array of shape (n_test, n_features)
    alpha : float
    form : {"auto", "dual", "primal"}
    dtype : numpy dtype
        Compute dtype of the matrix products.

    Returns
    -------
    Y_pred : array of shape (n_test,) + Y_train.shape[1:]
    """
    for arr, name in ((X_train, "X_train"), (Y_train, "Y_train"), (X_test, "X_test")):
        check_finite(np.asarray(arr), name)
    check_n_samples(X_train, Y_train, "X_train", "Y_train")
    Xc, x_mean, Yc, y_mean = _centre(X_train, Y_train, dtype)
    M = factorize(Xc, alpha, form=form).operator(np.asarray(X_test, dtype) - x_mean, Xc)[0]
    pred = np.asarray(M @ Yc, dtype=np.float64) + y_mean
    return pred.reshape((len(pred),) + np.shape(Y_train)[1:])


def ridge_weights(X_train: Any, Y_train: Any, alpha: float, form: str = "auto",
                  dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """In-memory ridge with intercept: explicit weights and intercept.

    Returns
    -------
    W : array of shape (n_features,) + Y_train.shape[1:]
    b : array of shape Y_train.shape[1:]
        ``Y_pred = X @ W + b`` (after flattening trailing target dims).
    """
    check_finite(np.asarray(X_train), "X_train")
    check_finite(np.asarray(Y_train), "Y_train")
    check_n_samples(X_train, Y_train, "X_train", "Y_train")
    Xc, x_mean, Yc, y_mean = _centre(X_train, Y_train, dtype)
    H = factorize(Xc, alpha, form=form).operator(None, Xc)[0]
    W = np.asarray(H @ Yc, dtype=np.float64)
    b = y_mean - x_mean @ W
    tail = np.shape(Y_train)[1:]
    return W.reshape((W.shape[0],) + tail), b.reshape(tail)


def factor_kind(factor: Any) -> type:
    """The NumPy factor class (:class:`CholeskyFactor` or :class:`SpectralFactor`) of a factor."""
    return CholeskyFactor if isinstance(factor, CholeskyFactor) else SpectralFactor
