"""``BlockRidge``: an sklearn / dask-ml style ridge estimator that streams its targets.

Fitting keeps the standardised training fMRI, one factor of the Gram matrix and a
*reference* to the targets Y (NumPy or Dask, e.g. ``da.from_zarr``). Predictions,
pattern push-throughs and explicit weights are all ``M @ (Y_block - mean)`` for a small
operator ``M`` (see :mod:`fmri2img.ridge.solvers`), computed as one Dask task per target
block on whatever scheduler is active; Y is never loaded whole, nor copied. The heavy
linear algebra runs in NumPy/SciPy, or in torch on a ``device`` (see :mod:`.backends`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator

from . import _blocks
from ._validation import RidgeInputError, as_numpy_2d, check_alphas, check_finite, check_n_samples
from .backends import get_backend
from .calibration import CALIBRATIONS
from .preprocess import fit_standardizer
from .presets import ALPHA_CLIP_VISION, FMRI_SCALE
from .selection import SCORERS, group_labels, select_alphas
from .solvers import choose_form
from .state import model_state, restore_state

logger = logging.getLogger(__name__)

__all__ = ["BlockRidge"]

_SOLVERS = ("auto", "dual", "primal", "sgd")
_STATE_VERSION = 1




class BlockRidge(BaseEstimator):
    """Ridge regression from fMRI to (possibly huge, multi-dimensional) targets.

    Objective per target column ``j`` with its alpha ``a_j``::

        min_{w, b} ||y_j - X_std w - b||² + a_j ||w||²

    ``X_std`` is the fMRI ÷ ``fmri_scale`` then z-scored per voxel with train statistics
    (ddof=1), the Brain-Diffuser convention.

    Parameters
    ----------
    alpha : float or sequence of float
        One penalty (default: Brain-Diffuser CLIP-vision, 60,000), or a grid from which
        alphas are chosen per ``alpha_groups`` by ``criterion`` on the training set.
    alpha_groups : {"token", "target", "all"} or int array of shape (n_columns,)
        How columns share an alpha when a grid is given ("token": per index of the first
        trailing target axis).
    criterion : {"gcv", "loo"}
        Generalised cross-validation (cheap: one projection of Y) or exact
        leave-one-out (as sklearn's RidgeCV; one extra product per alpha).
    score_columns : int or None
        Score at most this many randomly chosen columns per group (ignored for
        ``alpha_groups="target"``); None scores all.
    solver : {"auto", "dual", "primal", "sgd"}
        "auto": dual when n_samples < n_voxels, else primal. "sgd": the streaming
        minibatch solver of :mod:`fmri2img.ridge.sgd` (X and Y may exceed memory).
    fmri_scale : float or None
        Divisor applied to the fMRI first (300 for NSD betas).
    standardize : bool
        Z-score voxels with train mean/std (ddof=1).
    calibration : {"test_batch", "loo", "none"}
        Post-processing of predictions (see :mod:`fmri2img.ridge.calibration`).
    calibration_rows : int or None
        For ``"loo"``: estimate the LOO statistics on this many training images (a
        fixed seeded sample; still non-transductive); None uses all.
    target_batch : int or None
        Target columns per block; None keeps the native trailing chunks of Dask
        targets (e.g. Zarr chunks) up to 512 MB a block, else picks ~128 MB blocks.
    dtype : {"float32", "float64"}
        Compute dtype of the large products (factorisations run in float64).
    eigh_dtype : {"auto", "float32", "float64"}
        Eigendecomposition precision when selecting alphas; "auto" uses float64 up to
        4,096 samples and float32 above (about 2× faster, ample for alpha ≥ 1).
    random_state : int
        Seed of the column / row samples.
    sgd_options : dict or None
        Keyword arguments for :func:`fmri2img.ridge.sgd.sgd_ridge`.
    device : str or None
        Where the heavy linear algebra runs. None: NumPy/SciPy in this process. A torch
        device string ("cpu", "cuda", "cuda:1", ...): the Gram matrix, the
        factorisation(s), the operators, the alpha scores and every target block's
        product and calibration run in torch on that device, with the same dtypes as
        the NumPy path; one target block at a time is held there, and results come
        back as NumPy. torch is imported only then. Not with ``solver="sgd"``. Not
        saved by :meth:`get_model_state` (pass ``device`` to :meth:`from_model_state`).

    Attributes
    ----------
    alpha_ : float or array of shape target_shape_
        The fitted alpha (a float when all columns share one).
    alphas_ : array of shape (n_used_alphas,)
        Distinct alphas in use; ``alpha_index_`` maps each column to one.
    alpha_index_ : int array of shape (n_columns,)
    form_ : {"dual", "primal", "sgd"}
    target_shape_ : tuple
        ``Y.shape[1:]``.
    """

    def __init__(self, alpha: Any = ALPHA_CLIP_VISION, alpha_groups: Any = "token",
                 criterion: str = "gcv", score_columns: int | None = None,
                 solver: str = "auto", fmri_scale: float | None = FMRI_SCALE,
                 standardize: bool = True, calibration: str = "test_batch",
                 calibration_rows: int | None = None, target_batch: int | None = None,
                 dtype: str = "float32", eigh_dtype: str = "auto", random_state: int = 0,
                 sgd_options: dict | None = None, device: str | None = None) -> None:
        self.alpha = alpha
        self.alpha_groups = alpha_groups
        self.criterion = criterion
        self.score_columns = score_columns
        self.solver = solver
        self.fmri_scale = fmri_scale
        self.standardize = standardize
        self.calibration = calibration
        self.calibration_rows = calibration_rows
        self.target_batch = target_batch
        self.dtype = dtype
        self.eigh_dtype = eigh_dtype
        self.random_state = random_state
        self.sgd_options = sgd_options
        self.device = device

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> np.ndarray:
        choices = {"solver": (self.solver, _SOLVERS), "criterion": (self.criterion, tuple(SCORERS)),
                   "calibration": (self.calibration, tuple(CALIBRATIONS)),
                   "dtype": (self.dtype, ("float32", "float64")),
                   "eigh_dtype": (self.eigh_dtype, ("auto", "float32", "float64"))}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise RidgeInputError(f"{name}={value!r} is not one of {list(allowed)}.")
        if self.device is not None and self.solver == "sgd":
            raise RidgeInputError(
                f"solver='sgd' runs in NumPy/Dask only; got device={self.device!r}. Use "
                "device=None with solver='sgd', or an exact solver ('auto', 'dual', "
                "'primal') on the device."
            )
        self._backend()  # an unavailable device fails here, before any work
        return check_alphas(self.alpha)

    def _backend(self) -> Any:
        return get_backend(self.device)

    def _x_backend(self, backend: Any) -> Any:
        """``X_train_`` as ``backend`` computes with it (a device copy, made once)."""
        cached = self.__dict__.get("_x_on_device")
        if cached is None or cached[0] is not self.X_train_ or cached[1] != backend.device:
            cached = (self.X_train_, backend.device, backend.asarray(self.X_train_))
            self._x_on_device = cached
        return cached[2]

    def _factor(self, backend: Any) -> Any:
        """``factor_`` as ``backend`` uses it (converted once if the device changed)."""
        self.factor_ = backend.adopt(self.factor_)
        return self.factor_

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_x_on_device", None)  # a device copy of X_train_
        return state

    # --------------------------------------------------------------------- fit
    def fit(self, X: Any, Y: Any) -> "BlockRidge":
        """Fit on training fMRI and targets.

        Parameters
        ----------
        X : array of shape (n_samples, n_voxels)
            Raw training fMRI (NumPy or Dask; loaded into memory except for "sgd").
        Y : array of shape (n_samples,) or (n_samples, ...)
            Targets, NumPy or Dask (e.g. ``da.from_zarr``). Only a reference is kept;
            Dask targets are checked for NaN/inf block by block when streamed.

        Returns
        -------
        self
        """
        alphas, Y = self._start(X, Y)
        if self.solver == "sgd":
            return self._fit_sgd(X, Y, alphas)
        self._fit_inputs(X)
        return self._fit_targets(Y, alphas)

    def _start(self, X: Any, Y: Any, name: str = "Y") -> tuple[np.ndarray, Any]:
        alphas = self._check_params()
        check_n_samples(X, Y, "X", name)
        if not isinstance(Y, da.Array):
            Y = np.asarray(Y)
            check_finite(Y, name)
        self._y_is_numpy = not isinstance(Y, da.Array)
        self.target_shape_ = tuple(Y.shape[1:])
        self.n_samples_ = int(X.shape[0])
        self.n_features_in_ = int(X.shape[1])
        return alphas, Y

    def _fit_inputs(self, X: Any) -> None:
        t0 = time.perf_counter()
        X = as_numpy_2d(X, "X")
        check_finite(X, "X")
        self.scaler_ = fit_standardizer(X, self.fmri_scale, self.standardize)
        Xs = self.scaler_.transform(X, self.dtype)
        self.x_mean_ = Xs.mean(axis=0, dtype=np.float64)
        Xs -= self.x_mean_.astype(Xs.dtype)
        self.X_train_ = Xs
        self.form_ = choose_form(*Xs.shape) if self.solver == "auto" else self.solver
        logger.info("ridge: standardised X %s in %.1f s (%s form)", Xs.shape,
                    time.perf_counter() - t0, self.form_)

    def _fit_targets(self, Y: Any, alphas: np.ndarray, G: Any = None) -> "BlockRidge":
        t0 = time.perf_counter()
        self._set_targets(Y)
        if len(alphas) == 1:
            be = self._backend()
            self.factor_ = be.factorize(self._x_backend(be), alphas, "cholesky", self.form_, G=G)
            self.alpha_index_ = np.zeros(self._n_columns, dtype=np.int64)
        else:
            self._fit_grid(alphas, G)
        self._finish_alphas()
        logger.info("ridge: factorised (%s, %d alpha(s)) in %.1f s", type(self.factor_).__name__,
                    len(self.alphas_), time.perf_counter() - t0)
        return self

    def _set_targets(self, Y: Any) -> None:
        self._n_columns = int(np.prod(self.target_shape_))
        self.Y_ = _blocks.as_blocked(Y, self.target_batch)

    def _eigh_dtype(self) -> Any:
        if self.eigh_dtype == "auto":
            return np.float64 if self.n_samples_ <= 4096 else np.float32
        return np.dtype(self.eigh_dtype)

    def _fit_grid(self, alphas: np.ndarray, G: Any = None) -> None:
        t0 = time.perf_counter()
        be = self._backend()
        factor = be.factorize(self._x_backend(be), alphas, "eigen", self.form_, self._eigh_dtype(), G)
        logger.info("ridge: eigendecomposition in %.1f s", time.perf_counter() - t0)
        labels = group_labels(self.alpha_groups, self.target_shape_ or (1,))
        mask = self._score_mask(labels)
        scores = be.score(self.Y_, _blocks.column_array(mask, self.Y_), factor,
                          self.criterion).compute()
        scores = np.asarray(scores).reshape(len(alphas), -1)
        self.alpha_scores_ = scores
        idx = select_alphas(np.nan_to_num(scores, nan=0.0), labels, mask)
        used, self.alpha_index_ = np.unique(idx, return_inverse=True)
        factor.alphas = alphas[used]
        self.factor_ = factor
        logger.info("ridge: %s picked %d distinct alpha(s) over %d group(s)", self.criterion,
                    len(used), len(np.unique(labels)))

    def _score_mask(self, labels: np.ndarray) -> np.ndarray:
        k = self.score_columns
        if k is None or (isinstance(self.alpha_groups, str) and self.alpha_groups == "target"):
            return np.ones(labels.shape, bool)
        rng = np.random.default_rng(self.random_state)
        mask = np.zeros(labels.shape, bool)
        for g in np.unique(labels):
            cols = np.flatnonzero(labels == g)
            mask[rng.choice(cols, min(k, len(cols)), replace=False)] = True
        return mask

    def _finish_alphas(self) -> None:
        self.alphas_ = np.asarray(self.factor_.alphas if self.form_ != "sgd" else self._sgd_alphas)
        if len(self.alphas_) == 1:
            self.alpha_ = float(self.alphas_[0])
        else:
            self.alpha_ = self.alphas_[self.alpha_index_].reshape(self.target_shape_)
        self._aidx = _blocks.column_array(self.alpha_index_, self.Y_)

    def _fit_sgd(self, X: Any, Y: Any, alphas: np.ndarray) -> "BlockRidge":
        from .sgd import sgd_ridge

        if len(alphas) != 1:
            raise RidgeInputError(
                f"solver='sgd' takes one alpha; got {len(alphas)}. Select alphas with an "
                f"exact solver on a subset first, then pass the chosen value."
            )
        Xd = X if isinstance(X, da.Array) else da.from_array(np.asarray(X))
        check_finite(Xd, "X")
        self.scaler_ = fit_standardizer(Xd, self.fmri_scale, self.standardize)
        Y2 = Y.reshape(Y.shape[0], -1) if Y.ndim != 2 else Y
        W, b = sgd_ridge(self.scaler_.transform(Xd, self.dtype), Y2, float(alphas[0]),
                         **(self.sgd_options or {}))
        self.coef_sgd_, self.intercept_sgd_ = W, b
        self.form_ = "sgd"
        self._sgd_alphas = alphas
        self._set_targets(Y)
        self.alpha_index_ = np.zeros(self._n_columns, dtype=np.int64)
        self._finish_alphas()
        return self

    # ----------------------------------------------------------------- helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "form_"):
            raise RidgeInputError("This BlockRidge is not fitted yet: call fit(X, Y) first.")

    def _finish(self, out: da.Array) -> Any:
        if not self.target_shape_:
            out = out[:, 0]
        return out.compute() if self._y_is_numpy else out

    def _stream(self, Z: np.ndarray | None, add_mean: bool, calibration: str = "none") -> Any:
        dt = np.dtype(self.dtype)
        be = self._backend()
        factor, Xb = self._factor(be), self._x_backend(be)
        ops = be.operator(factor, None if Z is None else Z.astype(dt), Xb)
        loo_ops = None
        if calibration == "loo":
            rows = self._loo_rows()
            loo_ops = be.loo_operator(factor, Xb, rows, self.dtype), rows
        return self._finish(be.stream(self.Y_, self._aidx, ops, add_mean, calibration,
                                      loo_ops, dt))

    def _loo_rows(self) -> np.ndarray:
        """Training rows whose LOO predictions calibrate (all, or a seeded sample)."""
        n = self.n_samples_
        rows = np.arange(n)
        if self.calibration_rows is not None and self.calibration_rows < n:
            rng = np.random.default_rng(self.random_state)
            rows = np.sort(rng.choice(n, self.calibration_rows, replace=False))
        return rows

    def _standardized(self, X: Any) -> np.ndarray:
        X = as_numpy_2d(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise RidgeInputError(
                f"X has {X.shape[1]} voxels but the model was fitted on "
                f"{self.n_features_in_}: use the same voxel mask as for training."
            )
        check_finite(X, "X")
        return self.scaler_.transform(X, self.dtype)

    # ------------------------------------------------------------- public API
    def predict(self, X: Any) -> Any:
        """Predict targets for new fMRI, then apply ``calibration``.

        Parameters
        ----------
        X : array of shape (n_new, n_voxels)
            Raw fMRI (same units and voxels as the training fMRI).

        Returns
        -------
        Y_pred : array of shape (n_new,) + target_shape_
            In ``dtype``; a lazy Dask array in target blocks when the model was fitted on
            Dask targets, else NumPy.
        """
        self._check_fitted()
        Xs = self._standardized(X)
        if self.form_ == "sgd":
            return self._predict_sgd(Xs)
        return self._stream(Xs - self.x_mean_.astype(Xs.dtype), True, self.calibration)

    def _predict_sgd(self, Xs: np.ndarray) -> Any:
        if self.calibration == "loo":
            raise RidgeInputError(
                "calibration='loo' needs the exact factor; with solver='sgd' use "
                "calibration='test_batch' or 'none'."
            )
        P = np.asarray(Xs @ self.coef_sgd_ + self.intercept_sgd_, dtype=np.float64)
        if self.calibration != "none":
            stats = da.compute(self.Y_.reshape(self.n_samples_, -1).mean(axis=0),
                               self.Y_.reshape(self.n_samples_, -1).std(axis=0))
            P = (P - P.mean(0)) / np.where(P.std(0) > 0, P.std(0), 1.0) * stats[1] + stats[0]
        P = P.astype(self.dtype).reshape((len(P),) + self.target_shape_)
        return P if self._y_is_numpy else da.from_array(P)

    def push_pattern(self, pattern: Any, add_intercept: bool = False) -> Any:
        """Push voxel patterns through the fitted linear map: ``pattern @ W`` (+ intercept).

        No ÷scale and no z-scoring is applied: ``pattern`` lives in the standardised
        input space of the model (e.g. an ROI indicator vector). Computed in kernel form
        ``(pattern Xᵀ)(K + aI)^-1 Yc``, without the voxel × target weights. No
        calibration is applied.

        Parameters
        ----------
        pattern : array of shape (n_voxels,) or (n_patterns, n_voxels)
        add_intercept : bool
            Add ``intercept_`` (``= mean(Y) - mean(X_std) W``).

        Returns
        -------
        out : array of shape (n_patterns,) + target_shape_
        """
        self._check_fitted()
        Z = as_numpy_2d(pattern, "pattern").astype(self.dtype)
        if Z.shape[1] != self.n_features_in_:
            raise RidgeInputError(
                f"pattern has {Z.shape[1]} voxels but the model has {self.n_features_in_}."
            )
        if self.form_ == "sgd":
            out = Z @ self.coef_sgd_ + (self.intercept_sgd_ if add_intercept else 0.0)
            return out.reshape((len(Z),) + self.target_shape_)
        if add_intercept:
            return self._stream(Z - self.x_mean_.astype(Z.dtype), True)
        return self._stream(Z, False)

    def get_weights(self) -> Any:
        """Explicit weights ``W`` in target blocks (only on request: p × targets is big).

        Returns
        -------
        W : array of shape (n_voxels,) + target_shape_
            In the standardised input space: ``predict`` (uncalibrated) equals
            ``standardise(X) @ W + intercept_``. Dask when fitted on Dask targets, so
            that it can be written to Zarr block by block.
        """
        self._check_fitted()
        if self.form_ == "sgd":
            return self.coef_sgd_.reshape((-1,) + self.target_shape_)
        return self._stream(None, False)

    @property
    def intercept_(self) -> Any:
        """Intercept, array of shape target_shape_ (Dask when fitted on Dask targets)."""
        self._check_fitted()
        if self.form_ == "sgd":
            return self.intercept_sgd_.reshape(self.target_shape_)
        out = self._stream(-self.x_mean_[None, :], True)
        return out[0]

    def score(self, X: Any, Y: Any) -> float:
        """Coefficient of determination R², averaged uniformly over target columns.

        Parameters
        ----------
        X : array of shape (n_samples, n_voxels)
        Y : array of shape (n_samples,) + target_shape_

        Returns
        -------
        float
        """
        check_n_samples(X, Y, "X", "Y")
        P = self.predict(X)
        P = P.reshape(P.shape[0], -1)
        Yt = Y.reshape(Y.shape[0], -1)
        ss_res = ((Yt - P) ** 2).sum(axis=0)
        ss_tot = ((Yt - Yt.mean(axis=0)) ** 2).sum(axis=0)
        ss_res, ss_tot = dask.compute(ss_res, ss_tot)
        ok = ss_tot > 0
        r2 = np.where(ok, 1.0 - ss_res / np.where(ok, ss_tot, 1.0), np.where(ss_res > 0, 0.0, 1.0))
        return float(np.mean(r2))

    # ------------------------------------------------------------ model state
    def get_model_state(self) -> dict[str, Any]:
        """Fitted state as plain arrays plus a dict of scalars (Y itself is not included).

        Returns
        -------
        state : dict
            ``{"arrays": {name: np.ndarray}, "attrs": {name: int|float|str|bool|None|list}}``.
            Arrays may be written to Zarr, attrs to JSON; reload with
            :meth:`from_model_state` and the same targets.
        """
        self._check_fitted()
        return model_state(self, _STATE_VERSION)

    @classmethod
    def from_model_state(cls, state: dict[str, Any], Y: Any, device: str | None = None) -> "BlockRidge":
        """Rebuild a fitted model from :meth:`get_model_state` output and its targets.

        Parameters
        ----------
        state : dict
            ``{"arrays": ..., "attrs": ...}`` as returned by :meth:`get_model_state`.
        Y : array of shape (n_samples,) + target_shape
            The training targets the model was fitted on (e.g. re-opened from the store).
        device : str or None
            Where the rebuilt model computes (see the ``device`` parameter), whatever
            device it was fitted on; the factor moves there on first use.

        Returns
        -------
        BlockRidge
        """
        est = restore_state(cls, state, Y, device)
        est._set_targets(Y if isinstance(Y, da.Array) else np.asarray(Y))
        est.alpha_index_ = np.asarray(state["arrays"]["alpha_index"])
        est._finish_alphas()
        return est
