"""One clear line for a storage service that cannot be reached (no network, a wrong endpoint).

botocore, aiohttp, google-auth and requests each raise their own connection errors, none of
them an ``OSError`` the CLI already words. :func:`unreachable_line` recognises them (by class
name along the exception's chain, so no backend needs importing) and says which host could not
be reached and what to do; any other exception is left alone.  :func:`probe` makes one quick
request before a command starts its cluster, so that the line comes within seconds.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping
from urllib.parse import urlsplit

from fmri2img.storage.urls import redact

logger = logging.getLogger(__name__)

#: class names of "could not connect" errors in botocore, aiohttp, google-auth, requests and urllib3
_UNREACHABLE = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
    "ClientConnectorDNSError", "ServerDisconnectedError", "ServerTimeoutError", "TransportError",
    "NewConnectionError", "ConnectTimeout", "MaxRetryError", "NameResolutionError",
})


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def unreachable_line(exc: BaseException) -> str | None:
    """``"cannot reach HOST ... Fix: ..."`` when ``exc`` (or its cause) is a connection failure, else None."""
    for e in _chain(exc):
        names = {c.__name__ for c in type(e).__mro__}
        if not names & _UNREACHABLE:
            continue
        url = str(getattr(e, "kwargs", {}).get("endpoint_url") or getattr(e, "url", "") or "")
        host = urlsplit(url).netloc or url or "the storage service"
        return (f"cannot reach {redact(host)} ({type(e).__name__}): this machine has no connection to it. Fix: "
                f"check the network (proxy, firewall, VPN) and run the same command again, or point --source "
                f"([source] url) at a local copy of the files, e.g. one made with `aws s3 sync "
                f"s3://natural-scenes-dataset/<prefix> DIR --no-sign-request` on a connected machine")
    return None


#: seconds the reachability probe waits for a connection (real reads keep the backends' own timeouts)
PROBE_CONNECT_TIMEOUT_S = 3.0


def probe(url: str, storage_options: Mapping[str, Any] | None = None,
          connect_timeout: float = PROBE_CONNECT_TIMEOUT_S) -> None:
    """Fail fast when the storage service behind ``url`` cannot be reached.

    One request (``s3://``: a HEAD of the location) with a short connect timeout and no retries,
    made before a command starts its cluster, so that a machine without a connection gets the
    one-line error of :func:`unreachable_line` within seconds instead of after the backend's
    retries (botocore and s3fs retry a refused or timed-out connection about 25 times, ~16 s or
    minutes).  Any other outcome (found, not found, access denied) is left to the real reads,
    which keep the backends' retries for transient errors.  Local, ``memory://`` and other
    schemes are not probed.

    Raises
    ------
    Exception
        The backend's own connection error (the CLI words it with :func:`unreachable_line`).
    """
    from fmri2img.storage import urls

    scheme, rest = urls.split_url(url)
    if scheme != "s3":
        return
    s3fs = _optional_import("s3fs")
    if s3fs is None:
        return  # the real open says which extra to install
    opts = urls.resolve_options(url, storage_options)
    config = dict(opts.pop("config_kwargs", None) or {})
    config.update(connect_timeout=connect_timeout, read_timeout=max(10.0, connect_timeout),
                  retries={"max_attempts": 1, "mode": "standard"})
    fs = s3fs.S3FileSystem(config_kwargs=config, skip_instance_cache=True, **opts)
    fs.retries = 1  # s3fs' own retry loop, on this probing instance only
    try:
        fs.info(rest.rstrip("/") or rest)
    except Exception as exc:  # noqa: BLE001 - only a connection failure is the probe's business
        if unreachable_line(exc) is not None:
            raise
        logger.debug("probe of %s: %s (left to the real reads)", redact(url), exc)


def _optional_import(module: str) -> Any:
    """``import module``, or None when it is not installed."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        return None
