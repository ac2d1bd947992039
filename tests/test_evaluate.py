"""The evaluate stage against direct metric computations (the report: tests/test_report.py)."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from fmri2img.metrics.features import EVAL_NETS, eval_features
from fmri2img.metrics.scores import pixcorr, ssim, two_way_identification
from fmri2img.pipeline.evaluate import evaluate, get_net, read_summary
from fmri2img.pipeline.reconstruct import reconstruct_run, run_spec
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


def test_rerun_of_a_finished_evaluation_loads_no_network(evaluated, monkeypatch):
    """Issue 12 item 6: nothing is recomputed, not even the feature sizes (which load every net)."""
    from fmri2img.pipeline import evaluate as ev

    store, first = evaluated
    before = {g: dict(store.group(g).attrs) for g in store.list_groups("metrics/")}
    for name in ("net_features", "eval_block", "gt_block", "get_net"):
        monkeypatch.setattr(ev, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called on a finished evaluation"))
    again = evaluate(store, 1, ["px"], parts=["stage1", "final"], nets=NETS, images_per_task=6, progress=False)
    assert again == first
    assert {g: dict(store.group(g).attrs) for g in store.list_groups("metrics/")} == before


def test_changed_nets_are_scored_again(evaluated, monkeypatch):
    from fmri2img.pipeline import evaluate as ev

    store, _ = evaluated
    calls = []
    real = ev.net_features
    monkeypatch.setattr(ev, "net_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = evaluate(store, 1, ["px"], parts=["stage1"], nets=["alexnet2"], images_per_task=6, progress=False)
    assert calls and set(out["px/stage1"]) == {"PixCorr", "SSIM (column)", "SSIM-2D", "AlexNet(2)"}
    evaluate(store, 1, ["px"], parts=["stage1", "final"], nets=NETS, images_per_task=6, progress=False)
