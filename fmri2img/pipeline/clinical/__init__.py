"""The clinical path: the method's fitted models applied to data that was not in the training split.

- :mod:`~fmri2img.pipeline.clinical.decode`: new betas (a session file or masked voxels) → predictions,
  reconstructions, metrics when the images shown are known;
- :mod:`~fmri2img.pipeline.clinical.align`: a new subject's voxels → a fitted reference subject's space;
- :mod:`~fmri2img.pipeline.clinical.imagery`: NSD-Imagery's betas decoded and scored per task;
- :mod:`~fmri2img.pipeline.clinical.scores`: the eight metrics of decoded trials;
- :mod:`~fmri2img.pipeline.clinical.page`: the page that shows decoded pictures beside what was seen;
- :mod:`~fmri2img.pipeline.clinical.configured`: ``[decode]`` → the function to call and its arguments;
- :mod:`~fmri2img.pipeline.clinical.common`: what they share (the input, its groups, the models).
"""
