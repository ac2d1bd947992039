"""fmri2img.metrics.scores against direct NumPy / SciPy / scikit-image computations on tiny seeded data."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats
from scipy.spatial.distance import correlation as scipy_correlation
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from fmri2img.metrics import scores
from fmri2img.metrics.scores import (METRICS, correlation_distance, identification_pvalue, per_image_scores,
                                     pixcorr, ssim, summarize, two_way_identification)


def _images(n, size, seed, smooth=True):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(n, size, size, 3))
    if smooth:  # photograph-like spatial structure so SSIM is far from 0 and from 1
        x = ndimage.gaussian_filter(x, sigma=(0, 2, 2, 0))
        x = (x - x.min()) / (x.max() - x.min()) * 255
    return np.rint(x).astype(np.uint8)


def _noisy(images, seed, scale=30.0):
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, scale, images.shape), 0, 255).astype(np.uint8)


def _bicubic(img, side):
    return np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC))


# ------------------------------------------------------------------ PixCorr
def test_pixcorr_equals_corrcoef_with_bicubic_resize_at_425():
    gt = _images(2, 425, 0)
    rec = _noisy(np.stack([_bicubic(g, 512) for g in gt]), 1)  # reconstructions are 512 x 512
    got = pixcorr(gt, rec)
    for i in range(2):
        r = _bicubic(rec[i], 425) / 255.0
        want = np.corrcoef(r.reshape(1, -1), (gt[i] / 255.0).reshape(1, -1))[0, 1]
        assert got[i] == pytest.approx(want, abs=1e-12)
    assert 0.3 < got.min() and got.max() < 1.0


def test_pixcorr_same_size_needs_no_resize():
    gt, rec = _images(3, 32, 2), _images(3, 32, 3)
    want = [np.corrcoef(gt[i].ravel().astype(float), rec[i].ravel().astype(float))[0, 1] for i in range(3)]
    np.testing.assert_allclose(pixcorr(gt, rec), want, atol=1e-12)


# ------------------------------------------------------------------ SSIM
def _gaussian_ssim_map(x, y, axes):
    """Direct NumPy/SciPy SSIM map: Gaussian sigma 1.5 (truncate 3.5), population covariance, L = 1."""
    def f(a):
        for ax in axes:
            a = ndimage.gaussian_filter1d(a, 1.5, axis=ax, truncate=3.5, mode="reflect")
        return a
    ux, uy = f(x), f(y)
    vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


def test_ssim_column_is_the_mean_of_1d_column_ssims():
    """Brain-Diffuser's SSIM = mean over columns of the 1-D SSIM down each column.

    skimage 0.17 ``multichannel=True`` on a 2-D (H, W) gray image loops over the last axis,
    so each "channel" is a column g[:, c], a 1-D signal with its own 11-tap Gaussian SSIM,
    cropped by 5 samples at each end; the result is the mean over the W columns.  Checked
    two ways: a vectorised NumPy version (1-D filter along axis 0 only, crop rows only) and
    scikit-image called on each 1-D column separately.
    """
    gt = _images(2, 64, 4)
    rec = _noisy(np.stack([_bicubic(g, 80) for g in gt]), 5)
    got = ssim(gt, rec, mode="column")
    for i in range(2):
        g = rgb2gray(gt[i] / 255.0)
        r = rgb2gray(_bicubic(rec[i], 64) / 255.0)
        numpy_ref = _gaussian_ssim_map(g, r, axes=(0,))[5:-5, :].mean()
        per_column = np.mean([structural_similarity(g[:, c], r[:, c], gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False, data_range=1.0)
                              for c in range(g.shape[1])])
        assert got[i] == pytest.approx(numpy_ref, abs=1e-10)
        assert got[i] == pytest.approx(per_column, abs=1e-12)


def test_ssim_2d_equals_skimage_and_numpy():
    gt = _images(2, 48, 6)
    rec = _noisy(gt, 7)
    got = ssim(gt, rec, mode="2d")
    for i in range(2):
        g, r = rgb2gray(gt[i]), rgb2gray(rec[i])  # uint8 → float in [0, 1] inside rgb2gray
        want = structural_similarity(g, r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0)
        numpy_ref = _gaussian_ssim_map(g, r, axes=(0, 1))[5:-5, 5:-5].mean()
        assert got[i] == pytest.approx(want, abs=1e-12)
        assert got[i] == pytest.approx(numpy_ref, abs=1e-10)
    assert not np.allclose(got, ssim(gt, rec, mode="column"), atol=1e-3)  # the two modes really differ


def test_ssim_identical_images_is_one_and_bad_mode_is_refused():
    gt = _images(1, 32, 8)
    np.testing.assert_allclose(ssim(gt, gt, "column"), 1.0)
    np.testing.assert_allclose(ssim(gt, gt, "2d"), 1.0)
    with pytest.raises(ValueError, match=r"ssim mode 'columns' is not known: use one of \['2d', 'column'\]"):
        ssim(gt, gt, mode="columns")


# ------------------------------------------------------------------ identification and distance
def _features(n, d, seed, noise=1.0):
    rng = np.random.default_rng(seed)
    gt = rng.normal(size=(n, d)).astype(np.float32)
    rec = (gt + noise * rng.normal(size=(n, d))).astype(np.float32)
    return gt, rec


def _brain_diffuser_identification(gt, rec):
    n = len(gt)
    r = np.corrcoef(gt, rec)[:n, n:]
    wins = np.array([sum(r[j, i] < r[i, i] for j in range(n) if j != i) for i in range(n)])
    return wins / (n - 1)


@pytest.mark.parametrize("block_bytes", [1 << 27, 8 * 7 * 5])  # one block, and blocks of 5 rows
def test_identification_equals_direct_corrcoef(monkeypatch, block_bytes):
    monkeypatch.setattr(scores, "_BLOCK_BYTES", block_bytes)
    gt, rec = _features(23, 7, 9, noise=2.0)
    got = two_way_identification(gt, rec)
    np.testing.assert_allclose(got, _brain_diffuser_identification(gt, rec), atol=0)
    assert 0.5 < got.mean() < 1.0
    np.testing.assert_allclose(scores.pearson_matrix(gt, rec), np.corrcoef(gt, rec)[:23, 23:], atol=1e-12)


def test_identification_flattens_feature_maps_and_perfect_is_one():
    gt = np.random.default_rng(10).normal(size=(6, 4, 3, 3))
    np.testing.assert_array_equal(two_way_identification(gt, gt * 2 + 1), 1.0)


def test_correlation_distance_equals_scipy():
    gt, rec = _features(9, 50, 11)
    want = [scipy_correlation(gt[i].astype(float), rec[i].astype(float)) for i in range(9)]
    np.testing.assert_allclose(correlation_distance(gt, rec), want, atol=1e-12)


def test_identification_pvalue_equals_binomial_tail():
    assert identification_pvalue(0.6, 20) == pytest.approx(1 - stats.binom.cdf(0.6 * 380, 380, 0.5))


# ------------------------------------------------------------------ NaN safety
def test_nan_image_is_reported_and_excluded():
    gt = _images(4, 32, 12).astype(np.float32)
    rec = _noisy(_images(4, 32, 12), 13)
    gt[2, 5, 7, 1] = np.nan
    per = per_image_scores(gt, rec)
    assert list(per) == ["PixCorr", "SSIM (column)", "SSIM-2D"]
    for name, values in per.items():
        assert np.isnan(values[2]) and np.isfinite(values[[0, 1, 3]]).all(), name
    summary = summarize(per)
    for name, row in summary.items():
        assert row["n_valid"] == 3 and row["n_excluded"] == 1 and row["excluded"] == [2]
        assert row["mean"] == pytest.approx(np.mean(per[name][[0, 1, 3]]))
        assert row["sem"] == pytest.approx(stats.sem(per[name][[0, 1, 3]]))
    # the valid images score exactly as if the bad one were absent
    keep = [0, 1, 3]
    np.testing.assert_allclose(per["PixCorr"][keep], pixcorr(gt[keep].astype(np.uint8), rec[keep]))


def test_nan_feature_row_drops_its_row_and_column():
    gt, rec = _features(12, 20, 14, noise=1.5)
    rec[4, 3] = np.nan
    gt[9] = 0.5  # constant: Pearson r undefined
    got = two_way_identification(gt, rec)
    keep = [i for i in range(12) if i not in (4, 9)]
    assert np.isnan(got[[4, 9]]).all()
    np.testing.assert_allclose(got[keep], _brain_diffuser_identification(gt[keep], rec[keep]))  # ÷ (10 − 1)
    dist = correlation_distance(gt, rec)
    assert np.isnan(dist[[4, 9]]).all() and np.isfinite(dist[keep]).all()
    row = summarize({"AlexNet(2)": got, "EffNet-B": dist})
    assert row["AlexNet(2)"]["n_valid"] == 10 and row["AlexNet(2)"]["n_excluded"] == 2
    assert row["AlexNet(2)"]["direction"] == "higher" and row["EffNet-B"]["direction"] == "lower"
    assert 0 <= row["AlexNet(2)"]["p_value"] <= 1 and "p_value" not in row["EffNet-B"]


def test_summary_is_never_nan():
    row = summarize({"x": np.array([np.nan, np.nan]), "y": np.array([0.3])})
    assert row["x"]["mean"] is None and row["x"]["n_excluded"] == 2
    assert row["y"]["mean"] == 0.3 and row["y"]["sem"] is None


# ------------------------------------------------------------------ registry and errors
def test_metrics_registry_names_all_columns():
    assert list(METRICS) == ["PixCorr", "SSIM (column)", "SSIM-2D", "AlexNet(2)", "AlexNet(5)", "InceptionV3",
                             "CLIP", "EffNet-B", "SwAV"]
    published = {k: m.published for k, m in METRICS.items()}
    assert published == {"PixCorr": 0.254, "SSIM (column)": 0.356, "SSIM-2D": None, "AlexNet(2)": 0.942,
                         "AlexNet(5)": 0.962, "InceptionV3": 0.872, "CLIP": 0.915, "EffNet-B": 0.775,
                         "SwAV": 0.423}
    assert [k for k, m in METRICS.items() if not m.higher_is_better] == ["EffNet-B", "SwAV"]


def test_per_image_scores_from_features():
    gt, rec = _features(8, 10, 15)
    per = per_image_scores(gt_features={"swav": gt, "clip": gt}, rec_features={"swav": rec, "clip": rec})
    assert list(per) == ["CLIP", "SwAV"]
    np.testing.assert_allclose(per["SwAV"], correlation_distance(gt, rec))
    with pytest.raises(ValueError, match=r"'AlexNet\(2\)' needs features 'alexnet2' in gt_features and rec_features"):
        per_image_scores(metrics=["AlexNet(2)"])


@pytest.mark.parametrize("gt, rec, match", [
    (np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.uint8), r"gt has shape \(2, 8, 8\) but must be"),
    (np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8, 3), np.uint8), "gt has 2 images but rec has 3"),
    (np.zeros((1, 8, 8, 3), np.int64), np.zeros((1, 8, 8, 3), np.uint8), "dtype int64 but must be uint8"),
    (np.zeros((1, 8, 8, 3)), np.ones((1, 8, 8, 3)) * 300, r"values in \[300, 300\] but must be in \[0, 255\]"),
])
def test_bad_images_get_one_clear_error(gt, rec, match):
    with pytest.raises(ValueError, match=match):
        pixcorr(gt, rec)


def test_bad_features_get_one_clear_error():
    with pytest.raises(ValueError, match=r"gt_feats has shape \(3, 4\) but rec_feats has \(3, 5\)"):
        two_way_identification(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"gt_feats has shape \(3,\) but must be \(n_images, n_features\)"):
        correlation_distance(np.zeros(3), np.zeros(3))
