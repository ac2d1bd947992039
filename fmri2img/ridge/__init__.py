"""The regression math: shared-factorisation ridge streamed over target blocks.

Pure functions on arrays (:mod:`.solvers`, :mod:`.selection`, :mod:`.calibration`,
:mod:`.sgd`) plus one sklearn / dask-ml style estimator, :class:`BlockRidge`, whose
heavy linear algebra runs in NumPy/SciPy or, with ``device=``, in torch on a CPU or GPU
(:mod:`.backends`). Nothing here knows about stores, URLs or schedulers.
"""

from ._validation import (
    DeviceUnavailableError,
    ImageIdMismatchError,
    InvalidAlphaError,
    NonFiniteInputError,
    RidgeInputError,
    SampleCountMismatchError,
    TargetShapeError,
    check_same_images,
)
from .calibration import CALIBRATIONS
from .estimator import BlockRidge
from .preprocess import Standardizer, fit_standardizer
from .presets import (
    ALPHA_CLIP_TEXT,
    ALPHA_CLIP_VISION,
    ALPHA_VDVAE,
    BRAIN_DIFFUSER_ALPHAS,
    FMRI_SCALE,
    VDVAE_REDUCED_COLUMNS,
)
from .selection import SCORERS, gcv_scores, group_labels, loo_scores, select_alphas
from .sgd import sgd_ridge
from .shared import fit_shared
from .solvers import FACTORIZERS, choose_form, factorize, ridge_predict, ridge_weights

__all__ = [
    "BlockRidge",
    "fit_shared",
    "ridge_predict",
    "ridge_weights",
    "factorize",
    "choose_form",
    "FACTORIZERS",
    "gcv_scores",
    "loo_scores",
    "SCORERS",
    "select_alphas",
    "group_labels",
    "CALIBRATIONS",
    "sgd_ridge",
    "Standardizer",
    "fit_standardizer",
    "check_same_images",
    "RidgeInputError",
    "NonFiniteInputError",
    "SampleCountMismatchError",
    "InvalidAlphaError",
    "ImageIdMismatchError",
    "TargetShapeError",
    "DeviceUnavailableError",
    "BRAIN_DIFFUSER_ALPHAS",
    "ALPHA_VDVAE",
    "ALPHA_CLIP_TEXT",
    "ALPHA_CLIP_VISION",
    "FMRI_SCALE",
    "VDVAE_REDUCED_COLUMNS",
]
