"""Evaluation networks: torchvision key names and sizes, taps of REFERENCE.md §5, weight loading, preprocessing."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fmri2img.metrics.features import EVAL_NETS, build_clip, eval_features, preprocess
from fmri2img.metrics.nets import (build_alexnet, build_efficientnet_b1, build_inception_v3, build_resnet50,
                                   swav_to_torchvision)
from fmri2img.models.weights import WeightsError

torch.set_num_threads(1)

# Facts from torchvision (weights meta "num_params", and its model source), not from our code.
TORCHVISION = {
    # builder: (parameter count, state-dict entries incl. BN buffers, {key: shape} samples)
    build_alexnet: (61_100_840, 16, {"features.0.weight": (64, 3, 11, 11), "features.3.weight": (192, 64, 5, 5),
                                     "features.10.weight": (256, 256, 3, 3), "classifier.1.weight": (4096, 9216),
                                     "classifier.6.bias": (1000,)}),
    build_inception_v3: (27_161_264, 580, {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "AuxLogits.conv1.conv.weight": (768, 128, 5, 5), "AuxLogits.fc.weight": (1000, 768),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1), "fc.weight": (1000, 2048)}),
    build_efficientnet_b1: (7_794_184, 508, {
        "features.0.0.weight": (32, 3, 3, 3), "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
        "features.1.1.block.2.0.weight": (16, 16, 1, 1), "features.2.0.block.1.0.weight": (96, 1, 3, 3),
        "features.6.4.block.2.fc2.weight": (1152, 48, 1, 1), "features.7.1.block.3.1.running_mean": (320,),
        "features.8.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280)}),
    build_resnet50: (25_557_032, 320, {
        "conv1.weight": (64, 3, 7, 7), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.0.downsample.1.running_var": (2048,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)}),
}


@pytest.fixture(scope="module")
def nets():
    return {b: b(seed=3) for b in TORCHVISION}


@pytest.mark.slow
def test_torchvision_names_sizes_and_taps(nets):
    x = preprocess(np.random.default_rng(0).integers(0, 256, (1, 240, 200, 3), dtype=np.uint8))
    assert x.shape == (1, 3, 224, 224)
    taps = {build_alexnet: {"features.4": (1, 192, 27, 27), "features.11": (1, 256, 13, 13)},
            build_inception_v3: {"avgpool": (1, 2048)}, build_efficientnet_b1: {"avgpool": (1, 1280)},
            build_resnet50: {"avgpool": (1, 2048)}}
    for builder, (n_params, n_entries, samples) in TORCHVISION.items():
        net = nets[builder]
        sd = net.state_dict()
        assert sum(p.numel() for p in net.parameters()) == n_params, builder.__name__
        assert len(sd) == n_entries, builder.__name__
        assert {k: tuple(sd[k].shape) for k in samples} == samples
        assert not net.training
        with torch.no_grad():
            for tap, shape in taps[builder].items():
                out = net.tap(x, tap)
                assert tuple(out.shape) == shape and torch.isfinite(out).all(), (builder.__name__, tap)
    dims = {k: v.dims for k, v in EVAL_NETS.items()}
    assert dims == {"alexnet2": 139_968, "alexnet5": 43_264, "inceptionv3": 2048, "clip": 768,
                    "efficientnet_b1": 1280, "swav": 2048}


# Computed once with torchvision 0.29.2's own model source (torchvision is not a dependency): the
# sha256 (first 16 hex) of its state-dict "key shape" lines in order, and its tap outputs for the
# weights of _deterministic_state on a seeded input: (mean, std, {flat index: value}).
TORCHVISION_GOLDEN = {
    build_alexnet: ("9c198ebdae1863e4", {
        "features.4": (9.647666e-01, 1.577415e+00, {0: 2.893693, 46656: 0.0}),
        "features.11": (1.400783e+00, 2.015265e+00, {21632: 3.322535, 43263: 0.0})}),
    build_inception_v3: ("aab0ac2cbaf84aa2", {"avgpool": (1.124877e+00, 1.372210e+00, {682: 1.619818, 2047: 1.08312})}),
    build_efficientnet_b1: ("9aaba0741e04badf", {
        "avgpool": (1.084435e+00, 1.464511e+00, {0: 2.367245, 426: 0.08988094, 1279: 3.762187})}),
    build_resnet50: ("d7e4f8bb0a536344", {
        "avgpool": (2.782204e+03, 2.933851e+03, {0: 1618.338, 682: 5432.707, 1024: 246.8989})}),
}


def _deterministic_state(sd):
    """Weights that depend only on the keys' order and shapes (so any net with torchvision's layout gets them)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith(("running_mean", "bias")):
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim == 1:
            out[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            out[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
    return out


@pytest.mark.slow
def test_layout_and_taps_equal_torchvision():
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for builder, (key_hash, taps) in TORCHVISION_GOLDEN.items():
        net = builder(seed=0)
        sd = net.state_dict()
        lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
        assert hashlib.sha256(lines.encode()).hexdigest()[:16] == key_hash, builder.__name__
        net.load_state_dict(_deterministic_state(sd))
        with torch.no_grad():
            for tap, (mean, std, values) in taps.items():
                f = net.tap(x, tap).flatten(1)[0].double()
                assert f.mean().item() == pytest.approx(mean, rel=1e-4), (builder.__name__, tap)
                assert f.std().item() == pytest.approx(std, rel=1e-4), (builder.__name__, tap)
                for i, v in values.items():
                    assert f[i].item() == pytest.approx(v, rel=1e-4, abs=1e-5), (builder.__name__, tap, i)


def test_seeded_random_weights_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_efficientnet_b1(seed=1), build_efficientnet_b1(seed=1), build_efficientnet_b1(seed=2)
    assert torch.rand(1) == before  # building did not consume the caller's random stream
    torch.testing.assert_close(a.classifier[1].weight, b.classifier[1].weight)
    assert not torch.equal(a.classifier[1].weight, c.classifier[1].weight)


def test_unknown_tap_is_refused(nets):
    with pytest.raises(ValueError,
                       match=r"AlexNet has no tap 'features.5': use one of \['features.4', 'features.11'\]"):
        nets[build_alexnet].tap(torch.zeros(1, 3, 224, 224), "features.5")


# ------------------------------------------------------------------ loading files
@pytest.mark.slow
def test_torchvision_file_loads_and_old_files_without_bn_counters(tmp_path, nets):
    from safetensors.torch import save_file

    for builder in (build_efficientnet_b1, build_inception_v3):
        src = nets[builder]
        state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1
        torch.save(state, tmp_path / "w.pth")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
        for name in ("w.pth", "w.safetensors"):
            loaded = builder(weights=str(tmp_path / name), seed=99)
            for k, v in state.items():
                torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_wrong_file_gets_one_clear_error(tmp_path, nets):
    state = nets[build_alexnet].state_dict()
    state["classifier.6.weight"] = torch.zeros(10, 4096)  # a 10-class head
    state.pop("features.0.bias")
    torch.save(state, tmp_path / "alex.pth")
    with pytest.raises(WeightsError, match=r"AlexNet .* 1 missing key\(s\): features.0.bias; 1 misshapen: "
                                           r"classifier.6.weight \(10, 4096\) \(expected \(1000, 4096\)\)"):
        build_alexnet(weights=str(tmp_path / "alex.pth"))
    torch.save(nets[build_resnet50].state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match=r"EfficientNet-B1 .* missing key\(s\): classifier.1.bias"):
        build_efficientnet_b1(weights=str(tmp_path / "resnet.pth"))


def test_swav_checkpoint_loads_like_torch_hub(tmp_path, nets):
    """SwAV's checkpoint: DDP 'module.' keys, a projection head and prototypes, no fc."""
    src = nets[build_resnet50]
    ckpt = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    ckpt.update({"module.projection_head.0.weight": torch.randn(2048, 2048), "module.projection_head.1.running_mean":
                 torch.zeros(2048), "module.projection_head.3.weight": torch.randn(128, 2048),
                 "module.prototypes.weight": torch.randn(3000, 128)})
    torch.save(ckpt, tmp_path / "swav_800ep_pretrain.pth.tar")
    net = build_resnet50(weights=str(tmp_path / "swav_800ep_pretrain.pth.tar"), seed=7)
    assert set(swav_to_torchvision(ckpt)) == {k for k in src.state_dict() if not k.startswith("fc.")}
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net.tap(x, "avgpool"), src.tap(x, "avgpool"))
    torch.testing.assert_close(net.fc.weight, build_resnet50(seed=7).fc.weight)  # fc left at its seeded init
    ckpt.pop("module.layer2.1.conv2.weight")
    torch.save(ckpt, tmp_path / "broken.pth.tar")
    with pytest.raises(WeightsError, match=r"missing key\(s\): layer2.1.conv2.weight"):
        build_resnet50(weights=str(tmp_path / "broken.pth.tar"))


# ------------------------------------------------------------------ preprocessing and features
def test_preprocess_equals_pil_bilinear_and_normalisation():
    img = np.random.default_rng(1).integers(0, 256, (2, 60, 50, 3), dtype=np.uint8)
    for norm, mean, std in (("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                            ("clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))):
        got = preprocess(img, norm).numpy()
        for i in range(2):
            r = np.asarray(Image.fromarray(img[i]).resize((224, 224), Image.BILINEAR), dtype=np.float64) / 255
            want = ((r - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
            np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_inception_transform_input_remaps_imagenet_to_unit_range():
    net_t = build_inception_v3(seed=4)
    net_f = build_inception_v3(seed=4, transform_input=False)
    x = preprocess(np.random.default_rng(2).integers(0, 256, (1, 80, 80, 3), dtype=np.uint8))
    pixels = x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(
        1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net_t.tap(x, "avgpool"), net_f.tap((pixels - 0.5) / 0.5, "avgpool"),
                                   rtol=1e-4, atol=1e-5)


def test_eval_features_cnn_and_nan_image(nets):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 64, 64, 3)).astype(np.float32)
    images[1, 0, 0, 0] = np.nan
    feats = eval_features("alexnet5", nets[build_alexnet], images, batch_size=1)
    assert feats.shape == (3, 43_264) and feats.dtype == np.float32
    assert np.isnan(feats[1]).all() and np.isfinite(feats[[0, 2]]).all()
    with torch.no_grad():
        want = nets[build_alexnet].features[:12](preprocess(images[[0, 2]].astype(np.uint8))).flatten(1)
    np.testing.assert_allclose(feats[[0, 2]], want.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"evaluation feature 'alexnet' is not known: use one of \['alexnet2'"):
        eval_features("alexnet", nets[build_alexnet], images)


@pytest.mark.slow
def test_eval_features_clip_is_the_projected_cls_embedding():
    model = build_clip(seed=5)
    images = np.random.default_rng(4).integers(0, 256, (2, 100, 100, 3), dtype=np.uint8)
    got = eval_features("clip", model, images, batch_size=2)
    with torch.no_grad():  # independent path: hidden states → post-LN of the CLS token → projection
        hidden = model.vision_model(pixel_values=preprocess(images, "clip")).last_hidden_state
        want = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 0]))
    assert got.shape == (2, model.config.projection_dim)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="must be a transformers CLIPModel"):
        eval_features("clip", build_alexnet(), images)


def test_features_to_summary_end_to_end(nets):
    """Images → eval features → per-image scores → summary, with one NaN reconstruction."""
    from fmri2img.metrics.scores import per_image_scores, summarize

    rng = np.random.default_rng(6)
    gt = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    rec = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.float32)
    rec[3] = np.nan
    net = nets[build_alexnet]
    feats = {"gt": eval_features("alexnet5", net, gt), "rec": eval_features("alexnet5", net, rec)}
    per = per_image_scores(gt, rec, {"alexnet5": feats["gt"]}, {"alexnet5": feats["rec"]})
    assert list(per) == ["PixCorr", "SSIM (column)", "SSIM-2D", "AlexNet(5)"]
    summary = summarize(per)
    for name, row in summary.items():
        assert row["excluded"] == [3] and np.isfinite(row["mean"]), name
    assert summary["AlexNet(5)"]["mean"] == 1.0  # mild noise: every reconstruction is identified


TV_FACTORIES = {  # our builder -> (torchvision constructor name, its keyword arguments)
    build_alexnet: ("alexnet", {}),
    build_inception_v3: ("inception_v3", {"aux_logits": True, "transform_input": True, "init_weights": True}),
    build_efficientnet_b1: ("efficientnet_b1", {}),
    build_resnet50: ("resnet50", {}),
}


@pytest.mark.slow
def test_outputs_equal_torchvision_given_the_same_random_weights():
    """Where torchvision is installed (the GPU machine; it is not a dependency): torchvision's own models and
    ours, given the same random weights, give the same taps and logits, on CUDA when there is one."""
    tvm = pytest.importorskip("torchvision.models")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5)).to(dev)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32 on both sides
    for builder, (name, kwargs) in TV_FACTORIES.items():
        ref = getattr(tvm, name)(weights=None, **kwargs)
        ref.load_state_dict(_deterministic_state(ref.state_dict()))  # scaled weights: activations stay O(1)
        ref = ref.eval().to(dev)
        ours = builder(seed=0)
        ours.load_state_dict(ref.state_dict(), strict=True)
        ours = ours.eval().to(dev)
        modules = dict(ref.named_modules())
        for tap in EVAL_NETS_TAPS[builder]:
            seen = {}
            hook = modules[tap].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
            with torch.no_grad():
                logits = ref(x)
            hook.remove()
            with torch.no_grad():
                got = ours.tap(x, tap)
                mine = ours(x)
            want = seen["out"]
            torch.testing.assert_close(got.flatten(1), want.flatten(1), rtol=1e-4, atol=1e-4 * want.abs().max().item(),
                                       msg=lambda m: f"{builder.__name__} tap {tap}: {m}")
            torch.testing.assert_close(mine, logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item(),
                                       msg=lambda m: f"{builder.__name__} logits: {m}")


EVAL_NETS_TAPS = {b: list(taps) for b, (_, taps) in TORCHVISION_GOLDEN.items()}
