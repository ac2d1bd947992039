"""The one home of secrets: which names and strings are credentials, and how they are removed.

Everything fmri2img shows people or writes down (logs at any verbosity, errors, store
attributes, reports, the configuration saved with a run) passes through here:

- :func:`is_secret_name`: whether an option, key or environment-variable name holds a secret
  (``key``, ``secret``, ``token``, ``password``, ``client_secret``, ``AWS_SECRET_ACCESS_KEY``,
  ``api_key``, ...; names ending in ``_file``/``_path``/``_dir`` name files, not secrets);
- :func:`redact`: a copy of a URL, a storage-options or cluster-options mapping, or any nested
  plain value without secrets: values under secret names, ``user:pass@`` in URLs, secret query
  parameters, ``NAME=value`` job-script lines, AWS key ids, bearer tokens, PEM private keys;
  objects that are not plain data become ``"<TypeName>"`` (their repr may hold credentials);
- :func:`redact_text`: log text: the above plus HTTP header credentials (botocore's
  ``Authorization`` lines) and the literal values of every credential this process was given
  (:func:`add_secrets`), which catches key ids that follow no pattern;
- :func:`install`: redacts every log record this process makes from then on, whichever logger
  emitted it (ours, botocore's, distributed's) and whichever handler prints it;
  :class:`RedactingFilter` does the same on one handler (the workers' handlers, see
  :mod:`fmri2img.cluster.workerlog`).

This module imports nothing from fmri2img, so every layer (storage, cluster, config, the
report) can stand on it.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "SECRET_ENV", "MIN_SECRET_LENGTH", "is_secret_name", "redact", "redact_text",
           "add_secrets", "secrets_of", "known_secrets", "redact_record", "RedactingFilter", "install"]

REDACTED = "***"
#: environment variables whose values are secrets wherever they appear
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
              "GOOGLE_OAUTH_ACCESS_TOKEN", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY")
#: secrets shorter than this are not replaced as literals (they would match ordinary words)
MIN_SECRET_LENGTH = 6

_SECRET_KEY_RE = re.compile(
    r"secret|passw|pwd|token|credential|private|api[_-]?key|access[_-]?key|"
    r"^key$|(^|_)auth($|_)|authorization|signature|client_json|cookie|bearer|_key$",
    re.IGNORECASE,
)
_PATH_KEY_RE = re.compile(r"(_path|_file|_filename|_dir)$", re.IGNORECASE)
#: gcsfs token modes and other values under secret names that are not secrets
_SAFE_VALUES = frozenset({"anon", "google_default", "cache", "cloud", "browser"})
_SECRET_TEXT_PATTERNS = (
    # user:pass@ or token@ in URLs; the user name before ':' is kept
    (re.compile(r"(://[^/@:\s]*):[^/@\s]*@"), r"\1:" + REDACTED + "@"),
    (re.compile(r"(://)[^/@:\s]+@"), r"\1" + REDACTED + "@"),
    # secret-looking query parameters and key=value pairs
    (
        re.compile(
            r"((?:secret|passw\w*|pwd|token|signature|credential\w*|api[_-]?key|"
            r"access[_-]?key\w*|x-amz-[\w-]*)=)[^&\s,;]+",
            re.IGNORECASE,
        ),
        r"\1" + REDACTED,
    ),
    # AWS access key ids, PEM private keys, Google OAuth tokens, bearer tokens
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), REDACTED),
    (re.compile(r"\bya29\.[\w.-]+"), REDACTED),
    (re.compile(r"(Bearer\s+)[\w.~+/=-]+", re.IGNORECASE), r"\1" + REDACTED),
)
#: header entries as botocore and urllib3 print them: 'Authorization': b'AWS4-HMAC-SHA256 Credential=...'
_HEADER_RE = re.compile(
    r"""(['"]?(?:authorization|x-amz-security-token|x-amz-credential|x-goog-api-key|cookie)['"]?\s*[:=]\s*)"""
    r"""(b?(['"])(?:(?!\3).)*\3|[^,}\n]+)""",
    re.IGNORECASE,
)


def is_secret_name(name: Any) -> bool:
    """Whether an option, key or environment-variable name denotes a secret.

    ``key``, ``secret``, ``token``, ``password``, ``client_secret``, ``credentials``,
    ``AWS_SECRET_ACCESS_KEY``, ``api_key``, ``ssh_key``, ... are secrets; names that end in
    ``_file``, ``_path``, ``_filename`` or ``_dir`` (``key_file``, ``client_json_file_path``)
    name files and are not.
    """
    return isinstance(name, str) and bool(_SECRET_KEY_RE.search(name)) and not _PATH_KEY_RE.search(name)


def _redact_string(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_line(value: str) -> str:
    """``export AWS_SECRET_ACCESS_KEY=...`` (a job-script line) keeps its name and loses its value."""
    head, sep, _ = value.partition("=")
    words = head.split()
    if sep and words and words[-1].isidentifier() and is_secret_name(words[-1]):
        return f"{head}={REDACTED}"
    return _redact_string(value)


def _redact_entry(key: Any, value: Any) -> Any:
    if is_secret_name(key) and not isinstance(value, (Mapping, list, tuple)):
        if value is None or isinstance(value, (bool, int, float)):
            return value  # flags and counts carry no secret
        if isinstance(value, str) and value in _SAFE_VALUES:
            return value
        return REDACTED
    return redact(value)


def redact(value: Any) -> Any:
    """A copy of a URL or a (nested) options value without secrets, safe for logs and attributes.

    Parameters
    ----------
    value : str, path-like, mapping, list, tuple, number, bool or None
        A URL, a storage-options or cluster-options table, or any nesting of them.

    Returns
    -------
    The same structure with secrets replaced by ``"***"``; objects that are not plain data
    become ``"<TypeName>"``.
    """
    if isinstance(value, str):
        return _redact_string(value)
    if isinstance(value, os.PathLike):
        return _redact_string(os.fspath(value))
    if isinstance(value, Mapping):
        return {k: _redact_entry(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_line(v) if isinstance(v, str) else redact(v) for v in value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return f"<{type(value).__name__}>"


_lock = threading.Lock()
_known: set[str] = set()
_installed: list = []


def add_secrets(values: Iterable[Any]) -> None:
    """Also replace these literal strings in log text (credentials given on the command line or in a config)."""
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and value != REDACTED:
                _known.add(value)


def secrets_of(options: Mapping[str, Any] | None) -> list[str]:
    """The literal secret values inside a (nested) options mapping."""
    out: list[str] = []
    for key, value in (options or {}).items():
        if isinstance(value, Mapping):
            out += secrets_of(value)
        elif isinstance(value, str) and _redact_entry(key, value) == REDACTED:
            out.append(value)
    return out


def redact_text(text: str) -> str:
    """``text`` with header credentials, secret patterns and the known secret values replaced."""
    text = _HEADER_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _redact_string(text)
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def known_secrets() -> list[str]:
    """The literal credentials this process was given (:func:`add_secrets`), e.g. to hand to its workers."""
    with _lock:
        return sorted(_known)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """``record`` with its message and traceback redacted (in place; returned for convenience)."""
    try:
        record.msg, record.args = redact_text(record.getMessage()), ()
    except Exception:  # noqa: BLE001 - a bad format string must not lose the record
        record.msg, record.args = redact_text(str(record.msg)), ()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if getattr(record, "stack_info", None):
        record.stack_info = redact_text(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record it passes (for handlers that records reach unredacted,
    e.g. a worker's, whose records may be made before :func:`install` runs there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install(extra_secrets: Iterable[Any] = ()) -> None:
    """Redact every log record made from now on in this process (idempotent).

    The logging record factory is wrapped, so each record is redacted when it is made, before
    any handler (the CLI's, one a library adds later, pytest's capture) sees it.
    """
    add_secrets(os.environ.get(name) for name in SECRET_ENV)
    add_secrets(extra_secrets)
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return redact_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _installed.append(factory)
