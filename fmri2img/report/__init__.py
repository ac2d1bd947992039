"""The report: what a store holds, as pages a person reads (HTML, tables, figures, provenance).

- :mod:`~fmri2img.report.build`: each subject's page and the page comparing subjects;
- :mod:`~fmri2img.report.data`: what the pages show, read from the store;
- :mod:`~fmri2img.report.tables`, :mod:`~fmri2img.report.figures`, :mod:`~fmri2img.report.html`: the parts;
- :mod:`~fmri2img.report.provenance`: where every number came from (configuration redacted).

It reads the store and writes pages; no stage imports it.
"""
