"""The embedded default: mini-NSD → every stage → a report (``fmri2img demo``).

- :mod:`~fmri2img.demo.run`: generates mini-NSD, trains the demo VDVAE, runs every stage, writes the report;
- :mod:`~fmri2img.demo.vdvae`: the demo VDVAE, trained on mini-NSD's training photographs and cached.
"""
