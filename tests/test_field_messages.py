"""Messages that name their field (issue 23, point 3): a bad image count names its configuration key;
``report`` on something that is not an fmri2img store says what it is, as ``status`` does."""
from __future__ import annotations

import pytest

from fmri2img import config as cfgmod
from fmri2img.cli.main import main


@pytest.mark.parametrize("section, value", [("reconstruct", 0), ("evaluate", -1), ("features", 0), ("decode", 0)])
def test_image_count_names_its_key(tmp_path, capsys, section, value):
    path = tmp_path / "run.toml"
    path.write_text(f'stages = ["ingest"]\n[store]\nurl = "{tmp_path / "s.zarr"}"\n[{section}]\n'
                    f'images_per_task = {value}\n')
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(path)
    text = str(err.value)
    assert f"{section}.images_per_task" in text and f"got {value}" in text and str(path) in text
    assert "region step" not in text
    assert main(["run", str(path)]) == 2
    line = capsys.readouterr().err
    assert line.startswith("error: ") and f"{section}.images_per_task" in line and line.count("\n") == 1


def test_report_on_a_zarr_v2_store_says_what_it_is(tmp_path, capsys):
    import zarr

    v2 = tmp_path / "old.zarr"
    zarr.open_group(str(v2), mode="w", zarr_format=2).create_array("x", shape=(3,), dtype="f4")
    assert main(["report", str(v2), "--subject", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a Zarr v2 store" in err and "finished reconstructions" not in err
    assert main(["status", str(v2)]) == 2
    assert "is a Zarr v2 store" in capsys.readouterr().err


def test_report_on_an_empty_location_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing.zarr"), "--subject", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "empty (nothing ingested yet)" in err
    assert not (tmp_path / "nothing.zarr").exists() and not (tmp_path / "outputs").exists()
