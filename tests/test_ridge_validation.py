"""Each bad input gives one clear error naming the argument, the problem and the fix."""

import dask.array as da
import numpy as np
import pytest

from fmri2img.ridge import (
    BlockRidge, ImageIdMismatchError, InvalidAlphaError, NonFiniteInputError, RidgeInputError,
    SampleCountMismatchError, TargetShapeError, check_same_images, ridge_predict,
)


def _data(n=20, p=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, p)), rng.normal(size=(n, d))


def test_errors_are_value_errors():
    for cls in (NonFiniteInputError, SampleCountMismatchError, InvalidAlphaError,
                ImageIdMismatchError, TargetShapeError):
        assert issubclass(cls, RidgeInputError) and issubclass(cls, ValueError)


def test_nan_in_X_names_count_and_first_location():
    X, Y = _data()
    X[5, 7] = np.nan
    X[9, 2] = np.inf
    with pytest.raises(NonFiniteInputError, match=r"X holds 2 NaN/inf.*row 5, column 7"):
        BlockRidge().fit(X, Y)


def test_nan_in_dask_X_is_located():
    X, Y = _data()
    X[13, 4] = np.nan
    with pytest.raises(NonFiniteInputError, match=r"X holds 1 NaN/inf.*row 13, column 4"):
        BlockRidge(solver="sgd").fit(da.from_array(X, chunks=(6, 10)), Y)


def test_nan_in_numpy_Y_is_refused_at_fit():
    X, Y = _data()
    Y[3, 1] = np.nan
    with pytest.raises(NonFiniteInputError, match=r"Y holds 1 NaN/inf.*row 3, column 1"):
        BlockRidge().fit(X, Y)


def test_nan_in_streamed_Y_is_reported_with_its_target_index():
    X, Y = _data(d=12)
    Y = Y.reshape(20, 3, 4)
    Y[6, 2, 1] = np.inf
    est = BlockRidge(target_batch=4).fit(X, da.from_array(Y, chunks=(20, 1, 4)))
    with pytest.raises(NonFiniteInputError, match=r"row 6, target index \(2, 1\)"):
        est.predict(X[:3]).compute()


def test_mismatched_sample_counts():
    X, Y = _data()
    with pytest.raises(SampleCountMismatchError, match=r"X has 20 rows.*Y has 19"):
        BlockRidge().fit(X, Y[:19])
    with pytest.raises(SampleCountMismatchError, match="X_train"):
        ridge_predict(X, Y[:19], X, 1.0)


@pytest.mark.parametrize("alpha", [0.0, -5.0, np.nan, [1.0, -1.0], []])
def test_non_positive_alpha(alpha):
    X, Y = _data()
    with pytest.raises(InvalidAlphaError, match="alpha"):
        BlockRidge(alpha=alpha).fit(X, Y)


def test_bad_options_are_named():
    X, Y = _data()
    with pytest.raises(RidgeInputError, match="calibration='zscore' is not one of"):
        BlockRidge(calibration="zscore").fit(X, Y)
    with pytest.raises(RidgeInputError, match="solver="):
        BlockRidge(solver="lsqr").fit(X, Y)
    with pytest.raises(ValueError, match="alpha_groups"):
        BlockRidge(alpha=[1.0, 2.0], alpha_groups="voxel").fit(X, Y)


def test_predict_checks_voxels_and_fitted():
    X, Y = _data()
    with pytest.raises(RidgeInputError, match="not fitted"):
        BlockRidge().predict(X)
    est = BlockRidge().fit(X, Y)
    with pytest.raises(RidgeInputError, match="X has 29 voxels but the model was fitted on 30"):
        est.predict(X[:, :29])
    with pytest.raises(RidgeInputError, match="pattern has 3 voxels"):
        est.push_pattern(np.ones(3))


def test_model_state_needs_the_same_targets():
    X, Y = _data()
    state = BlockRidge().fit(X, Y).get_model_state()
    with pytest.raises(TargetShapeError, match=r"shape \(20, 3\).*\(20, 4\)"):
        BlockRidge.from_model_state(state, Y[:, :3])


def test_check_same_images():
    check_same_images(np.arange(5), np.arange(5), "fmri", "features")
    with pytest.raises(ImageIdMismatchError,
                       match=r"2 of 5 image ids differ between train and features/clip.*position 1: "
                             r"train=1, features/clip=7.*Re-run the features stage"):
        check_same_images([0, 1, 2, 3, 4], [0, 7, 2, 9, 4], "train", "features/clip")
    with pytest.raises(ImageIdMismatchError, match="has 5 image ids but b has 4"):
        check_same_images(np.arange(5), np.arange(4), "a", "b")
