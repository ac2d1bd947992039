"""Weights files and folders at a URL, opened for the models (which never see a URL).

The ``[weights]`` section and an extractor's ``weights`` option name a local path or an fsspec
URL (``s3://``, ``gs://``, ``gdrive://``, ...), with ``storage_options`` for credentials.
:func:`open_weights` turns one into a :class:`WeightsAt`, the object every loader in
:mod:`fmri2img.models` and :mod:`fmri2img.metrics` takes: a ``name`` for messages (the URL
without credentials), :meth:`~WeightsAt.open` for a single file (a binary file object) and
:meth:`~WeightsAt.local_dir` for a folder format (a transformers or diffusers directory: a local
folder is used in place, a remote one is copied into a temporary folder that is deleted after
loading). It is a small frozen value, picklable, so it travels to Dask workers; the credentials
in it are never shown (``repr`` leaves them out).

Nothing is downloaded from a model hub: these are the files the user named.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from fmri2img.storage import urls
from fmri2img.storage.secrets import redact

__all__ = ["WeightsAt", "open_weights", "opened_options", "URL_OPTIONS"]

#: options of extractors and reconstruction runs whose values are weights URLs
URL_OPTIONS = ("weights", "unet_pth", "vae_pth")


class WeightsNotFound(FileNotFoundError):
    """A weights file or folder named in the configuration does not exist."""


@dataclass(frozen=True)
class WeightsAt:
    """A weights file or folder at a URL (see the module docstring).

    Attributes
    ----------
    url : str
        A local path or fsspec URL.
    storage_options : dict
        fsspec options (credentials); never shown.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The URL without credentials, for messages."""
        return str(redact(str(self.url)))

    def __str__(self) -> str:
        return self.name

    def _fs(self) -> tuple[Any, str]:
        return urls.filesystem(str(self.url), dict(self.storage_options) or None)

    def open(self) -> IO[bytes]:
        """The file, opened for binary reading.

        Raises
        ------
        WeightsNotFound
            Nothing is at the URL (the message names it and where to set it).
        """
        fs, path = self._fs()
        try:
            return fs.open(path, "rb")
        except FileNotFoundError:
            raise WeightsNotFound(f"weights file {self.name} not found: set the path in the [weights] section of "
                                  f"the configuration (nothing is downloaded at run time); `fmri2img weights check "
                                  f"CONFIG` lists what is missing") from None

    def is_dir(self) -> bool:
        """Whether the URL names a folder."""
        fs, path = self._fs()
        return bool(fs.isdir(path))

    @contextlib.contextmanager
    def local_dir(self, names: Iterable[str] | None = None) -> Iterator[str]:
        """A local folder with the folder's files: the folder itself when local, else a temporary copy.

        Parameters
        ----------
        names : iterable of str, optional
            Copy only these entries of a remote folder (files, sub-folders, or ``sub/file`` paths; the
            ones that do not exist are skipped); default every entry.

        Yields
        ------
        str
            A local directory path; a temporary copy is deleted when the block ends.
        """
        scheme, rest = urls.split_url(str(self.url))
        if scheme in ("", "file"):
            yield os.path.abspath(os.path.expanduser(rest))
            return
        fs, path = self._fs()
        root = path.rstrip("/")
        with tempfile.TemporaryDirectory(prefix="fmri2img-weights-") as tmp:
            if names is None:
                try:
                    names = [os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
                except FileNotFoundError:
                    names = []
            for entry in sorted(set(names)):
                source = f"{root}/{entry.strip('/')}"
                if not fs.exists(source):
                    continue
                target = os.path.join(tmp, *entry.strip("/").split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.get(source, target, recursive=bool(fs.isdir(source)))
            yield tmp


def open_weights(url: str | os.PathLike[str] | WeightsAt, storage_options: Mapping[str, Any] | None = None
                 ) -> WeightsAt:
    """The :class:`WeightsAt` of a weights URL (checked: a known scheme, its backend installed).

    Parameters
    ----------
    url : str, path-like or WeightsAt
        A local path or fsspec URL (a :class:`WeightsAt` is returned as it is).
    storage_options : mapping, optional
        fsspec options (credentials) for a remote URL.
    """
    if isinstance(url, WeightsAt):
        return url
    text = os.fspath(url)
    urls.resolve_options(text, storage_options)  # an unknown scheme or missing credentials fail here, by name
    return WeightsAt(text, dict(storage_options or {}))


def opened_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Model options with every weights URL opened and ``storage_options`` consumed.

    ``{"weights": "s3://b/clip", "storage_options": {...}, "dtype": "float16"}`` →
    ``{"weights": WeightsAt("s3://b/clip", ...), "dtype": "float16"}``: what a model factory takes.
    """
    out = dict(options)
    storage_options = out.pop("storage_options", None) or {}
    for key in URL_OPTIONS:
        if out.get(key):
            out[key] = open_weights(out[key], storage_options)
    return out
