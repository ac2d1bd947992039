"""Functional alignment of a new subject to a fitted reference subject, by ridge.

A new person scanned for one session cannot be fitted alone (too few images), but their
voxels can be mapped into a fitted reference subject's voxel space, where the reference's
models decode them (Ferrante et al. 2023, "Through their eyes": ridge alignment was best
and reached single-subject quality with about 10 % of the data). Pure functions on arrays:

* :func:`average_by_image`: repeats of an image averaged (as the ingest stage does);
* :func:`check_disjoint`: no image used for fitting among those evaluated on;
* :func:`kernel_inputs`: a sum of per-feature-set linear kernels (each set z-scored by
  column and weighted by 1/√columns, so each set counts equally) turned into an
  equivalent n × n design, so that :class:`BlockRidge` fits an *encoding model*
  (features → the reference's voxels) however wide the features are;
* :func:`fit_alignment`: ridge from the new subject's voxels to targets in the reference's
  voxel space (the reference's own responses to shared images, or pseudo-responses of the
  encoding model to any image);
* :class:`AlignedModel`: a reference model applied to aligned voxels, ``predict(X) =
  model.predict(alignment.predict(X))``.

Nothing here knows about stores or stages.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np

from ._validation import RidgeInputError
from .estimator import BlockRidge

__all__ = ["ALIGN_ALPHAS", "LeakageError", "average_by_image", "check_disjoint", "kernel_inputs",
           "pseudo_responses", "fit_alignment", "AlignedModel"]

#: default alpha grid of the alignment and encoding ridges (chosen per target voxel by GCV)
ALIGN_ALPHAS: tuple[float, ...] = (1e0, 1e1, 1e2, 3e2, 1e3, 3e3, 1e4, 3e4, 1e5, 1e6)


class LeakageError(RidgeInputError):
    """An image used to fit a model is among the images it is evaluated on."""


def average_by_image(values: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average the rows of each image (repeats), images in ascending id order.

    Parameters
    ----------
    values : array of shape (n_trials, n_voxels)
    images : int array of shape (n_trials,)

    Returns
    -------
    ids : int array of shape (n_images,)
    means : float32 array of shape (n_images, n_voxels)
    """
    ids, inverse, counts = np.unique(np.asarray(images, np.int64), return_inverse=True, return_counts=True)
    sums = np.zeros((len(ids), values.shape[1]), np.float64)
    np.add.at(sums, inverse, np.asarray(values, np.float64))
    return ids, (sums / counts[:, None]).astype(np.float32)


def check_disjoint(fitted: Mapping[str, Sequence[int]], evaluated: Sequence[int], what: str = "evaluated on") -> None:
    """Refuse any image that a fit used and that is also evaluated on.

    Parameters
    ----------
    fitted : mapping of str to int sequence
        Name of each fit (``"alignment"``, ``"reference models"``...) → the image ids it used.
    evaluated : int sequence
        Ids of the images the result is evaluated on.

    Raises
    ------
    LeakageError
        Naming the fit, how many images overlap and the first of them.
    """
    evaluated = np.unique(np.asarray(evaluated, np.int64))
    for name, ids in fitted.items():
        both = np.intersect1d(np.asarray(ids, np.int64), evaluated)
        if len(both):
            raise LeakageError(f"{len(both)} image(s) used by the {name} fit are among the {len(evaluated)} images "
                               f"{what} (first NSD id {int(both[0])}): an evaluation must use images no fit saw")


def _zscored(F: Any, mean: np.ndarray, std: np.ndarray) -> Any:
    return (F - mean) / std


def kernel_inputs(train: Sequence[Any], other: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """An n × n design whose linear kernel is that of the (wide) feature sets.

    Each set is z-scored by column with the training rows' statistics and weighted by
    1/√(columns), the kernels ``K = Σ_s F_s F_sᵀ`` are summed (one pass over column blocks,
    Dask arrays streamed), and ``K = U S Uᵀ`` gives ``X = U √S`` for the training rows and
    ``Z = K_other U / √S`` for the others: ``X Xᵀ = K`` and ``Z Xᵀ = K_other``, so a ridge on
    (X, Z) equals kernel ridge on the features, whatever their width.

    Parameters
    ----------
    train : sequence of arrays of shape (n_train, ...)
        One array per feature set (NumPy or Dask), training rows.
    other : sequence of arrays of shape (n_other, ...)
        The same feature sets for the rows to predict.

    Returns
    -------
    X : float64 array of shape (n_train, rank)
    Z : float64 array of shape (n_other, rank)
    """
    if not train or len(train) != len(other):
        raise RidgeInputError(f"kernel_inputs: {len(train)} training and {len(other)} other feature sets; give the "
                              f"same non-empty list of sets for both")
    n, m = int(train[0].shape[0]), int(other[0].shape[0])
    K, Kx = np.zeros((n, n)), np.zeros((m, n))
    for Ft, Fo in zip(train, other):
        Ft = da.asarray(Ft).reshape(n, -1).astype(np.float64)
        Fo = da.asarray(Fo).reshape(m, -1).astype(np.float64)
        mean, std = da.compute(Ft.mean(axis=0), Ft.std(axis=0))
        std = np.where(std > 0, std, 1.0) * np.sqrt(Ft.shape[1])
        St, So = _zscored(Ft, mean, std), _zscored(Fo, mean, std)
        k, kx = da.compute(St @ St.T, So @ St.T)
        K += k
        Kx += kx
    s, U = np.linalg.eigh(K)
    keep = s > s.max() * 1e-10
    U, s = U[:, keep], s[keep]
    return U * np.sqrt(s), (Kx @ U) / np.sqrt(s)


def pseudo_responses(train_features: Sequence[Any], responses: np.ndarray, new_features: Sequence[Any],
                     alphas: Sequence[float] = ALIGN_ALPHAS, calibration: str = "loo") -> tuple[np.ndarray, BlockRidge]:
    """The reference's responses to any image, from an encoding model (features → voxels).

    Kernel ridge (:func:`kernel_inputs`) with one alpha per voxel chosen by GCV.

    Parameters
    ----------
    train_features : sequence of arrays of shape (n_train, ...)
        Feature sets of the reference's training images.
    responses : array of shape (n_train, n_ref_voxels)
        The reference's responses to them (repeats averaged).
    new_features : sequence of arrays of shape (n_new, ...)
        The same feature sets for the images to predict.
    calibration : {"loo", "none"}
        "loo": predictions rescaled per voxel so that out-of-sample predictions have the
        responses' mean and spread (non-transductive).

    Returns
    -------
    pseudo : float32 array of shape (n_new, n_ref_voxels)
    model : BlockRidge
        The encoding model, fitted on the kernel design.
    """
    X, Z = kernel_inputs(train_features, new_features)
    model = BlockRidge(alpha=list(alphas), alpha_groups="target", fmri_scale=None, standardize=False,
                       calibration=calibration, dtype="float64")
    model.fit(X, np.asarray(responses, np.float64))
    return np.asarray(model.predict(Z), np.float32), model


def fit_alignment(X_new: np.ndarray, targets: np.ndarray, alphas: Sequence[float] = ALIGN_ALPHAS,
                  alpha_groups: str = "target", calibration: str = "loo") -> BlockRidge:
    """Ridge from a new subject's voxels to targets in the reference's voxel space.

    Objective per reference voxel ``j``: ``min ||t_j - X_std w - b||² + a_j ||w||²`` with
    ``X_std`` the new subject's fMRI z-scored per voxel (training statistics) and ``a_j``
    chosen from ``alphas`` by GCV.

    Parameters
    ----------
    X_new : array of shape (n_images, n_new_voxels)
        The new subject's responses (percent signal change, repeats averaged).
    targets : array of shape (n_images, n_ref_voxels)
        The reference's responses to the same images, or pseudo-responses.
    alpha_groups : {"target", "all"}
        One alpha per reference voxel, or one for all.
    calibration : {"loo", "none"}
        "loo": aligned voxels get the targets' mean and spread (their leave-one-out
        statistics), so that the reference's models see inputs scaled like its own scans.

    Returns
    -------
    BlockRidge
    """
    if len(X_new) < 3:
        raise RidgeInputError(f"alignment: {len(X_new)} image(s) shared with the reference; at least 3 are needed "
                              f"(scan more sessions, or align through the reference's encoding model)")
    model = BlockRidge(alpha=list(alphas), alpha_groups=alpha_groups, fmri_scale=None, standardize=True,
                       calibration=calibration)
    return model.fit(np.asarray(X_new, np.float32), np.asarray(targets, np.float32))


class AlignedModel:
    """A reference model applied to a new subject's voxels through an alignment.

    Parameters
    ----------
    alignment : BlockRidge
        New subject's voxels → reference's voxels (see :func:`fit_alignment`).
    model : BlockRidge
        The reference's model (reference's voxels → features).
    salt : str
        Identifies the pair (written with the predictions, so a change is recomputed).
    """

    def __init__(self, alignment: BlockRidge, model: BlockRidge, salt: str = "") -> None:
        self.alignment, self.model, self.salt = alignment, model, salt

    @property
    def calibration(self) -> str:
        return self.model.calibration

    @calibration.setter
    def calibration(self, value: str) -> None:
        self.model.calibration = value

    def predict(self, X: Any) -> Any:
        """Features of new-subject scans, array of shape (n, *target_shape) (Dask when the model's are)."""
        aligned = self.alignment.predict(X)
        return self.model.predict(np.asarray(aligned, np.float32))
