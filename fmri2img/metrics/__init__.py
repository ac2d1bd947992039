"""The evaluation math (Brain-Diffuser's eight metrics) and its feature networks.

- :mod:`fmri2img.metrics.scores`: PixCorr, SSIM (column and 2-D), two-way identification,
  correlation distance, the :data:`~fmri2img.metrics.scores.METRICS` registry and the
  NaN-safe :func:`~fmri2img.metrics.scores.summarize` (pure NumPy/SciPy/scikit-image).
- :mod:`fmri2img.metrics.features`: the 224 × 224 preprocessing, the
  :data:`~fmri2img.metrics.features.EVAL_NETS` registry and
  :func:`~fmri2img.metrics.features.eval_features`.
- :mod:`fmri2img.metrics.nets`: AlexNet, Inception-v3, EfficientNet-B1 and ResNet-50 with
  torchvision's state-dict names.

Importing this package does not import torch; the feature modules do.
"""
from .scores import (METRICS, SSIM_MODES, Metric, correlation_distance, identification_pvalue, pearson_matrix,
                     per_image_scores, pixcorr, ssim, summarize, two_way_identification)

__all__ = ["METRICS", "SSIM_MODES", "Metric", "correlation_distance", "identification_pvalue", "pearson_matrix",
           "per_image_scores", "pixcorr", "ssim", "summarize", "two_way_identification"]
