"""One clear line for a storage service that cannot be reached (no network, a wrong endpoint).

botocore, aiohttp, google-auth and requests each raise their own connection errors, none of
them an ``OSError`` the CLI already words. :func:`unreachable_line` recognises them (by class
name along the exception's chain, so no backend needs importing) and says which host could not
be reached and what to do; any other exception is left alone.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from fmri2img.storage.urls import redact

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
