"""A storage service out of reach ends the command with one line naming the host and the fix."""
from __future__ import annotations

import socket

import pytest

from fmri2img.storage.neterrors import unreachable_line


def test_connection_errors_of_each_backend_are_recognised_along_the_chain():
    botocore = pytest.importorskip("botocore.exceptions")
    err = botocore.EndpointConnectionError(endpoint_url="https://bucket.s3.amazonaws.com/key?X-Amz-Credential=AKIA")
    wrapped = RuntimeError("while reading the design")
    wrapped.__cause__ = err
    line = unreachable_line(wrapped)
    assert line.startswith("cannot reach bucket.s3.amazonaws.com (EndpointConnectionError)") and "Fix:" in line
    assert "AKIA" not in line
    assert unreachable_line(ValueError("a bug")) is None and unreachable_line(KeyError("x")) is None


def test_cli_offline_source_is_one_error_line(tmp_path, capsys):
    pytest.importorskip("s3fs")
    from fmri2img.cli.main import main

    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["ingest", "--source", "s3://nsd-offline", "--store", str(tmp_path / "s.zarr"), "--subject", "1",
                 "--no-progress", "--cluster", "local", "--workers", "1",
                 "--source-option", f"endpoint_url=http://127.0.0.1:{port}",
                 "--source-option", "key=k", "--source-option", "secret=s3cr3t-value"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: cannot reach 127.0.0.1:{port}"), err
    # no traceback of the failure itself (an earlier test's closed capture stream may add logging noise)
    assert "s3cr3t-value" not in err and "raise EndpointConnectionError" not in err
