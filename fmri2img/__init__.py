"""fmri2img: decode fMRI into images (Brain-Diffuser) on chunked Zarr stores and Dask."""

__version__ = "0.1.0"
