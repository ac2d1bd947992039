"""The demo's VDVAE: the project's own architecture (``DEMO`` hparams) fitted to mini-NSD photographs.

``fmri2img demo`` has no imagenet64 checkpoint (nothing is downloaded), and a random-weight VDVAE
decodes to coloured static.  So the demo trains the small ``DEMO`` configuration with the VDVAE
objective (:mod:`fmri2img.models.vdvae_train`) on the subjects' *training* photographs (never a
test image: those are what the report scores), saves the state dict in openai/vdvae's layout,
and the features and reconstruct stages load it through ``[weights] vdvae`` exactly as they
would load ``imagenet64-iter-1600000-model-ema.th``.  A JSON manifest beside the file records
what it was trained on and how; a later demo reuses the file when the manifest matches.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import fsspec
import numpy as np
import torch

from fmri2img.models.vdvae import HPARAMS
from fmri2img.models.vdvae_train import TrainSettings, train_vdvae
from fmri2img.storage.nsd import NSDLayout, read_expdesign, read_stimuli

logger = logging.getLogger(__name__)

#: the demo's VDVAE configuration (a key of :data:`fmri2img.models.vdvae.HPARAMS`) and latent blocks kept
DEMO_HPARAMS = "demo"
DEMO_N_BLOCKS = 7
#: the demo's training budget: about 40 s on an idle 2-core machine (benchmarks/README.md)
DEMO_TRAIN = TrainSettings(steps=200, batch_size=32, lr=2e-3, kl_start=0.1, kl_warmup=0.5, seed=0, threads=1)
MANIFEST_VERSION = 1


def split_image_ids(source_root: str | Path, subjects: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """0-based ids of the subjects' training images and of the test (shared) images, from the design file.

    Returns
    -------
    train_ids : array of int64
        Images some subject saw that are not test images, sorted.
    test_ids : array of int64
        The shared images every subject is tested on (``sharedix`` − 1), sorted.
    """
    fs = fsspec.filesystem("file")
    design = read_expdesign(fs, NSDLayout(str(source_root)).expdesign())
    test = np.unique(design.sharedix.astype(np.int64) - 1)
    seen = np.unique(np.concatenate([design.subjectim[int(s) - 1] for s in subjects]).astype(np.int64) - 1)
    train = np.setdiff1d(seen, test)
    if np.intersect1d(train, test).size:  # cannot happen by construction; a test image must never be learnt
        raise RuntimeError("the demo VDVAE's training set contains test images")
    return train, test


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wanted(train_ids: np.ndarray, settings: TrainSettings, hparams: str) -> dict:
    return {"version": MANIFEST_VERSION, "hparams": hparams, "hparams_values": HPARAMS[hparams].to_dict(),
            "settings": settings.to_dict(), "image_ids": [int(i) for i in train_ids],
            "torch": torch.__version__.split("+")[0]}


def cached_weights(models_dir: Path, wanted: dict) -> tuple[Path, dict] | None:
    """The cached weights file and manifest when the manifest matches ``wanted`` and the file its sha256."""
    manifest_path = models_dir / "vdvae-demo.json"
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return None
    if any(manifest.get(k) != v for k, v in wanted.items()):
        return None
    path = models_dir / str(manifest.get("file", ""))
    if not path.is_file() or sha256_file(path) != manifest.get("sha256"):
        return None
    return path, manifest


def ensure_demo_vdvae(source_root: str | Path, models_dir: str | Path, subjects: Sequence[int],
                      settings: TrainSettings = DEMO_TRAIN, hparams: str = DEMO_HPARAMS,
                      progress: bool = False) -> tuple[Path, dict]:
    """Train (or reuse) the demo VDVAE on mini-NSD's training photographs.

    Parameters
    ----------
    source_root : path
        The mini-NSD root (NSD layout).
    models_dir : path
        Where ``vdvae-demo-<sha256[:12]>.pt`` and ``vdvae-demo.json`` go.
    subjects : sequence of int
        Whose training images are used (their test images never are).
    settings : TrainSettings
    hparams : str
        Key of :data:`fmri2img.models.vdvae.HPARAMS`.
    progress : bool
        Show the stages' progress bar over the training steps.

    Returns
    -------
    path : Path
        The state-dict file (openai/vdvae key names), for ``[weights] vdvae``.
    manifest : dict
        seed, steps, image ids, hparams, sha256, loss summary, seconds; ``"reused"`` says whether
        the cache was used.
    """
    models_dir = Path(models_dir)
    train_ids, test_ids = split_image_ids(source_root, subjects)
    wanted = _wanted(train_ids, settings, hparams)
    hit = cached_weights(models_dir, wanted)
    if hit is not None:
        logger.info("demo VDVAE: reusing %s (manifest matches)", hit[0])
        return hit[0], {**hit[1], "reused": True}
    images = read_stimuli(fsspec.filesystem("file"), NSDLayout(str(source_root)).stimuli(), train_ids)
    from fmri2img.pipeline.tasks import progress_bar

    with progress_bar(settings.steps, "demo VDVAE", progress, unit="step") as bar:
        model, hist = train_vdvae(images, HPARAMS[hparams], settings, on_step=lambda _: bar.update(1))
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / "vdvae-demo.pt.tmp"
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, tmp)
    digest = sha256_file(tmp)
    for old in models_dir.glob("vdvae-demo-*.pt"):
        old.unlink()
    path = models_dir / f"vdvae-demo-{digest[:12]}.pt"
    tmp.replace(path)
    manifest = {**wanted, "file": path.name, "sha256": digest, "n_images": int(len(train_ids)),
                "n_test_images_excluded": int(len(test_ids)), "seconds": round(hist["seconds"], 1),
                "loss": _summary(hist),
                "note": weights_note(len(train_ids), settings.steps)}
    (models_dir / "vdvae-demo.json").write_text(json.dumps(manifest, indent=1))
    return path, {**manifest, "reused": False}


def weights_note(n_images: int, steps: int) -> str:
    """The provenance line recorded with reconstructions made with the demo VDVAE."""
    return (f"VDVAE: the project's architecture at demo size (32x32, width 32), trained by fmri2img demo on "
            f"{n_images} mini-NSD training photographs (no test image) for {steps} steps, not the imagenet64 "
            f"checkpoint")


def _summary(hist: dict) -> dict:
    """First and last ELBO/distortion/rate (last = mean of the final 20 steps) and the ELBO every 10 % of steps."""
    n = len(hist["elbo"])
    tail = slice(max(0, n - 20), n)
    out = {f"{k}_first": round(hist[k][0], 4) for k in ("elbo", "distortion", "rate")}
    out.update({f"{k}_last": round(float(np.mean(hist[k][tail])), 4) for k in ("elbo", "distortion", "rate")})
    out["elbo_curve"] = [round(float(np.mean(hist["elbo"][i:i + max(1, n // 10)])), 4)
                         for i in range(0, n, max(1, n // 10))]
    out["units"] = "nats per image dimension"
    return out
