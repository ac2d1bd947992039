"""The glm stage: time series → single-trial betas (GLMsingle as a chunked Dask computation).

- :mod:`~fmri2img.pipeline.glm.stage`: :func:`glm_session`, the driver of one session;
- :mod:`~fmri2img.pipeline.glm.tasks`: its per-run and per-voxel-block tasks;
- :mod:`~fmri2img.pipeline.glm.groups`: where it writes and the templates;
- :mod:`~fmri2img.pipeline.glm.inputs`: what it fits (arrays, NSD time series; BIDS in
  :mod:`~fmri2img.pipeline.glm.bids_inputs`);
- :mod:`~fmri2img.pipeline.glm.run`: ``fmri2img glm`` on NSD's layout; :mod:`~fmri2img.pipeline.glm.bids_run`:
  ``fmri2img glm --bids`` (a new person's own store subject), with the stimuli matched by pixels
  (:mod:`~fmri2img.pipeline.glm.stimuli`).
"""
