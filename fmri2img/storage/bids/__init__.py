"""BIDS datasets with fMRIPrep derivatives, read from any fsspec URL: the GLM stage's input.

- :mod:`.dataset`: :func:`open_bids` and :class:`BIDSDataset` (participants, sessions, tasks,
  spaces, runs with their files), over ``fmri2img.storage.urls.filesystem``;
- :mod:`.entities`: file-name entities and the BIDS Inheritance Principle (why not pybids or
  bids-validator at run time: see that module);
- :mod:`.tables`: JSON sidecars and TSV tables;
- :mod:`.nifti`: NIfTI headers, brain masks, time series streamed volume by volume, cubic resampling;
- :mod:`.confounds`: fMRIPrep confounds by named strategies, with nilearn's column choices;
- :mod:`.design`: events → trials on a time grid ("round" or NSD's "resample"), conditions,
  GLMsingle's onset matrices; the slice-timing assumption;
- :mod:`.plan`: :func:`prepare_glm_inputs`, which checks every input before anything is written.

Every bad input raises one :class:`BIDSError` subclass (a ValueError) whose message names the
file or field, what was expected (listing what exists) and the fix; the errors pickle.
"""

from fmri2img.storage.bids.confounds import COMPONENTS, PRESETS, ConfoundStrategy, confound_regressors, parse_strategy
from fmri2img.storage.bids.dataset import DEFAULT_DERIVATIVES, BIDSDataset, BoldRun, open_bids
from fmri2img.storage.bids.design import ONSET_METHODS, Grid, RunTiming, build_design, choose_grid, event_trials
from fmri2img.storage.bids.entities import BIDSName, applicable_files, format_name, parse_name
from fmri2img.storage.bids.errors import (BIDSError, BIDSFormatError, BIDSSelectionError, ConfoundsError,
                                          DerivativesMissingError, EventsError, MetadataError, NotBIDSError,
                                          OnsetGridError, TRMismatchError)
from fmri2img.storage.bids.nifti import NiftiInfo, mask_voxels, read_mask, read_nifti_info, read_timeseries
from fmri2img.storage.bids.nifti import resample_matrix
from fmri2img.storage.bids.plan import GLMInputs, RunInputs, prepare_glm_inputs
from fmri2img.storage.bids.tables import read_json, read_tsv

__all__ = [
    "BIDSDataset", "BIDSError", "BIDSFormatError", "BIDSName", "BIDSSelectionError", "BoldRun", "COMPONENTS",
    "ConfoundStrategy", "ConfoundsError", "DEFAULT_DERIVATIVES", "DerivativesMissingError", "EventsError",
    "GLMInputs", "Grid", "MetadataError", "NiftiInfo", "NotBIDSError", "ONSET_METHODS", "OnsetGridError",
    "PRESETS", "RunInputs", "RunTiming", "TRMismatchError", "applicable_files", "build_design", "choose_grid",
    "confound_regressors", "event_trials", "format_name", "mask_voxels", "open_bids", "parse_name",
    "parse_strategy", "prepare_glm_inputs", "read_json", "read_mask", "read_nifti_info", "read_timeseries",
    "read_tsv", "resample_matrix",
]
