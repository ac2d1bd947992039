"""Brain-Diffuser's ROI analysis: synthetic feature vectors from ROI indicator patterns.

An ROI's indicator vector (1 on its voxels, 0 elsewhere, in the z-scored input space)
pushed through a fitted ridge model gives ``p = roi @ W``.  Brain-Diffuser then scales
these so that decoding them produces images in the range the decoders expect
(REFERENCE.md §5, ROI analysis):

- VDVAE: ``p`` L2-normalised per ROI, ×50, + intercept; z-scored across the ROIs (per
  latent); rescaled to the train latents' mean and std; L2-normalised per ROI; ×80.
- CLIP-text / CLIP-vision: per ROI, ``p`` divided by its Frobenius norm over
  (tokens × dim), ×9 (text) or ×15 (vision), + intercept.
"""
from __future__ import annotations

import numpy as np

#: Brain-Diffuser's scale factors
VDVAE_PUSH_SCALE, VDVAE_FINAL_SCALE = 50.0, 80.0
CLIP_SCALES = {"clip-text": 9.0, "clip-vision": 15.0}


def _rows_normalised(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(len(a), -1)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norm > 0, norm, 1.0)).reshape(a.shape)


def roi_vdvae_latents(pushed: np.ndarray, intercept: np.ndarray, train_mean: np.ndarray,
                      train_std: np.ndarray) -> np.ndarray:
    """Synthetic VDVAE latents of ROIs.

    Parameters
    ----------
    pushed : array of shape (n_rois, n_latents)
        ``roi @ W`` (no intercept).
    intercept : array of shape (n_latents,)
    train_mean, train_std : arrays of shape (n_latents,)
        Mean and std (ddof 0) of the training latents.

    Returns
    -------
    latents : array of shape (n_rois, n_latents), float32
    """
    p = _rows_normalised(np.asarray(pushed, np.float64)) * VDVAE_PUSH_SCALE + np.asarray(intercept, np.float64)
    sd = p.std(axis=0)
    z = (p - p.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    scaled = z * np.asarray(train_std, np.float64) + np.asarray(train_mean, np.float64)
    return (_rows_normalised(scaled) * VDVAE_FINAL_SCALE).astype(np.float32)


def roi_clip_embeddings(pushed: np.ndarray, intercept: np.ndarray, scale: float) -> np.ndarray:
    """Synthetic CLIP embeddings of ROIs.

    Parameters
    ----------
    pushed : array of shape (n_rois, tokens, dim)
        ``roi @ W`` (no intercept).
    intercept : array of shape (tokens, dim)
    scale : float
        9 for CLIP-text, 15 for CLIP-vision (:data:`CLIP_SCALES`).

    Returns
    -------
    embeddings : array of shape (n_rois, tokens, dim), float32
    """
    p = _rows_normalised(np.asarray(pushed, np.float64)) * scale + np.asarray(intercept, np.float64)
    return p.astype(np.float32)
