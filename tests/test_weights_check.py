"""`fmri2img weights check`: what is configured, present and loadable, per model."""
from __future__ import annotations

import torch

from fmri2img.cli.main import main


def _config(tmp_path, weights: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(f"""
stages = ["features", "evaluate"]
[store]
url = "{tmp_path / 's.zarr'}"
[features.extractors.vdvae]
n_blocks = 31
[features.extractors.pixels]
[reconstruct.runs.r]
stage1 = "pixels"
preset = ""
[evaluate]
nets = ["alexnet2"]
[weights]
{weights}
""")
    return str(path)


def test_reports_missing_present_and_loadable(tmp_path, capsys):
    from fmri2img.metrics.nets.alexnet import build_alexnet

    torch.save(build_alexnet(seed=1).state_dict(), tmp_path / "alexnet.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad_vdvae.th")
    code = main(["weights", "check", _config(tmp_path, f'alexnet = "{tmp_path / "alexnet.pth"}"')])
    out = capsys.readouterr().out
    assert code == 1
    assert "!! vdvae" in out and "not configured" in out and "needed by features.vdvae" in out
    assert "ok alexnet" in out and "present" in out
    assert "ok versatile_diffusion" in out and "unused" in out  # the only run is stage 1 only

    cfg = _config(tmp_path, f'alexnet = "{tmp_path / "alexnet.pth"}"\nvdvae = "{tmp_path / "bad_vdvae.th"}"')
    code = main(["weights", "check", cfg, "--load"])
    out = capsys.readouterr().out
    assert code == 1
    assert "ok alexnet" in out and "loads" in out
    assert "!! vdvae" in out and "does not load" in out and "missing key" in out

    cfg = _config(tmp_path, f'alexnet = "{tmp_path / "alexnet.pth"}"\nvdvae = "{tmp_path / "nope.th"}"')
    assert main(["weights", "check", cfg]) == 1
    assert "missing" in capsys.readouterr().out
