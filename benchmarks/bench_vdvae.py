"""Benchmark of the VDVAE stage (fmri2img.models.vdvae): images/s for encode-to-latents and
decode-from-latents at the tiny and the full (imagenet64) size.  Run by hand; results go to
benchmarks/README.md ("## VDVAE").

The full-size model gets seeded random weights (the cost does not depend on the values);
with ``--weights PATH`` it loads the real checkpoint instead.  Each measurement is timed
after one warm-up call; the build/load time is reported separately.

Examples::

  python benchmarks/bench_vdvae.py                       # tiny and full, CPU, 1 thread
  python benchmarks/bench_vdvae.py --sizes full --images 4 --threads 2
  python benchmarks/bench_vdvae.py --device cuda --dtype bfloat16 --images 30 --batch-size 30
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import time

import numpy as np
import torch

from fmri2img.models import vdvae as V

logger = logging.getLogger("bench_vdvae")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_one(size: str, n_images: int, n_blocks: int, batch_size: int, device: str, dtype: str,
              weights: str | None, repeats: int) -> dict:
    """Time build, encode and decode for one configuration; return a JSON-able record."""
    hp = V.HPARAMS["tiny" if size == "tiny" else "imagenet64"]
    n_blocks = min(n_blocks, len(hp.decoder_layers()))
    t0 = time.perf_counter()
    if weights and size == "full":
        model = V.load_vdvae(weights, hparams=hp, device=device, dtype=dtype)
    else:
        model = V.build_random_vdvae(hp, seed=0, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    dev = model.decoder.gain.device
    images = np.random.default_rng(0).integers(0, 256, (n_images, 425, 425, 3), dtype=np.uint8)
    ids = np.arange(n_images)
    V.encode_latents(model, images[:1], ids[:1], 0, n_blocks=n_blocks)  # warm-up
    enc = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        z = V.encode_latents(model, images, ids, 0, n_blocks=n_blocks, batch_size=batch_size)
        _sync(dev)
        enc.append(time.perf_counter() - t)
    V.decode_latents(model, z[:1], ids[:1], 0, n_blocks=n_blocks)  # warm-up
    dec = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        V.decode_latents(model, z, ids, 0, n_blocks=n_blocks, batch_size=batch_size)
        _sync(dev)
        dec.append(time.perf_counter() - t)
    return {
        "size": size, "hparams": hp.name, "n_params": sum(p.numel() for p in model.parameters()),
        "device": str(dev), "dtype": dtype, "threads": torch.get_num_threads(), "images": n_images,
        "batch_size": batch_size, "n_blocks": n_blocks, "latent_size": int(z.shape[1]),
        "build_s": round(build_s, 3),
        "encode_s_best": round(min(enc), 3), "encode_images_per_s": round(n_images / min(enc), 3),
        "decode_s_best": round(min(dec), 3), "decode_images_per_s": round(n_images / min(dec), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    p.add_argument("--images", type=int, default=None, help="images per run (default: tiny 32, full 2)")
    p.add_argument("--n-blocks", type=int, default=31, help="latent blocks kept (capped at the model's total)")
    p.add_argument("--batch-size", type=int, default=None, help="default: all images in one batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(V.DTYPES))
    p.add_argument("--weights", default=None, help="real imagenet64 checkpoint for the full size")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    logger.info("python %s, torch %s, %s, %s", platform.python_version(), torch.__version__,
                platform.processor() or platform.machine(), args.device)
    for size in args.sizes:
        n = args.images or (32 if size == "tiny" else 2)
        rec = bench_one(size, n, args.n_blocks, args.batch_size or n, args.device, args.dtype, args.weights,
                        args.repeats)
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            rec.update(gpu=torch.cuda.get_device_name(), peak_gpu_GB=round(torch.cuda.max_memory_allocated() / 2**30, 2))
        logger.info(json.dumps(rec))


if __name__ == "__main__":
    main()
