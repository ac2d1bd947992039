"""Readers for the Natural Scenes Dataset (NSD) files, one module per file kind.

* :mod:`.design`: ``nsd_expdesign.mat`` and the train/test split of a subject's trials;
  ``nsd_stim_info_merged.csv``;
* :mod:`.volumes`: NIfTI ROI volumes and masks;
* :mod:`.betas`: single-trial betas (``betas_sessionNN.hdf5`` by byte range over the masked
  voxels' chunks, or ``.nii.gz`` through gzip), with :mod:`.hdf5chunks` walking the HDF5
  chunk index;
* :mod:`.stimuli`: ``nsd_stimuli.hdf5``; :mod:`.captions`: ``COCO_73k_annots_curated.npy``;
* :mod:`.imagery`: NSD-Imagery's ``betas_nsdimagery``, run TSVs and target pictures.
* :mod:`.timeseries`: the pre-processed time series (``nsddata_timeseries``) and their design
  TSVs, streamed volume by volume at the mask's voxels.

The same code reads real NSD from its bucket and the locally generated mini-NSD
(:mod:`fmri2img.mininsd.generate`). Bad input raises one :class:`NSDError` subclass whose
message names the file, what was expected and the fix.
"""

from fmri2img.storage.nsd._common import (BETA_SCALE, BETAS_FORMATS, ECC_ROI_LABELS, PUBLIC_SESSIONS, ROI_FILES,
                                          VISUAL_ROI_LABELS, NSDError, NSDFileMissing, NSDFormatError, NSDLayout)
from fmri2img.storage.nsd.betas import NSD_SCALE, read_session_betas, session_chunk_map
from fmri2img.storage.nsd.captions import read_captions
from fmri2img.storage.nsd.design import ExpDesign, TrialSplit, read_expdesign, read_stim_info, split_trials
from fmri2img.storage.nsd.stimuli import StimuliLayout, read_stimuli, stimuli_layout
from fmri2img.storage.nsd.volumes import read_mask, read_volume
from fmri2img.storage.nsd.timeseries import (NSDDesignError, NSDRunMismatchError, NSDVoxelError, SessionRuns,
                                             TimeseriesLayout, read_run, read_session_runs)

__all__ = [
    "BETA_SCALE", "BETAS_FORMATS", "ECC_ROI_LABELS", "NSD_SCALE", "PUBLIC_SESSIONS", "ROI_FILES", "VISUAL_ROI_LABELS",
    "ExpDesign", "NSDError", "NSDFileMissing", "NSDFormatError", "NSDLayout", "StimuliLayout", "TrialSplit",
    "read_captions", "read_expdesign", "read_mask", "read_session_betas", "read_stim_info", "read_stimuli",
    "read_volume", "session_chunk_map", "split_trials", "stimuli_layout",
    "NSDDesignError", "NSDRunMismatchError", "NSDVoxelError", "SessionRuns", "TimeseriesLayout", "read_run",
    "read_session_runs",
]
