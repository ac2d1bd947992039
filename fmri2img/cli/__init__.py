"""The ``fmri2img`` command.

- :mod:`~fmri2img.cli.main`: the parser, the dispatch to each command, error handling (``main``);
- :mod:`~fmri2img.cli.data`: ``demo``, ``mini-nsd``, ``ingest``;
- :mod:`~fmri2img.cli.store`: ``status``, ``unlock``, ``report``, ``weights check``;
- :mod:`~fmri2img.cli.clinical`: ``decode``, ``align``;
- :mod:`~fmri2img.cli.runtime`: what the commands share (argument types, the cluster, stage lines).
"""
