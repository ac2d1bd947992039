"""Redaction of every log record in a process: no credential reaches a console or log file.

:func:`install` wraps the logging record factory, so each record is redacted when it is
made: whichever logger emitted it (ours, botocore's DEBUG lines with the ``Authorization``
header, distributed's) and whichever handler prints it (the CLI's, one a library adds
later, pytest's capture).  Redaction is :func:`fmri2img.storage.urls.redact` (secret keys,
``Credential=``/``Signature=`` pairs, AWS key ids, bearer tokens, PEM keys) plus the literal
values of the credentials this process was given (storage options and AWS environment
variables), which catches key ids that follow no pattern.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Iterable, Mapping

from fmri2img.storage import urls

#: environment variables whose values are secrets wherever they appear
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
              "GOOGLE_OAUTH_ACCESS_TOKEN", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY")
#: secrets shorter than this are not replaced as literals (they would match ordinary words)
MIN_SECRET_LENGTH = 6

#: header entries as botocore and urllib3 print them: 'Authorization': b'AWS4-HMAC-SHA256 Credential=...'
_HEADER_RE = re.compile(
    r"""(['"]?(?:authorization|x-amz-security-token|x-amz-credential|x-goog-api-key|cookie)['"]?\s*[:=]\s*)"""
    r"""(b?(['"])(?:(?!\3).)*\3|[^,}\n]+)""",
    re.IGNORECASE,
)

_lock = threading.Lock()
_secrets: set[str] = set()
_installed: list = []


def add_secrets(values: Iterable[Any]) -> None:
    """Also replace these literal strings (credentials given on the command line or in a config)."""
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and value != urls.REDACTED:
                _secrets.add(value)


def secrets_of(options: Mapping[str, Any] | None) -> list[str]:
    """The literal secret values inside a (nested) storage-options mapping."""
    out: list[str] = []
    for key, value in (options or {}).items():
        if isinstance(value, Mapping):
            out += secrets_of(value)
        elif urls.redact({key: value}).get(key) == urls.REDACTED and isinstance(value, str):
            out.append(value)
    return out


def redact_text(text: str) -> str:
    """``text`` with header credentials, secret patterns and known secret values replaced."""
    text = _HEADER_RE.sub(lambda m: m.group(1) + urls.REDACTED, text)
    text = urls.redact(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, urls.REDACTED)
    return text


def install(extra_secrets: Iterable[Any] = ()) -> None:
    """Redact every log record made from now on in this process (idempotent)."""
    add_secrets(os.environ.get(name) for name in SECRET_ENV)
    add_secrets(extra_secrets)
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                record.msg, record.args = redact_text(record.getMessage()), ()
                if record.exc_info and not record.exc_text:
                    record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
                    record.exc_info = None
            except Exception:  # noqa: BLE001 - a bad format string must not lose the record
                record.msg, record.args = redact_text(str(record.msg)), ()
            return record

        logging.setLogRecordFactory(factory)
        _installed.append(factory)
