"""Benchmark of the evaluate stage's per-image cost at full size: each evaluation network's
features (fmri2img.metrics.features.eval_features at 224², the published architectures with
seeded random weights: the cost does not depend on the values) and the low-level metrics
(PixCorr, SSIM in Brain-Diffuser's column mode and 2-D) at NSD's 425².  Run by hand; results
go to benchmarks/README.md ("## Evaluate").

The evaluate stage computes every network's features once for the ground truth and once per
reconstruction run and part, then the scores over the whole test set (a 982 × 982 correlation
matrix per net: milliseconds).  So one NSD subject with Brain-Diffuser's two parts costs about
3 × 982 feature passes per network plus 2 × 982 low-level pairs.

Examples::

  python benchmarks/bench_evaluate.py                      # CPU, 1 thread, 4 images
  python benchmarks/bench_evaluate.py --images 64 --device cuda --threads 16
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
import torch

NETS = ("alexnet2", "alexnet5", "inceptionv3", "efficientnet_b1", "swav", "clip")


def _build(name: str, device: str):
    from fmri2img.metrics.features import EVAL_NETS

    if name == "clip":  # the evaluation's CLIP is ViT-L/14: build the full architecture with random weights
        from transformers import CLIPModel

        from fmri2img.models.clip import vit_l14_config

        torch.manual_seed(0)
        net = CLIPModel(vit_l14_config()).eval().requires_grad_(False)
    else:
        net = EVAL_NETS[name].builder(weights=None, seed=0)
    return net.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_net(name: str, images: np.ndarray, device: str, batch_size: int) -> dict:
    from fmri2img.metrics.features import eval_features

    t0 = time.perf_counter()
    net = _build(name, device)
    build = time.perf_counter() - t0
    eval_features(name, net, images[:1], batch_size)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    feats = eval_features(name, net, images, batch_size)
    _sync(device)
    dt = time.perf_counter() - t0
    del net
    return {"net": name, "build_s": round(build, 2), "images": len(images), "dims": int(feats.shape[1]),
            "s_per_image": round(dt / len(images), 4), "images_per_s": round(len(images) / dt, 2)}


def bench_lowlevel(gt: np.ndarray, rec: np.ndarray) -> dict:
    from fmri2img.metrics.scores import pixcorr, ssim

    out = {}
    for label, fn in (("PixCorr", lambda: pixcorr(gt, rec)), ("SSIM column", lambda: ssim(gt, rec, "column")),
                      ("SSIM 2-D", lambda: ssim(gt, rec, "2d"))):
        t0 = time.perf_counter()
        fn()
        out[label] = round((time.perf_counter() - t0) / len(gt), 4)
    return {"lowlevel_s_per_image": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--nets", default=",".join(NETS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 425, 425, 3), dtype=np.uint8)
    rec = rng.integers(0, 256, (args.images, 425, 425, 3), dtype=np.uint8)
    load0 = os.getloadavg()[0]
    rows = [bench_net(n, images, args.device, args.batch_size) for n in args.nets.split(",") if n]
    low = bench_lowlevel(images, rec)
    total = sum(r["s_per_image"] for r in rows)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "threads": args.threads, "device": args.device, "load_before": round(load0, 2),
                      "load_after": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime()),
                      "nets": rows, **low, "all_nets_s_per_image": round(total, 3),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)},
                     indent=1))


if __name__ == "__main__":
    main()
