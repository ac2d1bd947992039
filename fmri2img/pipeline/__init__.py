"""The stages: each a thin function from store groups to store groups (DESIGN.md's flow).

Importing this package registers the configuration checks that stages declare beside their
code (:func:`fmri2img.config.register_check`): the regress stage's ridge options and the
reconstruct stage's runs.
"""
from fmri2img.pipeline import reconstruct, regress  # noqa: F401  (registers their configuration checks)
