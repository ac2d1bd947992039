"""Google Drive (``gdrive://``) as a Zarr-capable fsspec filesystem, via pydrive2.

``gdrive://ROOT/folder/store.zarr`` names a path under ``ROOT``: ``root`` (My
Drive), ``appDataFolder``, or the id of a folder or shared drive.

``storage_options`` take either

- ``{"fs": filesystem}``: an already-built pydrive2 ``GDriveFileSystem`` (plain
  ones are re-wrapped in :class:`GDriveStoreFileSystem`, sharing their
  authorised client); this is how tests inject a fake Drive; or
- pydrive2's own settings: ``client_json_file_path`` / ``client_json`` with
  ``use_service_account=True`` for a service account, or ``client_id`` /
  ``client_secret`` for an OAuth app (opens a browser once and caches the token),
  plus ``trash_only``, ``profile``, ...

For Dask workers in other processes use the settings form: the filesystem is
rebuilt (and re-authorised) from them when unpickled, whereas an authorised
client object generally cannot be pickled.

Why a subclass: pydrive2's ``GDriveFileSystem`` always inserts a new file on
upload, so writing a key twice (Zarr rewrites ``zarr.json`` and chunks in region
writes) leaves two files with one title and later reads may get the old one. It
also cannot read byte ranges, and keeps folder ids cached after deleting them.
:class:`GDriveStoreFileSystem` updates existing files in place, slices ranges
after download, and forgets deleted folders.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from pydrive2.fs import GDriveFileSystem

from fmri2img.storage.errors import MissingCredentialsError, StorageError, storage_error

logger = logging.getLogger(__name__)

__all__ = ["GDriveStoreFileSystem", "gdrive_filesystem"]



class GDriveStoreFileSystem(GDriveFileSystem):
    """pydrive2's ``GDriveFileSystem`` with overwrite-in-place, ranged reads and
    cache invalidation, as a Zarr store needs. Same constructor arguments."""

    protocol = "gdrive"

    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        self._path_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

    def _lock_for(self, path: str) -> threading.Lock:
        with self._locks_guard:
            return self._path_locks[path]

    def _existing_file_id(self, rpath: str) -> str | None:
        try:
            info = self.info(rpath)
        except FileNotFoundError:
            return None
        if info["type"] == "directory":
            raise IsADirectoryError(f"{rpath} is a folder on Google Drive, expected a file")
        return self._get_item_id(rpath)

    def upload_fobj(self, stream: Any, rpath: str, callback: Any = None, **kwargs: Any) -> Any:
        """Upload ``stream`` to ``rpath``, replacing the content of an existing file."""
        rpath = rpath.rstrip("/")
        with self._lock_for(rpath):
            item_id = self._existing_file_id(rpath)
            if item_id is None:
                return super().upload_fobj(stream, rpath, callback=callback, **kwargs)
            item = self.client.CreateFile({"id": item_id})
            item.content = stream
            item.Upload()
            return item

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write ``value`` as the whole content of ``path``."""
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        self.upload_fobj(io.BytesIO(value), path)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """Read a file, or the byte range ``[start, end)`` of it (downloaded whole)."""
        with self.open(path, "rb") as stream:
            data = stream.read()
        if start is None and end is None:
            return data
        return data[slice(start, end)]

    def rm_file(self, path: str) -> None:
        """Delete (or trash) one file or folder and forget cached ids under it."""
        super().rm_file(path)
        self._forget(path)

    def _forget(self, path: str) -> None:
        _, base = self.split_path(path)
        base = base.rstrip("/")
        cache = self._ids_cache
        for cached in [p for p in cache["dirs"] if p == base or p.startswith(base + "/")]:
            for item_id in cache["dirs"].pop(cached):
                cache["ids"].pop(item_id, None)


def gdrive_filesystem(url: str, rest: str, options: Mapping[str, Any]) -> GDriveStoreFileSystem:
    """Build the filesystem for ``gdrive://<rest>`` (see the module docstring)."""
    root = rest.split("/", 1)[0]
    if not root:
        raise storage_error(
            StorageError, url, "a gdrive:// URL needs a root after the scheme",
            "write gdrive://root/<folder>/store.zarr (My Drive) or gdrive://<folder-id>/...",
        )
    opts = dict(options)
    given = opts.pop("fs", None)
    if given is not None:
        return _adopt(url, root, given)
    try:
        return GDriveStoreFileSystem(root, **opts)
    except ValueError as exc:
        if "credentials" not in str(exc).lower():
            raise
        raise storage_error(
            MissingCredentialsError, url, "no Google Drive credentials were given",
            "pass storage_options={'client_json_file_path': '<service-account>.json', "
            "'use_service_account': True} or {'client_id': ..., 'client_secret': ...}",
        ) from None
    except Exception as exc:  # pydrive2 raises GDriveAuthError and others
        if type(exc).__name__ != "GDriveAuthError":
            raise
        raise storage_error(
            MissingCredentialsError, url, "Google Drive authentication failed",
            "check the service-account file or OAuth client settings in storage_options "
            "and that the account can access this folder",
        ) from None


def _adopt(url: str, root: str, fs: Any) -> GDriveStoreFileSystem:
    if not isinstance(fs, GDriveFileSystem):
        raise storage_error(
            StorageError, url,
            f"storage_options['fs'] is a {type(fs).__name__}, expected a pydrive2 GDriveFileSystem",
            "pass storage_options={'fs': GDriveFileSystem(...)} or pydrive2 auth settings",
        )
    if fs.root != root:
        raise storage_error(
            StorageError, url,
            f"storage_options['fs'] is rooted at {fs.root!r} but the URL's root is {root!r}",
            f"build the filesystem with GDriveFileSystem({root!r}, ...) or change the URL",
        )
    if isinstance(fs, GDriveStoreFileSystem):
        return fs
    return GDriveStoreFileSystem(
        fs.path, google_auth=fs.client.auth, trash_only=fs._trash_only,
        acknowledge_abuse=fs._acknowledge_abuse,
    )


