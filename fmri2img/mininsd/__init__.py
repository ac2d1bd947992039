"""mini-NSD: generated datasets in NSD's file layouts, for the demo, the tests and benchmarks.

A producer of datasets, not a store: it writes files in the layouts that
:mod:`fmri2img.storage.nsd` reads (and knows nothing of the Zarr store).

- :mod:`~fmri2img.mininsd.spec`: :class:`MiniNSDSpec` (sizes, options) and per-purpose randomness;
- :mod:`~fmri2img.mininsd.cortex`: the simulated visual cortex (anatomy, receptive fields, tuning);
- :mod:`~fmri2img.mininsd.responses`: each session's single-trial betas;
- :mod:`~fmri2img.mininsd.files`: NSD's file formats (MATLAB design, CSV, NIfTI, HDF5);
- :mod:`~fmri2img.mininsd.imagery`: NSD-Imagery's files;
- :mod:`~fmri2img.mininsd.generate`: :func:`generate_mini_nsd`, which writes a whole dataset.
"""
from fmri2img.mininsd.generate import generate_mini_nsd
from fmri2img.mininsd.spec import MiniNSDSpec

__all__ = ["MiniNSDSpec", "generate_mini_nsd"]
