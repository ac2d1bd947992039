"""The evaluate stage and the report, against direct metric computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from fmri2img.metrics.features import EVAL_NETS, eval_features
from fmri2img.metrics.scores import pixcorr, ssim, two_way_identification
from fmri2img.pipeline.evaluate import evaluate, get_net, read_summary
from fmri2img.pipeline.reconstruct import reconstruct_run, run_spec
from fmri2img.pipeline.report import write_report
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store
from tests.minifixtures import EXTRACTORS, mini_nsd, predicted_store  # noqa: F401

NETS = ["alexnet2", "efficientnet_b1"]


@pytest.fixture(scope="module")
def evaluated(predicted_store, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("eval") / "store.zarr"
    shutil.copytree(predicted_store.url, path)
    store = Store(str(path))
    spec = run_spec("px", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=0)
    reconstruct_run(store, 1, spec, images_per_task=8, progress=False)
    out = evaluate(store, 1, ["px"], parts=["stage1", "final"], nets=NETS, images_per_task=6, progress=False)
    return store, out


def test_metrics_equal_direct_computation(evaluated):
    store, out = evaluated
    assert list(out) == ["px/stage1"]  # the pixels run has no final part
    rec = xr.open_zarr(store.url, group="recon/subj01/px/stage1", consolidated=False)
    stim = xr.open_zarr(store.url, group="stimuli", consolidated=False)
    gt = stim.images.sel(image=rec.image.values).values
    images = rec.images.values
    m = xr.open_zarr(store.url, group="metrics/subj01/px/stage1", consolidated=False)
    np.testing.assert_allclose(m.pixcorr.values, pixcorr(gt, images), rtol=1e-6)
    np.testing.assert_allclose(m.ssim_column.values, ssim(gt, images, mode="column"), rtol=1e-6)
    np.testing.assert_allclose(m.ssim_2d.values, ssim(gt, images, mode="2d"), rtol=1e-6)
    net = get_net("alexnet2", {})
    ident = two_way_identification(eval_features("alexnet2", net, gt), eval_features("alexnet2", net, images))
    np.testing.assert_allclose(m.alexnet2.values, ident, atol=1e-9)
    summary = read_summary(store, 1, "px", "stage1")
    assert summary["AlexNet(2)"]["n_valid"] == len(gt) and summary["AlexNet(2)"]["random_weights"] is True
    assert summary["PixCorr"]["mean"] == pytest.approx(float(np.mean(pixcorr(gt, images))))
    assert summary["PixCorr"]["mean"] > 0.1  # the pixel decoder recovers real structure on simulated cortex
    assert summary["AlexNet(2)"]["mean"] > 0.6  # and beats chance (0.5) in two-way identification
    assert set(summary) == {"PixCorr", "SSIM (column)", "SSIM-2D", "AlexNet(2)", "EffNet-B"}


def test_rerun_reuses_features(evaluated, monkeypatch):
    from fmri2img.pipeline import evaluate as ev

    store, first = evaluated
    monkeypatch.setattr(ev, "eval_block", lambda *a: pytest.fail("features recomputed"))
    monkeypatch.setattr(ev, "gt_block", lambda *a: pytest.fail("ground truth recomputed"))
    again = evaluate(store, 1, ["px"], nets=NETS, images_per_task=6, progress=False)
    assert again == first


def test_unknown_net(evaluated):
    with pytest.raises(ValueError, match=r"evaluate.nets: unknown network\(s\) \['vgg'\]"):
        evaluate(evaluated[0], 1, ["px"], nets=["vgg"], progress=False)


def test_report_files(evaluated, tmp_path):
    from PIL import Image

    store, _ = evaluated
    result = write_report(store, 1, Outputs(str(tmp_path)), n_images=4)
    folder = tmp_path / "report/subj01"
    grid = Image.open(folder / "grid.png")
    assert grid.size[0] > 200 and grid.size[1] > 400
    Image.open(folder / "metrics.png").verify()
    table = (folder / "metrics.md").read_text()
    assert "Brain-Diffuser (paper, 4-subject mean) | 0.254 | 0.356" in table and "px/stage1" in table
    assert "†" in table  # random-weight evaluation networks are flagged
    assert json.loads((folder / "metrics.json").read_text())["px/stage1"]["PixCorr"]["n_valid"] == 16
    assert "grid.png" in (folder / "index.html").read_text()
    assert result["runs"] == ["px"]


def test_across_subjects_table(evaluated, tmp_path):
    from fmri2img.pipeline.report import across_subjects

    store, first = evaluated
    # score the same run for a second "subject" by copying subject 1's groups (the table logic is what is tested)
    import shutil

    root = tmp_path / "two.zarr"
    shutil.copytree(store.url, root)
    for top in ("metrics", "_progress/metrics", "recon", "_progress/recon"):
        shutil.copytree(root / top / "subj01", root / top / "subj02")
    out = across_subjects(Store(str(root)), [1, 2], Outputs(str(tmp_path)))
    assert out["rows"] == ["subj01 px/stage1", "subj02 px/stage1", "mean of 2 subjects: px/stage1"]
    pix = first["px/stage1"]["PixCorr"]
    assert f"{pix:.3f} ± 0.000" in out["table"]  # the mean of two identical subjects, sem 0
    assert (tmp_path / "report/subjects.md").exists()


def test_rerun_of_a_finished_evaluation_loads_no_network(evaluated, monkeypatch):
    """Issue 12 item 6: nothing is recomputed, not even the feature sizes (which load every net)."""
    from fmri2img.pipeline import evaluate as ev

    store, first = evaluated
    before = {g: dict(store.group(g).attrs) for g in store.list_groups("metrics/")}
    for name in ("_features", "eval_block", "gt_block", "get_net"):
        monkeypatch.setattr(ev, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called on a finished evaluation"))
    again = evaluate(store, 1, ["px"], parts=["stage1", "final"], nets=NETS, images_per_task=6, progress=False)
    assert again == first
    assert {g: dict(store.group(g).attrs) for g in store.list_groups("metrics/")} == before


def test_changed_nets_are_scored_again(evaluated, monkeypatch):
    from fmri2img.pipeline import evaluate as ev

    store, _ = evaluated
    calls = []
    real = ev._features
    monkeypatch.setattr(ev, "_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = evaluate(store, 1, ["px"], parts=["stage1"], nets=["alexnet2"], images_per_task=6, progress=False)
    assert calls and set(out["px/stage1"]) == {"PixCorr", "SSIM (column)", "SSIM-2D", "AlexNet(2)"}
    evaluate(store, 1, ["px"], parts=["stage1", "final"], nets=NETS, images_per_task=6, progress=False)
