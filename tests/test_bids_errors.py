"""Bad BIDS input: one clear error (class, file or field, what exists, the fix), nothing written, and it pickles."""
from __future__ import annotations

import gzip
import json
import pickle

import pandas as pd
import pytest

from fmri2img.storage import bids
from tests.test_bids_fixtures import bids_copy, bids_mini, bids_root, tree_bytes  # noqa: F401

FUNC = "sub-01/ses-01/func"
DFUNC = f"derivatives/fmriprep/{FUNC}"
RUN1 = "sub-01_ses-01_task-images_run-1"


def _edit_tsv(path, change) -> None:
    table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    change(table).to_csv(path, sep="\t", index=False, na_rep="n/a")


def _edit_json(path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _set_onset(table: pd.DataFrame) -> pd.DataFrame:
    table.loc[table.index[-1], "onset"] = 1000.0
    return table


# name -> (how to break the copy, prepare_glm_inputs arguments, error class, fragments the message must hold)
CASES = {
    "not BIDS": (lambda root: (root / "dataset_description.json").unlink(), {}, bids.NotBIDSError,
                 ["dataset_description.json", "'sub-01/'", "Fix:"]),
    "no derivatives": (lambda root: (root / "derivatives/fmriprep/dataset_description.json").unlink(), {},
                       bids.NotBIDSError, ["derivatives", "--derivatives"]),
    "participant": (None, {"participant": "02"}, bids.BIDSSelectionError, ["'02'", "'01'"]),
    "session": (None, {"session": "ses-02"}, bids.BIDSSelectionError, ["'02'", "sessions '01'"]),
    "task": (None, {"task": "rest"}, bids.BIDSSelectionError, ["'rest'", "'images'"]),
    "space": (None, {"space": "MNI152NLin2009cAsym"}, bids.BIDSSelectionError, ["MNI152NLin2009cAsym", "'T1w'",
                                                                               "--output-spaces"]),
    "events without onset": (lambda root: _edit_tsv(root / FUNC / f"{RUN1}_events.tsv",
                                                    lambda t: t.drop(columns="onset")), {}, bids.EventsError,
                             ["_events.tsv", "'onset'", "'duration', 'trial_type', 'stim_file'"]),
    "events without the stimulus column": (None, {"stim_column": "nsd_id"}, bids.EventsError,
                                           ["'nsd_id'", "'onset', 'duration', 'trial_type', 'stim_file'",
                                            "--stim-column"]),
    "onset beyond the run": (lambda root: _edit_tsv(root / FUNC / f"{RUN1}_events.tsv", _set_onset), {},
                             bids.EventsError, ["1000", "outside the run", "volumes"]),
    "no preproc bold": (lambda root: (root / DFUNC / f"{RUN1}_space-T1w_desc-preproc_bold.nii.gz").unlink(), {},
                        bids.DerivativesMissingError, ["preprocessed BOLD", "desc-preproc_bold.nii.gz",
                                                       "desc-confounds_timeseries.tsv"]),
    "no brain mask": (lambda root: (root / DFUNC / f"{RUN1}_space-T1w_desc-brain_mask.nii.gz").unlink(), {},
                      bids.DerivativesMissingError, ["brain mask", "desc-brain_mask.nii.gz"]),
    "no confounds": (lambda root: (root / DFUNC / f"{RUN1}_desc-confounds_timeseries.tsv").unlink(), {},
                     bids.DerivativesMissingError, ["confounds table", "desc-confounds_timeseries.tsv"]),
    "TR sidecar vs header": (lambda root: _edit_json(root / "task-images_bold.json", RepetitionTime=2.0), {},
                             bids.TRMismatchError, ["RepetitionTime is 2 s", "1.6 s", "NIfTI header"]),
    "no RepetitionTime": (lambda root: (root / "task-images_bold.json").write_text('{"TaskName": "images"}'), {},
                          bids.MetadataError, ["RepetitionTime", "'SliceTiming'"]),
    "confound columns missing": (lambda root: _edit_tsv(root / DFUNC / f"{RUN1}_desc-confounds_timeseries.tsv",
                                                        lambda t: t.drop(columns=["rot_z_power2", "csf"])),
                                 {"confounds": "simple"}, bids.ConfoundsError,
                                 ["'simple'", "'rot_z_power2'", "'csf'", "lacks"]),
    "compcor without its json": (lambda root: (root / DFUNC / f"{RUN1}_desc-confounds_timeseries.json").unlink(),
                                 {"confounds": "compcor"}, bids.ConfoundsError, [".json", "Mask"]),
    "unknown strategy": (None, {"confounds": "motion+aroma"}, bids.ConfoundsError, ["'aroma'", "'compcor'"]),
    "confounds of another length": (lambda root: _edit_tsv(root / DFUNC / f"{RUN1}_desc-confounds_timeseries.tsv",
                                                           lambda t: t.iloc[:-3]), {}, bids.BIDSFormatError,
                                    ["rows", "volumes"]),
}


def _raise(root, args: dict):
    args = {"participant": "01", **args}
    return bids.prepare_glm_inputs(str(root), args.pop("participant"), **args)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_error_and_writes_nothing(bids_copy, name):
    breaker, args, kind, fragments = CASES[name]
    if breaker is not None:
        breaker(bids_copy)
    before = tree_bytes(bids_copy.parent)
    with pytest.raises(kind) as err:
        _raise(bids_copy, args)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "Fix:" in message and isinstance(err.value, ValueError)
    assert tree_bytes(bids_copy.parent) == before  # nothing written, nothing changed
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is type(err.value) and str(again) == message


def test_a_folder_that_does_not_exist_is_not_bids(tmp_path):
    with pytest.raises(bids.NotBIDSError, match="does not exist"):
        bids.open_bids(str(tmp_path / "nowhere"))


def test_truncated_bold_fails_when_read_naming_the_file(bids_copy):
    g = bids.prepare_glm_inputs(str(bids_copy), "01")
    path = bids_copy / DFUNC / f"{RUN1}_space-T1w_desc-preproc_bold.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(bids.BIDSFormatError, match="truncated") as err:
        g.read_run(0)
    assert "desc-preproc_bold.nii.gz" in str(err.value)


def test_mask_on_another_grid_is_refused(bids_copy):
    import nibabel as nib
    import numpy as np

    path = bids_copy / DFUNC / f"{RUN1}_space-T1w_desc-brain_mask.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), path)
    with pytest.raises(bids.BIDSFormatError, match="share a space"):
        bids.prepare_glm_inputs(str(bids_copy), "01")
