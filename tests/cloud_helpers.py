"""Helpers for tests that talk to local cloud emulators (moto S3, the GCS emulator).

Importable from any test file: ``from tests.cloud_helpers import s3_options, upload_dir``.
The servers themselves are session fixtures in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DUMMY_KEY = "testing-key-id"
DUMMY_SECRET = "testing-secret-do-not-log"


def s3_options(endpoint: str) -> dict[str, Any]:
    """Storage options for the moto S3 server at ``endpoint`` (dummy credentials).

    Parameters
    ----------
    endpoint : str
        ``"http://127.0.0.1:PORT"`` from the ``s3_endpoint`` fixture.
    """
    return {
        "key": DUMMY_KEY,
        "secret": DUMMY_SECRET,
        "endpoint_url": endpoint,
    }


def gcs_options(endpoint: str) -> dict[str, Any]:
    """Storage options for the GCS emulator at ``endpoint`` (anonymous)."""
    return {"endpoint_url": endpoint, "token": "anon", "project": "test-project"}


def upload_dir(local_dir: str | os.PathLike[str], s3_url: str, storage_options: dict[str, Any]) -> list[str]:
    """Upload a local directory tree to ``s3://bucket/prefix``, creating the bucket.

    Parameters
    ----------
    local_dir : path
        Directory whose files are uploaded, keeping their relative paths.
    s3_url : str
        Destination, e.g. ``"s3://nsd-test/nsddata"``.
    storage_options : dict
        Options for s3fs, e.g. from :func:`s3_options`.

    Returns
    -------
    list of str
        The uploaded object keys (``bucket/prefix/relative/path``), sorted.
    """
    import s3fs

    if not s3_url.startswith("s3://"):
        raise ValueError(f"upload_dir: expected an s3:// URL, got {s3_url!r}")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **storage_options)
    dest = s3_url[len("s3://"):].rstrip("/")
    bucket = dest.split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    root = Path(local_dir)
    uploaded = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{dest}/{path.relative_to(root).as_posix()}"
        fs.put_file(str(path), key)
        uploaded.append(key)
    fs.invalidate_cache()
    return uploaded


def make_bucket(url: str, storage_options: dict[str, Any]) -> None:
    """Create the bucket of an ``s3://`` or ``gs://`` URL on an emulator if missing."""
    import fsspec

    protocol, rest = url.split("://", 1)
    fs = fsspec.filesystem(protocol, skip_instance_cache=True, **storage_options)
    bucket = rest.split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.invalidate_cache()


class CountingS3Server:
    """moto's S3 app on loopback behind a WSGI layer that counts the body bytes it serves per object.

    ``served[key]`` and ``requests[key]`` count GET responses for ``bucket/key`` (s3fs with an
    ``endpoint_url`` addresses objects path-style). Use as a context manager; ``endpoint`` is
    ``"http://127.0.0.1:PORT"``.
    """

    def __init__(self) -> None:
        from collections import Counter
        from threading import Lock, Thread

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self.served: Counter = Counter()
        self.requests: Counter = Counter()
        lock = Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            body = app(environ, start_response)
            if environ.get("REQUEST_METHOD") != "GET":
                return body
            key = environ.get("PATH_INFO", "").lstrip("/")

            def pieces():
                try:
                    for piece in body:
                        with lock:
                            self.served[key] += len(piece)
                        yield piece
                finally:
                    if hasattr(body, "close"):
                        body.close()

            with lock:
                self.requests[key] += 1
            return pieces()

        self._server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
        self._thread = Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        self.served.clear()
        self.requests.clear()

    def __enter__(self) -> "CountingS3Server":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._thread.join(timeout=30)
