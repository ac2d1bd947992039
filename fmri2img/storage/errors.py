"""The storage errors: a URL or its options cannot be used, with the redacted URL and the fix.

A leaf module (no fmri2img imports but :mod:`fmri2img.storage.secrets`), so that every storage
backend (:mod:`~fmri2img.storage.urls`, :mod:`~fmri2img.storage.gdrive`) can raise them.
"""
from __future__ import annotations

from fmri2img.storage.secrets import redact

__all__ = ["StorageError", "UnknownSchemeError", "MissingCredentialsError", "StoreNotWritableError",
           "BackendNotInstalledError", "storage_error"]


class StorageError(ValueError):
    """A storage URL or its options cannot be used; the message says why and the fix."""


class UnknownSchemeError(StorageError):
    """The URL scheme is not one of :data:`SCHEMES`."""


class MissingCredentialsError(StorageError):
    """No credentials were found and anonymous access was not requested."""


class StoreNotWritableError(StorageError):
    """A probe object could not be written to (or deleted from) the store."""


class BackendNotInstalledError(StorageError, ImportError):
    """The optional package for a scheme is not installed."""


def storage_error(cls: type[StorageError], url: str, problem: str, fix: str) -> StorageError:
    """Build one clear error: the redacted URL, what was wrong, and the fix."""
    return cls(f"{redact(url)}: {problem}. Fix: {fix}")
