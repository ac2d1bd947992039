"""Shared pytest fixtures.

Cloud emulators (owned by the storage-URL tests; other fixtures may be added below):

- ``s3_endpoint`` (session): moto's S3 server on 127.0.0.1 with a free port;
  yields ``"http://127.0.0.1:PORT"``. Use with ``tests.cloud_helpers.s3_options``
  and ``upload_dir``.
- ``gcs_endpoint`` (session): the in-memory ``gcp-storage-emulator`` on
  127.0.0.1 with a free port; yields ``"http://127.0.0.1:PORT"``. Sets
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` before gcsfs is imported (gcsfs'
  experimental bucket probing fails against emulators).
- ``gdrive_target`` (function): ``(url, storage_options)`` for a ``gdrive://``
  store backed by the in-memory fake Drive API in ``tests/fakes/gdrive.py``, so
  pydrive2's real ``GDriveFileSystem`` code runs without a network.

Each fixture skips with the reason when its optional package is missing.
"""

from __future__ import annotations

import os

import pytest

from tests.cloud_helpers import gcs_options, s3_options

# gcsfs reads this when first imported; its experimental bucket-type probing fails
# against the emulator. Tests never talk to real GCS, so switch it off for the session.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback for the whole session; yields its URL."""
    pytest.importorskip("s3fs", reason="s3fs is needed for s3:// tests (pip install 'fmri2img[cloud]')")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is needed for s3:// tests")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_storage_options(s3_endpoint):
    """Storage options (dummy key/secret + endpoint) for the session's moto server."""
    return s3_options(s3_endpoint)


@pytest.fixture(scope="session")
def gcs_endpoint():
    """The in-memory GCS emulator on loopback for the whole session; yields its URL."""
    pytest.importorskip("gcsfs", reason="gcsfs is needed for gs:// tests (pip install 'fmri2img[cloud]')")
    emulator = pytest.importorskip(
        "gcp_storage_emulator.server", reason="gcp-storage-emulator is needed for gs:// tests"
    )
    server = emulator.create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    port = server._api._httpd.server_address[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def gcs_storage_options(gcs_endpoint):
    """Storage options (anonymous + endpoint) for the session's GCS emulator."""
    return gcs_options(gcs_endpoint)


@pytest.fixture()
def gdrive_target():
    """``(url, storage_options)`` of an empty gdrive:// folder on a fresh fake Drive."""
    pytest.importorskip("pydrive2.fs", reason="pydrive2[fsspec] is needed for gdrive:// tests (pip install 'fmri2img[drive]')")
    from tests.fakes.gdrive import fake_gdrive_filesystem

    fs = fake_gdrive_filesystem()
    return "gdrive://root/tests", {"fs": fs}
