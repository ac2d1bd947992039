"""The ingest stage: NSD-format files → the store, one task per session file.

- :mod:`~fmri2img.pipeline.ingest.nsd`: the main experiment (betas, stimuli, captions, splits);
- :mod:`~fmri2img.pipeline.ingest.imagery`: NSD-Imagery's betas and targets;
- :mod:`~fmri2img.pipeline.ingest.resume`: which inputs changed since the last run (what to redo).
"""
