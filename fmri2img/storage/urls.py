"""URLs plus storage options → fsspec filesystems and Zarr stores.

This is the only module that parses storage URLs. Supported forms:

- a local path (``./runs/demo/store.zarr``, ``/data/x.zarr``) or ``file://``;
- ``memory://name`` (fsspec's in-process memory filesystem, shared by every call
  with the same URL in one process; for tests);
- ``s3://bucket/path`` (s3fs): ``storage_options`` may hold ``anon``, ``key``,
  ``secret``, ``token``, ``profile``, ``endpoint_url``, ``client_kwargs``, ...;
  the standard AWS environment variables (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
  ``AWS_ENDPOINT_URL_S3``) work too. The public NSD bucket
  ``s3://natural-scenes-dataset`` is read anonymously when no credentials exist;
- ``gs://`` / ``gcs://`` (gcsfs): ``token`` (``"anon"``, a credentials file or
  dict), ``project``, ``endpoint_url`` (an emulator). When ``endpoint_url`` is
  given, ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` is set before gcsfs is first
  imported, because gcsfs' experimental bucket-type probing does not work
  against emulators;
- ``gdrive://root/folder/x.zarr`` (pydrive2); see :mod:`fmri2img.storage.gdrive`.

Credentials never appear in logs, errors or attributes: use
:func:`fmri2img.storage.secrets.redact` and :func:`describe` for anything shown to people.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from zarr.abc.store import Store

from fmri2img.storage.errors import (BackendNotInstalledError, MissingCredentialsError, StorageError,
                                     StoreNotWritableError, UnknownSchemeError, storage_error)
from fmri2img.storage.secrets import redact

logger = logging.getLogger(__name__)

NSD_BUCKET = "natural-scenes-dataset"
"""The public Natural Scenes Dataset bucket, read anonymously by default."""

__all__ = [
    "SCHEMES",
    "NSD_BUCKET",
    "StorageError",
    "UnknownSchemeError",
    "MissingCredentialsError",
    "StoreNotWritableError",
    "BackendNotInstalledError",
    "split_url",
    "resolve_options",
    "filesystem",
    "zarr_store",
    "join",
    "check_writable",
    "describe",
]


# ---------------------------------------------------------------- parsing

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def split_url(url: str | os.PathLike[str]) -> tuple[str, str]:
    """Split a URL into its scheme and the rest.

    Parameters
    ----------
    url : str or path-like
        ``"s3://bucket/key"``, ``"memory://x"``, ``"./local/path"``, ...

    Returns
    -------
    scheme : str
        Lower-case scheme, ``""`` for a plain local path.
    rest : str
        Everything after ``"://"`` (the whole string for a local path).
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise StorageError(
            f"storage URL {url!r}: expected a non-empty string such as "
            "'./runs/demo/store.zarr' or 's3://bucket/store.zarr'. "
            "Fix: pass the store location as a string."
        )
    match = _SCHEME_RE.match(url)
    if match is None:
        return "", url
    return match.group(1).lower(), url[match.end():]


def _backend(url: str) -> tuple[str, str]:
    scheme, rest = split_url(url)
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES if s) + ", or a local path"
        raise storage_error(
            UnknownSchemeError, url, f"unknown scheme {scheme!r}",
            f"use one of {known}",
        )
    return scheme, rest


def _require(module: str, extra: str, url: str) -> Any:
    """Import an optional backend package or raise naming the install extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise storage_error(
            BackendNotInstalledError, url,
            f"the Python package {module!r} is needed for this URL but is not installed",
            f"pip install 'fmri2img[{extra}]'",
        ) from exc


# ------------------------------------------------------ option resolution

_AWS_KEYS_IN_OPTIONS = ("key", "secret", "token", "session")


def _aws_credentials_found(profile: str | None, url: str) -> bool:
    """Whether botocore finds credentials locally (no network calls).

    The instance-metadata and container providers are skipped because they
    query a network endpoint; pass ``anon=False`` explicitly to rely on them.
    """
    import botocore.credentials
    import botocore.exceptions
    import botocore.session

    if os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    ):
        return True
    try:
        session = botocore.session.Session(profile=profile)
        resolver = botocore.credentials.create_credential_resolver(session)
        for name in ("container-role", "iam-role"):
            resolver.remove(name)
        return resolver.load_credentials() is not None
    except botocore.exceptions.ProfileNotFound as exc:
        name = profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        raise storage_error(
            MissingCredentialsError, url,
            f"the AWS profile {name!r} does not exist in the AWS config files",
            "name a profile from ~/.aws/credentials or ~/.aws/config, or pass "
            "storage_options={'key': ..., 'secret': ...}",
        ) from exc


def _resolve_s3(url: str, rest: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    client_kwargs = opts.get("client_kwargs") or {}
    if "endpoint_url" not in opts and "endpoint_url" not in client_kwargs:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    if "anon" in opts or any(opts.get(k) for k in _AWS_KEYS_IN_OPTIONS):
        return opts
    if _aws_credentials_found(opts.get("profile"), url):
        return opts
    bucket = rest.split("/", 1)[0]
    if bucket == NSD_BUCKET:
        logger.info("no AWS credentials found: reading %s anonymously", redact(url))
        opts["anon"] = True
        return opts
    raise storage_error(
        MissingCredentialsError, url,
        "no AWS credentials were found and anonymous access was not requested",
        "for a public bucket pass storage_options={'anon': True}; otherwise set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
        "storage_options={'key': ..., 'secret': ...} or {'profile': ...}; on a cloud "
        "machine with an instance role pass {'anon': False}",
    )


def _resolve_gcs(url: str, rest: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    if opts.get("endpoint_url"):
        # gcsfs reads this at import time; its experimental bucket probing fails
        # against emulators. Must happen before the first `import gcsfs`.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        opts.setdefault("token", "anon")
    return opts


_OPTION_RESOLVERS: dict[str, Callable[[str, str, dict[str, Any]], dict[str, Any]]] = {
    "s3": _resolve_s3,
    "gs": _resolve_gcs,
    "gcs": _resolve_gcs,
}


def resolve_options(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the storage options that would be given to the URL's filesystem.

    Applies the defaults described in the module docstring (AWS endpoint
    environment variables, anonymous NSD access, the GCS emulator switch) and
    raises :class:`MissingCredentialsError` where no credentials can be found.
    Makes no network calls.
    """
    scheme, rest = _backend(url)
    options = dict(storage_options or {})
    resolver = _OPTION_RESOLVERS.get(scheme)
    return resolver(url, rest, options) if resolver else options


# ------------------------------------------------------------- factories

FsFactory = Callable[[str, str, dict[str, Any], bool], tuple[fsspec.AbstractFileSystem, str]]


def _local_fs(url: str, rest: str, options: dict[str, Any], asynchronous: bool):
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(rest))


def _memory_fs(url: str, rest: str, options: dict[str, Any], asynchronous: bool):
    fs = fsspec.filesystem("memory")
    return fs, fs._strip_protocol("memory://" + rest)


def _s3_fs(url: str, rest: str, options: dict[str, Any], asynchronous: bool):
    s3fs = _require("s3fs", "cloud", url)
    opts = _resolve_s3(url, rest, options)
    return s3fs.S3FileSystem(asynchronous=asynchronous, **opts), rest.rstrip("/")


def _gcs_fs(url: str, rest: str, options: dict[str, Any], asynchronous: bool):
    opts = _resolve_gcs(url, rest, options)
    gcsfs = _require("gcsfs", "cloud", url)
    return gcsfs.GCSFileSystem(asynchronous=asynchronous, **opts), rest.rstrip("/")


def _gdrive_fs(url: str, rest: str, options: dict[str, Any], asynchronous: bool):
    _require("pydrive2.fs", "drive", url)
    from fmri2img.storage import gdrive

    return gdrive.gdrive_filesystem(url, rest, options), rest.rstrip("/")


SCHEMES: dict[str, FsFactory] = {
    "": _local_fs,
    "file": _local_fs,
    "memory": _memory_fs,
    "s3": _s3_fs,
    "gs": _gcs_fs,
    "gcs": _gcs_fs,
    "gdrive": _gdrive_fs,
}
"""Scheme → factory ``(url, rest, options, asynchronous) -> (filesystem, path)``."""


def filesystem(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return a (synchronous) fsspec filesystem and the path inside it.

    Parameters
    ----------
    url : str
        A local path or a URL with one of the schemes in :data:`SCHEMES`.
    storage_options : dict, optional
        Backend options (credentials, endpoint, ...); see the module docstring.

    Returns
    -------
    fs : fsspec.AbstractFileSystem
    path : str
        The location inside ``fs``, without the scheme.
    """
    scheme, rest = _backend(url)
    return SCHEMES[scheme](url, rest, dict(storage_options or {}), False)


def _as_async(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    if fs.async_impl and fs.asynchronous:
        return fs
    return AsyncFileSystemWrapper(fs, asynchronous=True)


def zarr_store(
    url: str, storage_options: Mapping[str, Any] | None = None, *, read_only: bool = False
) -> Store:
    """Open the Zarr store at a URL.

    Local paths give a :class:`zarr.storage.LocalStore`; every other scheme a
    :class:`zarr.storage.FsspecStore` over an asynchronous filesystem (sync
    filesystems such as memory and Google Drive are wrapped). The store is
    picklable so it can travel inside Dask tasks.

    Parameters
    ----------
    url : str
        Root of the store, e.g. ``"s3://bucket/nsd.zarr"``.
    storage_options : dict, optional
        Backend options; see the module docstring.
    read_only : bool
        Open the store read-only.

    Returns
    -------
    zarr.abc.store.Store
    """
    from zarr.storage import FsspecStore, LocalStore

    scheme, rest = _backend(url)
    options = dict(storage_options or {})
    if scheme in ("", "file"):
        _, path = _local_fs(url, rest, options, False)
        return LocalStore(path, read_only=read_only)
    fs, path = SCHEMES[scheme](url, rest, options, True)
    logger.debug("opening zarr store %s", describe(url, storage_options))
    return FsspecStore(_as_async(fs), path=path, read_only=read_only)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL with ``/``, keeping its scheme.

    ``join("s3://b/x.zarr", "subjects", "subj01")`` → ``"s3://b/x.zarr/subjects/subj01"``.
    """
    split_url(url)
    pieces = [p.strip("/") for p in parts if p and p.strip("/")]
    if not pieces:
        return url
    return "/".join([url.rstrip("/") or url, *pieces])


def check_writable(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write and delete a tiny probe object under ``url``.

    Local directories are created if missing; buckets are never created.

    Raises
    ------
    StoreNotWritableError
        Naming the URL (redacted) and the fix.
    """
    fs, path = filesystem(url, storage_options)
    probe = f"{path.rstrip('/')}/.fmri2img-write-probe-{uuid.uuid4().hex}"
    try:
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"probe")
        fs.rm_file(probe)
    except StorageError:
        raise
    except Exception as exc:
        raise storage_error(
            StoreNotWritableError, url,
            f"cannot write to the store ({type(exc).__name__}: {redact(str(exc))})",
            "check that the location exists and is a directory or bucket you may write "
            "to, that the credentials in storage_options or the environment allow "
            "writes, and that the bucket is not read-only",
        ) from None


# ------------------------------------------------------------- describe


def _describe_s3(url: str, rest: str, options: dict[str, Any]) -> list[str]:
    try:
        opts = _resolve_s3(url, rest, options)
    except MissingCredentialsError:
        return ["no credentials found"]
    if opts.get("anon"):
        parts = ["anonymous"]
    elif opts.get("key") or opts.get("secret"):
        parts = ["key/secret from storage_options"]
    elif opts.get("profile") or os.environ.get("AWS_PROFILE"):
        parts = [f"profile {opts.get('profile') or os.environ.get('AWS_PROFILE')}"]
    else:
        parts = ["AWS default credential chain"]
    endpoint = opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url")
    return parts + ([f"endpoint {redact(endpoint)}"] if endpoint else [])


def _describe_gcs(url: str, rest: str, options: dict[str, Any]) -> list[str]:
    token = options.get("token")
    endpoint = options.get("endpoint_url")
    if token == "anon" or (token is None and endpoint):
        parts = ["anonymous"]
    elif token is None:
        parts = ["Google default credentials"]
    elif isinstance(token, str) and token in ("google_default", "cache", "cloud", "browser"):
        parts = [f"token mode {token}"]
    else:
        parts = ["token from storage_options"]
    return parts + ([f"endpoint {redact(endpoint)}"] if endpoint else [])


def _describe_gdrive(url: str, rest: str, options: dict[str, Any]) -> list[str]:
    if "fs" in options:
        return [f"given filesystem {type(options['fs']).__name__}"]
    if options.get("use_service_account"):
        return ["service account"]
    return ["OAuth client"]


_DESCRIBERS: dict[str, Callable[[str, str, dict[str, Any]], list[str]]] = {
    "": lambda url, rest, opts: ["local"],
    "file": lambda url, rest, opts: ["local"],
    "memory": lambda url, rest, opts: ["in-memory, this process only"],
    "s3": _describe_s3,
    "gs": _describe_gcs,
    "gcs": _describe_gcs,
    "gdrive": _describe_gdrive,
}


def describe(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Short text about a store that is safe for logs, e.g.

    ``"s3://bucket/x (anonymous, endpoint http://127.0.0.1:5000)"``.
    Never contains credentials; makes no network calls.
    """
    scheme, rest = _backend(url)
    parts = _DESCRIBERS[scheme](url, rest, dict(storage_options or {}))
    return f"{redact(url)} ({', '.join(parts)})"
