"""The demo's cheap evaluation: tiny random stand-ins for the evaluation nets that have no weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmri2img.metrics.features import EVAL_NETS, TINY_EVAL_NETS, eval_features, eval_net_spec, preprocess
from fmri2img.metrics.nets.tiny import TinyEvalCNN, build_tiny_cnn


def test_tiny_stand_ins_only_replace_nets_without_weights():
    for name in EVAL_NETS:
        assert eval_net_spec(name) is EVAL_NETS[name]
        assert eval_net_spec(name, {}, tiny=True) is TINY_EVAL_NETS[name]
        key = EVAL_NETS[name].weights_key
        assert eval_net_spec(name, {key: "/weights/file.pth"}, tiny=True) is EVAL_NETS[name]
    assert TINY_EVAL_NETS["clip"] is EVAL_NETS["clip"]  # CLIP without weights is the tiny random model already


def test_tiny_taps_equal_plain_torch_layers():
    net = build_tiny_cnn(seed=3)
    x = preprocess(np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3)).astype(np.uint8))
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        h = F.max_pool2d(F.relu(F.conv2d(x, convs[0].weight, convs[0].bias, stride=4, padding=2)), 3, 2)
        conv2 = F.relu(F.conv2d(h, convs[1].weight, convs[1].bias, padding=2))
        h = F.max_pool2d(conv2, 3, 2)
        for c in convs[2:]:
            h = F.relu(F.conv2d(h, c.weight, c.bias, padding=1))
        torch.testing.assert_close(net.tap(x, "features.4"), conv2)
        torch.testing.assert_close(net.tap(x, "features.11"), h)
        torch.testing.assert_close(net.tap(x, "avgpool"), h.mean(dim=(2, 3)))
    assert conv2.shape[1:] == (12, 27, 27) and h.shape[1:] == (16, 13, 13)


def test_tiny_features_have_the_stated_sizes_and_differ_per_net():
    imgs = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 3)).astype(np.uint8)
    feats = {}
    for name in ("alexnet2", "alexnet5", "inceptionv3", "efficientnet_b1", "swav"):
        spec = TINY_EVAL_NETS[name]
        feats[name] = eval_features(name, spec.builder(), imgs, spec=spec)
        assert feats[name].shape == (3, spec.dims)
    assert not np.allclose(feats["inceptionv3"], feats["swav"])  # one seed per network
    np.testing.assert_array_equal(feats["swav"], eval_features("swav", TINY_EVAL_NETS["swav"].builder(), imgs,
                                                               spec=TINY_EVAL_NETS["swav"]))


def test_tiny_nets_have_no_weights_to_load():
    with pytest.raises(ValueError, match="tiny nets have random weights only"):
        build_tiny_cnn(weights="/some/alexnet.pth")
    with pytest.raises(ValueError, match="has no tap"):
        TinyEvalCNN().tap(torch.zeros(1, 3, 224, 224), "fc")
