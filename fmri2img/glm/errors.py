"""Bad-input errors of the single-trial GLM: one class per problem, all ``ValueError``.

Every error names the input, says what was found, what was expected and how to fix
it. The classes take a single message argument and define no ``__init__`` of their own,
so ``pickle.loads(pickle.dumps(err))`` gives back the same class and message (a Dask
worker's exception reaches the client intact).
"""

from __future__ import annotations

__all__ = [
    "GlmInputError",
    "RunTimingError",
    "DesignError",
    "RepeatsError",
    "VoxelDataError",
    "HrfLibraryError",
    "GlmOptionError",
]


class GlmInputError(ValueError):
    """Base class of every bad-input error raised by :mod:`fmri2img.glm`."""


class RunTimingError(GlmInputError):
    """Runs disagree on their TR, or a run's data and design differ in length."""


class DesignError(GlmInputError):
    """The design matrix is malformed or holds no trials."""


class RepeatsError(GlmInputError):
    """A cross-validated choice (pcnum or ridge fraction) has no repeated conditions to use."""


class VoxelDataError(GlmInputError):
    """Voxel time series hold NaN/inf, are constant, or have the wrong shape."""


class HrfLibraryError(GlmInputError):
    """An HRF library (or assumed HRF) has the wrong shape, length or time step."""


class GlmOptionError(GlmInputError):
    """An option has a bad value, or a preset or option name is unknown."""
