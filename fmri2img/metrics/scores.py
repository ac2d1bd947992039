"""The eight Brain-Diffuser evaluation metrics as pure NumPy/SciPy functions (REFERENCE.md §5).

Every scoring function returns one value per image so that a bad image is
reported where it is, and :func:`summarize` turns per-image values into the
table's numbers, excluding (and counting) non-finite ones instead of letting one
NaN turn a whole column into NaN (the seed paper never obtained its metrics for
that reason).

Low level (images at the ground truth's side, 425 × 425 for NSD):

- **PixCorr**: the reconstruction resized to the ground truth's size with PIL
  bicubic, both divided by 255, Pearson r of the flattened RGB vectors.
- **SSIM (column)**: Brain-Diffuser's number.  scikit-image 0.17.2 was called on
  two *grayscale* 2-D images with ``multichannel=True``, which treats the 425
  columns as channels: the result is the mean over columns of a 1-D Gaussian SSIM
  (sigma 1.5, 11 taps, population covariance, data range 1) computed down each
  column.  scikit-image >= 0.19 gives the same with ``channel_axis=-1``.
- **SSIM-2D**: the true 2-D SSIM with the same settings.

High level (features from :mod:`fmri2img.metrics.features`):

- **two-way identification** (AlexNet(2), AlexNet(5), InceptionV3, CLIP): for
  reconstruction i, the fraction of other ground truths j whose feature
  correlation with reconstruction i is below that of its own ground truth i.
- **correlation distance** (EffNet-B, SwAV): 1 − Pearson r between the features
  of ground truth i and reconstruction i.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from PIL import Image
from scipy import stats

logger = logging.getLogger(__name__)

__all__ = [
    "Metric", "METRICS", "SSIM_MODES", "pixcorr", "ssim", "two_way_identification",
    "correlation_distance", "pearson_matrix", "identification_pvalue", "summarize",
    "per_image_scores",
]

# Settings of Brain-Diffuser's structural_similarity call (REFERENCE.md §5).
SSIM_SETTINGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)

# Bytes of float64 working memory per block in the blocked Pearson computations.
_BLOCK_BYTES = 1 << 28


# ----------------------------------------------------------------------------- input checks
def _check_images(name: str, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{name} has shape {images.shape} but must be (n_images, height, width, 3) RGB: "
            f"stack the images along a first axis (a single image needs images[None])"
        )
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name} has dtype {images.dtype} but must be uint8 (0-255) or floating point "
                         f"in [0, 255]: convert with .astype(np.uint8)")
    finite = images[np.isfinite(images)]
    if finite.size and (finite.min() < 0 or finite.max() > 255):
        raise ValueError(
            f"{name} is floating point with values in [{finite.min():g}, {finite.max():g}] but must be in "
            f"[0, 255] like uint8 pixels: multiply images in [0, 1] by 255"
        )
    return images


def _check_pair(gt: np.ndarray, rec: np.ndarray, gt_name: str, rec_name: str) -> None:
    if len(gt) != len(rec):
        raise ValueError(
            f"{gt_name} has {len(gt)} images but {rec_name} has {len(rec)}: both must list the same test "
            f"images in the same order"
        )


def _as_uint8(image: np.ndarray) -> np.ndarray | None:
    """One (H, W, 3) image as uint8, or None when it holds a non-finite pixel."""
    if image.dtype == np.uint8:
        return image
    if not np.isfinite(image).all():
        return None
    return np.rint(image).astype(np.uint8)


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, 3) image to ``size`` = (height, width) with PIL bicubic (Pillow's default)."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def _image_pairs(gt: np.ndarray, rec: np.ndarray):
    """Yield (index, gt float (H, W, 3) in [0, 1], rec float resized to gt) or (index, None, None) if non-finite."""
    gt = _check_images("gt", gt)
    rec = _check_images("rec", rec)
    _check_pair(gt, rec, "gt", "rec")
    for i in range(len(gt)):
        g, r = _as_uint8(gt[i]), _as_uint8(rec[i])
        if g is None or r is None:
            logger.warning("image %d has non-finite pixels in the %s; its score is NaN and it is excluded "
                           "from the summary", i, "ground truth" if g is None else "reconstruction")
            yield i, None, None
            continue
        yield i, g / 255.0, _resized(r, g.shape[:2]) / 255.0


# ----------------------------------------------------------------------------- low level
def pixcorr(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Per-image pixel correlation (PixCorr).

    Parameters
    ----------
    gt : array of shape (n, H, W, 3), uint8 (or float in [0, 255]; NaN marks a bad image)
        Ground-truth images (425 × 425 for NSD).
    rec : array of shape (n, H', W', 3), uint8 (or float in [0, 255])
        Reconstructions, resized to (H, W) with PIL bicubic when their size differs.

    Returns
    -------
    array of shape (n,), float64
        Pearson r between the flattened RGB vectors of each pair, both divided by 255;
        NaN for an image with a non-finite pixel or a constant image.
    """
    out = np.full(len(gt), np.nan)
    for i, g, r in _image_pairs(gt, rec):
        if g is not None:
            out[i] = _row_pearson(g.reshape(1, -1), r.reshape(1, -1))[0]
    return out


def _ssim_column(g: np.ndarray, r: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(g, r, channel_axis=-1, **SSIM_SETTINGS))


def _ssim_2d(g: np.ndarray, r: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(g, r, **SSIM_SETTINGS))


#: SSIM variants: "column" reproduces Brain-Diffuser (skimage 0.17 multichannel=True on grayscale),
#: "2d" is the true 2-D SSIM with the same Gaussian window and constants.
SSIM_MODES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"column": _ssim_column, "2d": _ssim_2d}


def ssim(gt: np.ndarray, rec: np.ndarray, mode: str = "column") -> np.ndarray:
    """Per-image structural similarity of the grayscale images.

    Both images are converted with ``skimage.color.rgb2gray`` at the ground truth's size
    (the reconstruction resized with PIL bicubic first), then compared with a Gaussian
    window (sigma 1.5, truncate 3.5: 11 taps), population covariance and data range 1.

    Parameters
    ----------
    gt : array of shape (n, H, W, 3), uint8 (or float in [0, 255]; NaN marks a bad image)
    rec : array of shape (n, H', W', 3), uint8 (or float in [0, 255])
    mode : {"column", "2d"}
        ``"column"``: Brain-Diffuser's value, the mean over the W columns of the 1-D SSIM
        computed down each column (what scikit-image 0.17 ``multichannel=True`` does to a
        2-D grayscale image, and what ``channel_axis=-1`` does in scikit-image >= 0.19).
        ``"2d"``: the true 2-D SSIM.

    Returns
    -------
    array of shape (n,), float64
        NaN for an image with a non-finite pixel.
    """
    if mode not in SSIM_MODES:
        raise ValueError(f"ssim mode {mode!r} is not known: use one of {sorted(SSIM_MODES)} "
                         f"('column' reproduces Brain-Diffuser, '2d' is the true 2-D SSIM)")
    from skimage.color import rgb2gray

    fn = SSIM_MODES[mode]
    out = np.full(len(gt), np.nan)
    for i, g, r in _image_pairs(gt, rec):
        if g is not None:
            out[i] = fn(rgb2gray(g), rgb2gray(r))
    return out


# ----------------------------------------------------------------------------- correlations
def _check_features(gt_feats: np.ndarray, rec_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt_feats = np.asarray(gt_feats)
    rec_feats = np.asarray(rec_feats)
    for name, f in (("gt_feats", gt_feats), ("rec_feats", rec_feats)):
        if f.ndim < 2:
            raise ValueError(f"{name} has shape {f.shape} but must be (n_images, n_features): "
                             f"one row of features per image")
    gt_feats = gt_feats.reshape(len(gt_feats), -1)
    rec_feats = rec_feats.reshape(len(rec_feats), -1)
    if gt_feats.shape != rec_feats.shape:
        raise ValueError(
            f"gt_feats has shape {gt_feats.shape} but rec_feats has {rec_feats.shape}: both must come from "
            f"the same network layer for the same test images"
        )
    return gt_feats, rec_feats


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm in float64; rows with zero variance or non-finite values → NaN."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        x /= np.where(norm > 0, norm, np.nan)[:, None]
    return x


def _block(n_features: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(1, n_features)))


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between a[i] and b[i] for every row i, in row blocks."""
    out = np.empty(len(a))
    step = _block(a.shape[1])
    for s in range(0, len(a), step):
        out[s:s + step] = np.einsum("ij,ij->i", _unit_rows(a[s:s + step]), _unit_rows(b[s:s + step]))
    return out


def pearson_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` with every row of ``b``.

    Computed in float64: ``b``'s rows are centred and normalised once (n_b × d × 8 bytes;
    1.1 GB for 982 AlexNet(2) rows of 139,968), then ``a`` is streamed through in row blocks.

    Parameters
    ----------
    a : array of shape (n, d)
    b : array of shape (m, d)

    Returns
    -------
    array of shape (n, m), float64
        ``r[i, j]`` = Pearson r of ``a[i]`` and ``b[j]``; NaN where a row is constant or non-finite.
    """
    step = _block(a.shape[1])
    ub = np.empty(b.shape, dtype=np.float64)
    for j in range(0, len(b), step):
        ub[j:j + step] = _unit_rows(b[j:j + step])
    r = np.empty((len(a), len(b)))
    for i in range(0, len(a), step):
        r[i:i + step] = _unit_rows(a[i:i + step]) @ ub.T
    return r


def _valid_rows(gt_feats: np.ndarray, rec_feats: np.ndarray, what: str) -> np.ndarray:
    valid = np.ones(len(gt_feats), dtype=bool)
    step = _block(gt_feats.shape[1])
    for s in range(0, len(gt_feats), step):
        for f in (gt_feats[s:s + step], rec_feats[s:s + step]):
            f = np.asarray(f, dtype=np.float64)
            valid[s:s + step] &= np.isfinite(f).all(axis=1) & (f.max(axis=1) > f.min(axis=1))
    bad = np.flatnonzero(~valid)
    if bad.size:
        logger.warning("%s: %d image(s) have non-finite or constant features and are excluded: %s",
                       what, bad.size, bad[:20].tolist())
    return valid


def two_way_identification(gt_feats: np.ndarray, rec_feats: np.ndarray) -> np.ndarray:
    """Per-image two-way identification accuracy (Brain-Diffuser's ``pairwise_corr_all``).

    With r the Pearson matrix (rows ground truths, columns reconstructions), reconstruction i
    scores ``#{j != i : r[j, i] < r[i, i]} / (N - 1)``; the metric is the mean (chance 0.5).
    Images whose features are non-finite or constant (ground truth or reconstruction) are
    dropped from both the rows and the columns, and N is the number of remaining images.

    Parameters
    ----------
    gt_feats : array of shape (n, d) (or (n, ...), flattened)
    rec_feats : array of shape (n, d)

    Returns
    -------
    array of shape (n,), float64
        Fractions in [0, 1]; NaN for excluded images (and for all when fewer than 2 remain).
    """
    gt_feats, rec_feats = _check_features(gt_feats, rec_feats)
    valid = _valid_rows(gt_feats, rec_feats, "two-way identification")
    out = np.full(len(gt_feats), np.nan)
    idx = np.flatnonzero(valid)
    if idx.size < 2:
        logger.warning("two-way identification needs at least 2 valid images, found %d", idx.size)
        return out
    r = pearson_matrix(gt_feats[idx], rec_feats[idx])
    wins = (r < np.diag(r)[None, :]).sum(axis=0)  # the diagonal never counts (strict <)
    out[idx] = wins / (idx.size - 1)
    return out


def correlation_distance(gt_feats: np.ndarray, rec_feats: np.ndarray) -> np.ndarray:
    """Per-image correlation distance ``1 - r(gt_i, rec_i)`` (scipy.spatial.distance.correlation).

    Parameters
    ----------
    gt_feats : array of shape (n, d)
    rec_feats : array of shape (n, d)

    Returns
    -------
    array of shape (n,), float64
        In [0, 2], lower is better; NaN where a row is non-finite or constant.
    """
    gt_feats, rec_feats = _check_features(gt_feats, rec_feats)
    valid = _valid_rows(gt_feats, rec_feats, "correlation distance")
    out = np.full(len(gt_feats), np.nan)
    if valid.any():
        out[valid] = 1.0 - _row_pearson(gt_feats[valid], rec_feats[valid])
    return out


def identification_pvalue(score: float, n: int) -> float:
    """One-sided binomial p-value of an identification score over n images (as Brain-Diffuser).

    ``1 - binom.cdf(score * n * (n - 1), n * (n - 1), 0.5)``.
    """
    trials = n * (n - 1)
    return float(1.0 - stats.binom.cdf(score * trials, trials, 0.5))


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    """One column of the evaluation table.

    Attributes
    ----------
    name : str
        Column name ("PixCorr", "SSIM (column)", ...).
    kind : str
        "pixcorr", "ssim", "identification" or "distance".
    higher_is_better : bool
    feature : str or None
        For feature metrics, the key of :data:`fmri2img.metrics.features.EVAL_NETS`.
    published : float or None
        Brain-Diffuser's reported value (mean of subjects 1/2/5/7; identification as a fraction).
    description : str
    """

    name: str
    kind: str
    higher_is_better: bool
    feature: str | None
    published: float | None
    description: str

    @property
    def direction(self) -> str:
        """"higher" or "lower" (which values are better)."""
        return "higher" if self.higher_is_better else "lower"


_METRIC_LIST = [
    Metric("PixCorr", "pixcorr", True, None, 0.254,
           "Pearson r of RGB pixels at 425 x 425 (reconstruction resized with PIL bicubic)"),
    Metric("SSIM (column)", "ssim", True, None, 0.356,
           "Brain-Diffuser's SSIM: mean of 1-D Gaussian SSIMs down the columns of the grayscale images "
           "(scikit-image 0.17 multichannel=True on 2-D input)"),
    Metric("SSIM-2D", "ssim", True, None, None, "true 2-D Gaussian SSIM of the grayscale images"),
    Metric("AlexNet(2)", "identification", True, "alexnet2", 0.942,
           "two-way identification, AlexNet features[4] (ReLU after conv2)"),
    Metric("AlexNet(5)", "identification", True, "alexnet5", 0.962,
           "two-way identification, AlexNet features[11] (ReLU after conv5)"),
    Metric("InceptionV3", "identification", True, "inceptionv3", 0.872,
           "two-way identification, InceptionV3 avgpool (2048)"),
    Metric("CLIP", "identification", True, "clip", 0.915,
           "two-way identification, CLIP ViT-L/14 projected image embedding (768)"),
    Metric("EffNet-B", "distance", False, "efficientnet_b1", 0.775,
           "mean correlation distance, EfficientNet-B1 avgpool (1280)"),
    Metric("SwAV", "distance", False, "swav", 0.423, "mean correlation distance, SwAV ResNet-50 avgpool (2048)"),
]

#: Every metric of the evaluation table, by column name, in the table's order.
METRICS: dict[str, Metric] = {m.name: m for m in _METRIC_LIST}

_FEATURE_SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "identification": two_way_identification,
    "distance": correlation_distance,
}
_IMAGE_SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "PixCorr": pixcorr,
    "SSIM (column)": lambda gt, rec: ssim(gt, rec, mode="column"),
    "SSIM-2D": lambda gt, rec: ssim(gt, rec, mode="2d"),
}


def per_image_scores(gt_images: np.ndarray | None = None, rec_images: np.ndarray | None = None,
                     gt_features: Mapping[str, np.ndarray] | None = None,
                     rec_features: Mapping[str, np.ndarray] | None = None,
                     metrics: list[str] | None = None) -> dict[str, np.ndarray]:
    """Compute per-image values of several metrics of :data:`METRICS`.

    Parameters
    ----------
    gt_images, rec_images : arrays of shape (n, H, W, 3), uint8, optional
        Needed for PixCorr and the SSIMs.
    gt_features, rec_features : mapping of feature name to array of shape (n, d), optional
        Keys as :attr:`Metric.feature` ("alexnet2", "clip", ...).
    metrics : list of str, optional
        Column names; default: every metric whose inputs are given.

    Returns
    -------
    dict of str to array of shape (n,)
    """
    gt_features, rec_features = dict(gt_features or {}), dict(rec_features or {})
    have_images = gt_images is not None and rec_images is not None
    if metrics is None:
        metrics = [m.name for m in _METRIC_LIST
                   if (m.feature is None and have_images)
                   or (m.feature in gt_features and m.feature in rec_features)]
    out: dict[str, np.ndarray] = {}
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"metric {name!r} is not known: use one of {list(METRICS)}")
        m = METRICS[name]
        if m.feature is None:
            if not have_images:
                raise ValueError(f"metric {name!r} needs gt_images and rec_images")
            out[name] = _IMAGE_SCORERS[name](gt_images, rec_images)
        else:
            missing = [w for w, f in (("gt_features", gt_features), ("rec_features", rec_features))
                       if m.feature not in f]
            if missing:
                raise ValueError(f"metric {name!r} needs features {m.feature!r} in {' and '.join(missing)}: "
                                 f"extract them with fmri2img.metrics.features.eval_features({m.feature!r}, ...)")
            out[name] = _FEATURE_SCORERS[m.kind](gt_features[m.feature], rec_features[m.feature])
    return out


def summarize(per_image: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Summarise per-image values NaN-safely: a non-finite value is excluded and counted, never averaged.

    Parameters
    ----------
    per_image : mapping of metric name to array of shape (n,)
        As returned by the scoring functions (NaN marks an excluded image).

    Returns
    -------
    dict of metric name to dict
        ``mean`` and ``sem`` (standard error, ddof=1) over the valid images, or None when too
        few are valid (0 for the mean, fewer than 2 for the sem); ``n_valid``; ``n_excluded``;
        ``excluded`` (indices of the excluded images); for metrics of :data:`METRICS` also
        ``direction``, ``published``, and for identification metrics ``p_value`` (binomial,
        over the valid images).
    """
    out: dict[str, dict] = {}
    for name, values in per_image.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        ok = np.isfinite(values)
        v = values[ok]
        row: dict = {
            "mean": float(v.mean()) if v.size else None,
            "sem": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None,
            "n_valid": int(v.size),
            "n_excluded": int((~ok).sum()),
            "excluded": np.flatnonzero(~ok).tolist(),
        }
        if row["n_excluded"]:
            logger.warning("%s: %d of %d image(s) excluded (non-finite): %s", name, row["n_excluded"],
                           values.size, row["excluded"][:20])
        m = METRICS.get(name)
        if m is not None:
            row["direction"] = m.direction
            row["published"] = m.published
            if m.kind == "identification" and v.size > 1:
                row["p_value"] = identification_pvalue(row["mean"], v.size)
        out[name] = row
    return out
