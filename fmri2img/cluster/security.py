"""TLS settings for remote clusters.

A ``security`` option (the ``[cluster.security]`` table) names PEM files::

    [cluster.security]
    ca_file = "/etc/dask/ca.pem"       # the certificate authority that signed the scheduler's certificate
    cert_file = "/etc/dask/client.pem" # this client's certificate
    key_file = "/etc/dask/client.key"  # its private key (never copied, logged or stored)

:func:`make_security` turns it into a :class:`distributed.security.Security`
that every kind passes to the scheduler, the workers it starts and the Client.
Only paths are read here; the key material stays in its file and never reaches
logs, configurations saved in the store, or reports (:func:`fmri2img.storage.secrets.redact`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping


logger = logging.getLogger(__name__)

#: accepted keys of the security table → the Security argument they fill
TLS_FIELDS: dict[str, str] = {
    "ca_file": "tls_ca_file",
    "cert_file": "tls_client_cert",
    "key_file": "tls_client_key",
}
#: the same files also serve the scheduler and workers that a job-queue or local cluster starts
_SERVER_FIELDS: dict[str, tuple[str, ...]] = {
    "cert_file": ("tls_scheduler_cert", "tls_worker_cert"),
    "key_file": ("tls_scheduler_key", "tls_worker_key"),
}
_FLAGS = ("require_encryption",)


class SecurityError(ValueError):
    """A TLS setting is missing, unknown or points to a file that cannot be read."""


def make_security(settings: Any) -> Any:
    """Build a :class:`distributed.security.Security` from a table of file paths.

    Parameters
    ----------
    settings : mapping, Security or None
        ``{"ca_file": ..., "cert_file": ..., "key_file": ..., "require_encryption": True}``;
        a ready Security object is returned as is; ``None`` or ``{}`` gives ``None``
        (no TLS).

    Returns
    -------
    distributed.security.Security or None

    Raises
    ------
    SecurityError
        An unknown key, a missing field, or a file that does not exist, named.
    """
    from distributed.security import Security

    if settings is None or isinstance(settings, Security):
        return settings
    if not isinstance(settings, Mapping):
        raise SecurityError(f"cluster.security: expected a table of file paths {sorted(TLS_FIELDS)}, "
                            f"got {type(settings).__name__}")
    if not settings:
        return None
    unknown = sorted(set(settings) - set(TLS_FIELDS) - set(_FLAGS))
    if unknown:
        raise SecurityError(f"cluster.security: unknown key(s) {unknown}; valid keys are "
                            f"{sorted(TLS_FIELDS) + list(_FLAGS)} (check the spelling)")
    missing = [k for k in TLS_FIELDS if not settings.get(k)]
    if missing:
        raise SecurityError(f"cluster.security: {missing} not set; TLS needs all of {sorted(TLS_FIELDS)} "
                            f"(PEM files: the CA, this machine's certificate and its key)")
    for key in TLS_FIELDS:
        path = os.fspath(settings[key])
        if not os.path.isfile(path):
            raise SecurityError(f"cluster.security.{key}: {path} is not a readable file; give the path of the "
                                f"PEM file (e.g. made with `openssl req -x509 ...`, see the NSD-on-a-cluster notebook)")
    kwargs: dict[str, Any] = {TLS_FIELDS[k]: os.fspath(settings[k]) for k in TLS_FIELDS}
    for key, targets in _SERVER_FIELDS.items():
        kwargs.update({t: os.fspath(settings[key]) for t in targets})
    kwargs["require_encryption"] = bool(settings.get("require_encryption", True))
    logger.debug("TLS on: CA %s, certificate %s", settings["ca_file"], settings["cert_file"])
    return Security(**kwargs)
