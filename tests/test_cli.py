"""The fmri2img command: mini-nsd → ingest → status → run, and its error messages."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from fmri2img.cli.main import main
from tests.minifixtures import TINY


def _mini_args(root):
    return ["mini-nsd", str(root), "--seed", "5", "--subjects", "1", "--side", "32", "--n-images", "60",
            "--n-shared", "8", "--n-per-subject", "32", "--n-sessions", "2", "--trials-per-session", "36"]


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    root, store = tmp_path / "nsd", tmp_path / "store.zarr"
    assert main(_mini_args(root)) == 0
    assert (root / "nsddata/experiments/nsd/nsd_expdesign.mat").exists()
    code = main(["ingest", "--source", str(root), "--store", str(store), "--subject", "1",
                 "--cluster", "local", "--workers", "1", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "subj01:" in out.out and "Dask dashboard: http://127.0.0.1" in out.err
    ds = xr.open_zarr(str(store), group="subjects/subj01/train", consolidated=False)
    assert ds.fmri.shape[0] > 0 and np.isfinite(ds.fmri.values).all()

    assert main(["status", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["group"] for r in rows} >= {"stimuli", "subjects/subj01/train", "subjects/subj01/betas"}
    assert all(r["done"] == r["total"] for r in rows)

    cfg = tmp_path / "run.toml"
    cfg.write_text(f'stages = ["ingest"]\n[store]\nurl = "{store}"\n[source]\nurl = "{root}"\n'
                   f'[cluster]\nn_workers = 1\nprocesses = false\n[ingest]\nsubjects = [1]\n')
    assert main(["run", str(cfg), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ingest"]["subj01"]["sessions_written"] == 0  # resumed: all done already
    assert main(["status", str(store)]) == 0
    assert "last run: stage ingest" in capsys.readouterr().out


def test_mini_nsd_volume_option(tmp_path, capsys):
    import nibabel as nib

    assert main(_mini_args(tmp_path / "nsd") + ["--volume", "20,24,18"]) == 0
    roi = tmp_path / "nsd/nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    assert nib.load(roi).shape == (20, 24, 18)
    betas = tmp_path / "nsd/nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.nii.gz"
    assert nib.load(betas).shape == (20, 24, 18, 36)
    assert main(_mini_args(tmp_path / "bad") + ["--volume", "20,24"]) == 2
    assert "volume_shape" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest]\nsubjekts = [1]\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "subjekts" in err and "Traceback" not in err
    assert main(["ingest", "--source", str(tmp_path / "nowhere"), "--store", str(tmp_path / "s.zarr"),
                 "--subject", "1", "--cluster", "local", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nsd_expdesign.mat" in err and "not found" in err
    assert main(["status", "ftpx://nowhere/x"]) == 2
    assert "ftpx" in capsys.readouterr().err
