"""The command under hostile use (issue 12): no credential at any verbosity, one error line for
every OSError and every value a stage would reject, and a prompt exit after the error line."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time

import pytest

from fmri2img import config as cfgmod
from fmri2img.cli.main import main

KEY_ID = "fmri2img-test-key-id-7fq2"  # follows no AWS pattern: only the literal-value redaction catches it
SECRET = "fmri2img-test-secret-9zk4"


# -- item 5: redaction at every verbosity ------------------------------------------------------

@pytest.mark.parametrize("verbosity", [[], ["-v"], ["-vv"]])
def test_no_credential_in_any_log_line_at_any_verbosity(s3_endpoint, verbosity, capfd, caplog):
    from tests.cloud_helpers import make_bucket

    opts = {"key": KEY_ID, "secret": SECRET, "endpoint_url": s3_endpoint}
    make_bucket("s3://redact-test", opts)
    caplog.set_level(logging.DEBUG)
    args = [*verbosity, "status", "s3://redact-test/missing.zarr", "--store-option", f"key={KEY_ID}",
            "--store-option", f"secret={SECRET}", "--store-option", f"endpoint_url={s3_endpoint}"]
    main(args)
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert KEY_ID not in text and SECRET not in text
    if verbosity == ["-vv"]:  # the DEBUG lines that carried the key id were emitted, redacted
        assert "'Authorization': ***" in caplog.text


def test_secret_from_the_environment_is_redacted_in_botocore_debug(s3_endpoint, monkeypatch, capfd, caplog):
    from tests.cloud_helpers import make_bucket

    make_bucket("s3://redact-env", {"key": KEY_ID, "secret": SECRET, "endpoint_url": s3_endpoint})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID + "-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "-env")
    caplog.set_level(logging.DEBUG)
    main(["-vv", "status", "s3://redact-env/x.zarr", "--store-option", f"endpoint_url={s3_endpoint}"])
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "Authorization" in caplog.text
    assert KEY_ID not in text and SECRET not in text


def test_redaction_of_header_dumps():
    from fmri2img.storage.secrets import redact_text

    line = ("Sending http request: <AWSPreparedRequest headers={'Authorization': b'AWS4-HMAC-SHA256 "
            "Credential=ANYKEY/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abcd', "
            "'X-Amz-Security-Token': b'FwoGZXIvYXdzE', 'host': 'x'}>")
    red = redact_text(line)
    assert "ANYKEY" not in red and "FwoGZXIvYXdzE" not in red and "abcd" not in red and "'host': 'x'" in red


# -- item 7: every OSError one line; bad values refused at load ----------------------------------

def test_oserror_becomes_one_error_line_naming_the_path(tmp_path, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    code = main(["run", str(folder)])  # a directory where the config file should be
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(folder) in err and "Traceback" not in err
    assert "IsADirectoryError" in err and "Fix:" in err and err.count("\n") == 1


@pytest.mark.parametrize("table, message", [("alpha = -1", "alpha must be > 0"), ("alpha = [1e3, 0]", "> 0"),
                                            ('solver = "magic"', "solver='magic'")])
def test_regress_target_values_are_refused_at_load_with_file_and_key(tmp_path, table, message):
    path = tmp_path / "run.toml"
    path.write_text(f'stages = ["regress"]\n[store]\nurl = "s.zarr"\n[features.extractors.pixels]\nside = 8\n'
                    f'[regress.targets.pixels]\n{table}\n')
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(path)
    assert str(path) in str(err.value) and "regress.targets.pixels" in str(err.value) and message in str(err.value)


# -- item 10: prompt exit after the error line ----------------------------------------------------

HANGING = """
import sys, threading, time
import fmri2img.cli.main as cli

def hanging_status(args):
    threading.Thread(target=time.sleep, args=(600,), name="stuck-connection").start()  # non-daemon: blocks exit
    raise ValueError("the store is broken: do X")

cli.COMMANDS["status"] = hanging_status
sys.exit(cli.main())
"""


def test_process_exits_promptly_after_its_error_line(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent(HANGING))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), "status", "x"], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "FMRI2IMG_EXIT_GRACE_S": "2"})
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2 and "error: the store is broken: do X" in proc.stderr
    assert "still running: stuck-connection" in proc.stderr
    assert elapsed < 60
