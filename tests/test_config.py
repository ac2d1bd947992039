"""The run configuration (fmri2img.config)."""
from __future__ import annotations

import pytest

from fmri2img import config as cfg


def test_defaults_match_reference():
    c = cfg.Config()
    assert c.ingest.session_list() is None  # public sessions 1-37, clipped to the design
    assert c.source.url == "s3://natural-scenes-dataset"
    assert c.cluster.dashboard_address.startswith("127.0.0.1")


@pytest.mark.parametrize("text,expected", [("1-37", tuple(range(1, 38))), ("1,3,5-7", (1, 3, 5, 6, 7)),
                                           (4, (4,)), ([2, 1], (1, 2))])
def test_parse_sessions(text, expected):
    assert cfg.parse_sessions(text) == expected


@pytest.mark.parametrize("text", ["1-x", "0", [], "-3", True])
def test_parse_sessions_errors(text):
    with pytest.raises(cfg.ConfigError, match="ingest.sessions"):
        cfg.parse_sessions(text)


def test_round_trip_and_redaction(tmp_path):
    c = cfg.loads("""
stages = ["ingest"]
[store]
url = "s3://lab/x.zarr"
[store.storage_options]
key = "AKIAXXXX"
secret = "topsecret"
[ingest]
subjects = [1, 2]
sessions = "1-3"
""")
    assert c.store.storage_options["secret"] == "topsecret"
    assert c.ingest.subjects == [1, 2]
    text = cfg.dumps(c)
    assert "topsecret" not in text and "AKIAXXXX" not in text
    back = cfg.loads(text)
    assert back.ingest.session_list() == (1, 2, 3)


@pytest.mark.parametrize("text,match", [
    ("[ingest]\nsubjekts = [1]", r"unknown key\(s\) \['subjekts'\] in \[ingest\]; valid keys are"),
    ("[ingest]\nsubjects = 1", r"ingest.subjects: expected list"),
    ("[ingest]\nprefer = 'zip'", r"ingest.prefer: expected one of \['hdf5', 'nii.gz'\]"),
    ("stages = ['ingest', 'paint']", r"stages: unknown stage\(s\) \['paint'\]"),
    ("[store\nurl=1", r"not valid TOML"),
    ("[cluster]\nn_workers = 'two'", r"cluster.n_workers: expected int"),
])
def test_malformed_config_errors(text, match):
    with pytest.raises(cfg.ConfigError, match=match):
        cfg.loads(text)


def test_load_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[ingest]\nsessions = 'x'\n")
    with pytest.raises(cfg.ConfigError, match=r"bad.toml: ingest.sessions"):
        cfg.load(p)
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load(tmp_path / "missing.toml")
