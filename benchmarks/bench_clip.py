"""Benchmark of the CLIP feature extractors (fmri2img.models.clip): images/s for clip-vision
(the §2.3 preprocessing chain + vision tower) and clip-text (5 captions per image) at the tiny
and at the full ViT-L/14 size.  Run by hand; results go to benchmarks/README.md ("## CLIP").

The full-size model gets seeded random weights (the cost does not depend on the values);
with ``--weights DIR`` it loads a real transformers-format CLIP directory instead.  The
captions are tokenised by the tiny tokenizer (all its ids are valid for the 49,408-token
embedding); the text tower always sees 77 tokens, so the cost does not depend on the words.
Each measurement is timed after one warm-up call; build/load time is reported separately.

Examples::

  python benchmarks/bench_clip.py                          # tiny and full, CPU, 1 thread, 2 images
  python benchmarks/bench_clip.py --sizes full --images 4 --threads 2
  python benchmarks/bench_clip.py --device cuda --images 64 --batch-size 32 --dtype float16
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

from fmri2img.models import clip as C
from fmri2img.models.weights import pick_device

logger = logging.getLogger("bench_clip")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _build(size: str, weights: str | None, device: str, dtype: str):
    if weights and size == "full":
        return C.load_clip(weights, device=device, dtype=dtype)
    model, tok = C.tiny_clip(seed=0)
    if size == "full":
        from transformers import CLIPModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIPModel(C.vit_l14_config()).eval().requires_grad_(False)
    return model.to(device=pick_device(device), dtype=C.DTYPES[dtype]), tok


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def bench_one(size: str, n_images: int, batch_size: int, device: str, dtype: str, weights: str | None,
              repeats: int, workers: int | None = None) -> dict:
    """Time build, vision and text extraction for one configuration; return a JSON-able record."""
    t0 = time.perf_counter()
    model, tok = _build(size, weights, device, dtype)
    build_s = time.perf_counter() - t0
    dev = model.visual_projection.weight.device
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, 425, 425, 3), dtype=np.uint8)
    captions = np.array([[f"a photograph of a cat number {i}"] * 5 for i in range(n_images)])

    def vision() -> None:  # what the extractor runs: preprocessing of the next batch overlaps the tower
        for _ in C.clip_vision_batches(model, images, batch_size, workers=workers):
            pass

    pixels = C.clip_vision_preprocess(images, workers=workers)

    def tower() -> None:
        for i in range(0, n_images, batch_size):
            C.clip_vision_features(model, pixels[i:i + batch_size])

    t_pre = _timed(lambda: C.clip_vision_preprocess(images, workers=workers), dev, repeats)
    t_tower = _timed(tower, dev, repeats)
    t_vis = _timed(vision, dev, repeats)
    t_txt = _timed(lambda: C.clip_text_features(model, tok, captions, batch_size=5 * batch_size), dev, repeats)
    n_params = sum(p.numel() for p in model.parameters())
    return {"size": size, "params_M": round(n_params / 1e6, 1), "device": str(dev), "dtype": dtype,
            "threads": torch.get_num_threads(), "images": n_images, "batch_size": batch_size,
            "build_s": round(build_s, 2), "preprocess_images_per_s": round(n_images / t_pre, 2),
            "preprocess_threads": workers or "default",
            "vision_tower_images_per_s": round(n_images / t_tower, 3),
            "vision_images_per_s": round(n_images / t_vis, 3),
            "text_images_per_s": round(n_images / t_txt, 3), "text_captions_per_image": 5,
            "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse arguments, run the benchmarks, log and return the records."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    p.add_argument("--images", type=int, default=2, help="images per measurement (full size on CPU: 2-4)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(C.DTYPES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=None,
                   help="preprocessing threads (default min(8, cpu_count)); the tower figure excludes them")
    p.add_argument("--weights", default=None, help="transformers-format CLIP directory for the full size")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    machine = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    logger.info(json.dumps(machine))
    records = []
    for size in args.sizes:
        rec = {**bench_one(size, args.images, args.batch_size, args.device, args.dtype, args.weights,
                           args.repeats, args.workers), **machine}
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            rec.update(gpu=torch.cuda.get_device_name(), peak_gpu_GB=round(torch.cuda.max_memory_allocated() / 2**30, 2))
        logger.info(json.dumps(rec))
        records.append(rec)
    return records


if __name__ == "__main__":
    main()
