"""Benchmark of stage 2 (fmri2img.models.vd_sampler): seconds per image of Versatile Diffusion img2img.

Times :func:`fmri2img.models.vd_sampler.reconstruct` end to end (posterior-sample encode, guided
dual-context DDIM steps, decode) and, separately, the three parts, after one warm-up call.
Run by hand; results go to benchmarks/README.md ("## Versatile Diffusion").

* ``tiny``: :func:`~fmri2img.models.versatile.tiny_vd_components` at 32² (latents 16²).
* ``full``: the Versatile Diffusion architecture (image UNet 320·(1, 2, 4, 4), text-flow
  transformers, kl-f8) at 512² with seeded random weights (built on the meta device and filled
  with N(0, 0.02): the cost does not depend on the values); few steps, since one CPU step costs
  about a minute.  ``--weights DIR`` loads a real diffusers-format directory instead.

Examples::

  python benchmarks/bench_versatile.py                                   # tiny and full, CPU, 1 thread
  python benchmarks/bench_versatile.py --sizes full --steps 4 --strength 0.5
  python benchmarks/bench_versatile.py --sizes full --device cuda --dtype float16 --steps 50 --strength 0.75
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

from fmri2img.models import vd_load
from fmri2img.models import versatile as V
from fmri2img.models import vd_sampler as S
from fmri2img.models.weights import image_generator, pick_device

logger = logging.getLogger("bench_versatile")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def full_random_components(device: str, dtype: str, seed: int = 0) -> V.VDComponents:
    """The full-size VD architecture with N(0, 0.02) weights, built without a slow random init."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        image_unet = UNet2DConditionModel(**V.VD_IMAGE_UNET)
        vae = AutoencoderKL(**V.VD_VAE)
        texts = {p: vd_load._like(image_unet.get_submodule(p)) for p in V.transformer_paths(image_unet)}
    unet = V.dual_unet(image_unet, texts)
    g = torch.Generator().manual_seed(seed)
    for module in (unet, vae):
        module.to_empty(device="cpu")
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    comps = V.VDComponents(unet=unet.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False),
                           scheduler=V.vd_scheduler())
    return comps.to(device=pick_device(device), dtype=S._DTYPES[dtype])


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def build(size: str, device: str, dtype: str, weights: str | None) -> tuple[V.VDComponents, int, float]:
    """The components, their image side and the build time."""
    t0 = time.perf_counter()
    if size == "tiny":
        comps, side = V.tiny_vd_components().to(device=pick_device(device), dtype=S._DTYPES[dtype]), 32
    elif weights:
        comps, side = vd_load.load_vd(weights, device=device, dtype=dtype), 512
    else:
        comps, side = full_random_components(device, dtype), 512
    return comps, side, time.perf_counter() - t0


def bench_one(size: str, n_images: int, steps: int, strength: float, dtype: str,
              built: tuple[V.VDComponents, int, float]) -> dict:
    """Warm up, then time reconstruct and its parts on ``n_images`` images (one batch); a JSON-able record."""
    comps, side, build_s = built
    d = comps.context_dim
    rng = np.random.default_rng(0)
    inp = dict(init_images=rng.integers(0, 256, (n_images, side, side, 3), dtype=np.uint8),
               vision=rng.standard_normal((n_images, 257, d)).astype(np.float32) * 0.05,
               text=rng.standard_normal((n_images, 77, d)).astype(np.float32) * 0.05,
               vision_uncond=rng.standard_normal((257, d)).astype(np.float32) * 0.05,
               text_uncond=rng.standard_normal((77, d)).astype(np.float32) * 0.05)
    s = S.VDSettings(size=side, dtype=dtype, steps=steps, strength=strength, batch_size=n_images)
    ids = list(range(n_images))
    dev = comps.device
    if size == "tiny" or dev.type == "cuda":  # warm-up (the full size is too slow on a CPU to run twice)
        one = {k: (v[:1] if k in ("init_images", "vision", "text") else v) for k, v in inp.items()}
        S.reconstruct(comps, **one, image_ids=ids[:1], settings=s)
    (_, info), total = _timed(lambda: S.reconstruct(comps, **inp, image_ids=ids, settings=s), dev)
    pixels = S._init_pixels(inp["init_images"], side)
    gens = [image_generator(0, i) for i in ids]
    z0, enc_s = _timed(lambda: S.encode_init(comps, pixels, gens), dev)
    _, dec_s = _timed(lambda: S.decode(comps, z0), dev)
    params = sum(p.numel() for p in comps.unet.parameters())
    return {"size": size, "device": str(dev), "dtype": dtype, "threads": torch.get_num_threads(), "images": n_images,
            "side": side, "steps": steps, "t_enc": s.t_enc, "unet_params": params,
            "vae_params": sum(p.numel() for p in comps.vae.parameters()), "build_s": round(build_s, 2),
            "total_s": round(total, 2), "s_per_image": round(total / n_images, 3),
            "encode_s_per_image": round(enc_s / n_images, 3), "decode_s_per_image": round(dec_s / n_images, 3),
            "step_s_per_image": round((total - enc_s - dec_s) / n_images / s.t_enc, 3),
            "redone_fp32": int(info["redone_fp32"].sum()),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    ap.add_argument("--images", type=int, nargs="+", default=None,
                    help="images per run, one batch; several values time several batch sizes on one build "
                         "(default: tiny 8, full 1)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps of the full schedule (tiny 50, full 4)")
    ap.add_argument("--strength", type=float, default=None, help="tiny 0.75 (37 steps), full 0.5 (2 steps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(S._DTYPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="diffusers-format VD directory for the full size")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    logger.info("# %s, torch %s, %s", platform.processor() or platform.machine(), torch.__version__, args.device)
    for size in args.sizes:
        built = build(size, args.device, args.dtype, args.weights)
        for n in args.images or [8 if size == "tiny" else 1]:
            rec = bench_one(size, n, args.steps or (50 if size == "tiny" else 4),
                            args.strength or (0.75 if size == "tiny" else 0.5), args.dtype, built)
            if rec["device"].startswith("cuda"):
                rec["gpu"] = torch.cuda.get_device_name()
                rec["peak_gpu_GB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                rec["images_per_s"] = round(1 / rec["s_per_image"], 3)
            logger.info(json.dumps(rec))


if __name__ == "__main__":
    main()
