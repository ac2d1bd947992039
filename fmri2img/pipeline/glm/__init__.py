"""The glm stage: time series → single-trial betas (GLMsingle as a chunked Dask computation).

- :mod:`~fmri2img.pipeline.glm.stage`: :func:`glm_session`, the driver of one session;
- :mod:`~fmri2img.pipeline.glm.tasks`: its per-run and per-voxel-block tasks;
- :mod:`~fmri2img.pipeline.glm.groups`: where it writes and the templates;
- :mod:`~fmri2img.pipeline.glm.inputs`: what it fits (arrays, NSD time series, BIDS).
"""
