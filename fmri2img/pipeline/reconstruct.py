"""The reconstruct stage: predicted features → stage 1 (VDVAE decode or pixels) → stage 2 (Versatile Diffusion).

Test images in partitions, one Dask task per partition; the models are built once
per worker (the same VDVAE/CLIP the features stage used, from the per-process
extractor cache).  Stage-2 tasks ask for the ``GPU`` resource when the cluster
has GPU workers (else they run on CPU).  Each image's randomness comes from
(run seed, image id), so output does not depend on partitioning, worker count
or retries.  Writes ``recon/subjNN/<run>/stage1`` and ``.../final`` (uint8
``images (image, y, x, rgb)``), resumable per partition; PNG files go to the
outputs URL (``recon/subjNN/<run>/{stage1,final}/<nsd id>.png``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import dask.array as da
import numpy as np
import xarray as xr

from fmri2img.config import Config, ConfigError, register_check
from fmri2img.pipeline.features import get_extractor
from fmri2img.pipeline.regress import prediction_group
from fmri2img.pipeline.tasks import Task, run_tasks
from fmri2img.storage import schema
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.weights import opened_options
from fmri2img.storage.store import Region, Store, regular_regions

logger = logging.getLogger(__name__)

#: stage-1 decoders: feature name → function(predictions, image_ids, seed, run) → uint8 (n, 512, 512, 3)
STAGE1: dict[str, Any] = {}

_VD: dict[str, Any] = {}
_LOCK = threading.Lock()


class ReconstructError(ValueError):
    """A run cannot be reconstructed as configured; the message says how to fix it."""


@dataclass
class RunSpec:
    """One named reconstruction run (serialisable; sent to the workers).

    Attributes
    ----------
    name : str
        The run's name, e.g. ``"brain-diffuser"``; outputs go to ``recon/subjNN/<name>``.
    stage1 : str
        Feature whose predictions give the stage-1 image: a feature of kind ``"vdvae"`` or ``"pixels"``
        (e.g. ``"vdvae"``, or ``"vdvae-10"`` with ``kind = "vdvae"``).
    preset : str
        Stage-2 preset of :data:`fmri2img.models.vd_sampler.PRESETS`, or ``""`` for stage 1 only.
    settings : dict
        Overrides of the preset's :class:`~fmri2img.models.vd_sampler.VDSettings` (dtype, steps, ...).
    vision, text : str
        Feature names of the predicted CLIP contexts (e.g. ``"clip-vision"``, or ``"clip-vision-77"``
        with ``kind = "clip-vision"`` and ``tokens = "first77"``).
    extractor_options : dict
        Feature name → extractor options (the same as the features stage, so the same models).
    vd : dict
        Versatile Diffusion weights: ``{"tiny": True}`` or ``{"weights": dir/URL}`` or
        ``{"unet_pth": ..., "vae_pth": ...}``, plus ``storage_options``, ``device``.
    """

    name: str
    stage1: str = "vdvae"
    preset: str = "brain-diffuser"
    settings: dict = field(default_factory=dict)
    vision: str = "clip-vision"
    text: str = "clip-text"
    extractor_options: dict = field(default_factory=dict)
    vd: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def stage1_kind(self) -> str:
        """The extractor kind of the stage-1 feature (the key of :data:`STAGE1`)."""
        return (self.extractor_options.get(self.stage1) or {}).get("kind", self.stage1)

    def features_needed(self) -> list[str]:
        names = [self.stage1]
        if self.preset:
            from fmri2img.models.vd_sampler import preset

            mix = preset(self.preset, **self.settings).mix
            names += ([self.vision] if mix < 1 else []) + ([self.text] if mix > 0 else [])
        return names


def recon_group(subject: int, run: str, part: str) -> str:
    return f"recon/{schema.subject_key(subject)}/{run}/{part}"


# -- stage 1 ---------------------------------------------------------------------------------------

def _stage1_vdvae(pred: np.ndarray, ids: np.ndarray, run: RunSpec) -> np.ndarray:
    from fmri2img.models.vdvae import decode_latents, upsample_512

    ext = get_extractor(run.stage1, run.extractor_options.get(run.stage1, {}))
    with _LOCK:
        small = decode_latents(ext.model, pred.astype(np.float32), ids, run.seed, n_blocks=ext.n_blocks)
    return upsample_512(small)


def _stage1_pixels(pred: np.ndarray, ids: np.ndarray, run: RunSpec) -> np.ndarray:
    from fmri2img.models.pixels import pixels_to_image
    from fmri2img.models.vdvae import upsample_512

    return upsample_512(pixels_to_image(pred))


STAGE1.update({"vdvae": _stage1_vdvae, "pixels": _stage1_pixels})


# -- stage 2 ---------------------------------------------------------------------------------------

def _vd_components(run: RunSpec):
    from fmri2img.models import vd_load, versatile

    key = json.dumps(run.vd, sort_keys=True, default=str)
    with _LOCK:
        if key not in _VD:
            opts = opened_options(run.vd)
            device, dtype = opts.pop("device", "auto"), opts.pop("dtype", "float32")
            if opts.pop("tiny", False):
                dim = _context_dim(run)
                comps = versatile.tiny_vd_components(seed=int(opts.pop("seed", 0)), context_dim=dim)
                from fmri2img.models.weights import pick_device

                comps.to(device=pick_device(device))
            elif "weights" in opts:
                comps = vd_load.load_vd(opts["weights"], device=device, dtype=dtype)
            elif "unet_pth" in opts:
                comps = vd_load.load_vd_original(opts["unet_pth"], opts["vae_pth"], device=device, dtype=dtype)
            else:
                raise ReconstructError(
                    "no Versatile Diffusion weights: set [weights] versatile_diffusion (a diffusers-format directory) "
                    "or versatile_diffusion_pth + kl_f8_pth, or tiny = true for random weights")
            _VD[key] = comps
        return _VD[key]


def _context_dim(run: RunSpec) -> int:
    name = run.vision if run.vision in run.extractor_options else run.text
    return int(get_extractor(name, run.extractor_options.get(name, {})).feature_shape[-1])


def _unconditional(run: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """CLIP-vision of a grey image and CLIP-text of '' from the same CLIP the features used (once per process)."""
    key = json.dumps(["uncond", run.vision, run.text, run.extractor_options.get(run.vision),
                      run.extractor_options.get(run.text)], sort_keys=True, default=str)
    with _LOCK:
        if key not in _VD:
            _VD[key] = _compute_unconditional(run)
        return _VD[key]


def _compute_unconditional(run: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    from fmri2img.models.clip import clip_text_uncond, clip_vision_uncond
    from fmri2img.models.clip_extract import reduce_tokens

    text = vision = None
    if run.text in run.extractor_options:
        ext = get_extractor(run.text, run.extractor_options[run.text])
        text = clip_text_uncond(ext.model, ext.tokenizer)
    if run.vision in run.extractor_options:
        ext = get_extractor(run.vision, run.extractor_options[run.vision])
        vision = clip_vision_uncond(ext.model)
        vision = reduce_tokens(vision[None], ext.tokens, getattr(ext, "pool_grid", 4))[0]
    return vision, text


def run_stage2(stage1: np.ndarray, ids: np.ndarray, contexts: dict[str, np.ndarray | None], run: RunSpec):
    """Versatile Diffusion img2img of stage-1 images ``(n, H, W, 3)`` with the run's predicted contexts.

    Each row is seeded by (run seed, its id in ``ids``); returns (final images, sampler facts).
    """
    from fmri2img.models.vd_sampler import preset, reconstruct

    comps = _vd_components(run)
    vision_u, text_u = _unconditional(run)
    vision, text = contexts.get(run.vision), contexts.get(run.text)
    tokens = vision.shape[1] if vision is not None else (vision_u.shape[0] if vision_u is not None else 257)
    settings = preset(run.preset, **{"vision_tokens": tokens, **run.settings})
    return reconstruct(comps, stage1, vision, text, vision_u, text_u, ids, run.seed, settings)


# -- task ------------------------------------------------------------------------------------------

def reconstruct_block(store: Store, subject: int, run: RunSpec, region: Region, outputs: Outputs | None) -> dict:
    """Stage 1 and (when configured) stage 2 for one partition of the test images (task)."""
    t0 = time.perf_counter()
    g1, g2 = recon_group(subject, run.name, "stage1"), recon_group(subject, run.name, "final")
    preds = {name: store.group(prediction_group(subject, name))["features"] for name in run.features_needed()}
    ids = np.asarray(store.group(prediction_group(subject, run.stage1))["image"][region.slice])
    if region.index in store.done_regions(g1):
        stage1 = np.asarray(store.group(g1)["images"][region.slice])
    else:
        stage1 = STAGE1[run.stage1_kind](np.asarray(preds[run.stage1][region.slice]), ids, run)
        store.write_region(g1, region, {"images": stage1})
        if outputs is not None:
            outputs.write_pngs(f"recon/{schema.subject_key(subject)}/{run.name}/stage1", [int(i) for i in ids], stage1)
    redone = 0
    if run.preset:
        contexts = {name: np.asarray(preds[name][region.slice], dtype=np.float32)
                    for name in (run.vision, run.text) if name in preds}
        final, info = run_stage2(stage1, ids, contexts, run)
        flags = np.asarray(info.get("redone_fp32", np.zeros(len(ids), bool)), dtype=bool)
        redone = int(flags.sum())
        store.write_region(g2, region, {"images": final, "redone_fp32": flags})
        if outputs is not None:
            outputs.write_pngs(f"recon/{schema.subject_key(subject)}/{run.name}/final", [int(i) for i in ids], final)
    return {"images": len(ids), "redone_fp32": redone, "seconds": time.perf_counter() - t0}


# -- the stage ---------------------------------------------------------------------------------------

def _template(ids: np.ndarray, size: int, chunk: int, final: bool) -> xr.Dataset:
    n = len(ids)
    ds = xr.Dataset(
        {"images": (("image", "y", "x", "rgb"), da.zeros((n, size, size, 3), chunks=(chunk, size, size, 3),
                                                          dtype=np.uint8))},
        coords={"image": ("image", np.asarray(ids, dtype=np.int64))},
    )
    if final:
        ds["redone_fp32"] = ("image", da.zeros((n,), chunks=(chunk,), dtype=bool))
        ds["redone_fp32"].attrs["long_name"] = "image redone in float32 after a NaN/Inf in reduced precision"
    ds["images"].attrs["units"] = "uint8 RGB"
    return ds


def gpu_resources(client, device: str) -> dict | None:
    """``{"GPU": 1}`` when the work should land on the cluster's GPU workers (some have one), else None."""
    if client is None or str(device).startswith("cpu"):
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def _check_stage1(run: RunSpec) -> None:
    if run.stage1_kind not in STAGE1:
        kind = f" (kind {run.stage1_kind!r})" if run.stage1_kind != run.stage1 else ""
        raise ReconstructError(f"reconstruct.runs.{run.name}.stage1 = {run.stage1!r}{kind}; expected one of "
                               f"{sorted(STAGE1)} or a feature of that kind (a [features.extractors] entry with "
                               f"kind = \"vdvae\")")


def _check_contexts(run: RunSpec) -> None:
    """The features a stage-2 run feeds as CLIP contexts must be of the CLIP kinds (when configured)."""
    needed = run.features_needed()
    for key, kind in (("vision", "clip-vision"), ("text", "clip-text")):
        feature = getattr(run, key)
        got = (run.extractor_options.get(feature) or {}).get("kind", feature)
        if feature in needed and feature in run.extractor_options and got != kind:
            raise ReconstructError(f"reconstruct.runs.{run.name}.{key} = {feature!r} is a feature of kind {got!r}; "
                                   f"expected one of kind {kind!r} (e.g. \"{kind}\", or a [features.extractors] "
                                   f"entry with kind = \"{kind}\")")


RUN_KEYS = ("stage1", "preset", "settings", "vision", "text", "tiny")


def run_spec(name: str, options: Mapping[str, Any], *, extractor_options: Mapping[str, dict], weights: Mapping[str, Any],
             seed: int, device: str = "auto") -> RunSpec:
    """A :class:`RunSpec` from a ``[reconstruct.runs.<name>]`` table, validated with clear errors."""
    from fmri2img.models.vd_sampler import PRESETS, preset

    unknown = sorted(set(options) - set(RUN_KEYS))
    if unknown:
        raise ReconstructError(f"reconstruct.runs.{name}: unknown key(s) {unknown}; valid: {list(RUN_KEYS)}")
    spec = RunSpec(name=name, stage1=options.get("stage1", "vdvae"), preset=options.get("preset", "brain-diffuser"),
                   settings=dict(options.get("settings", {})), vision=options.get("vision", "clip-vision"),
                   text=options.get("text", "clip-text"), seed=int(seed),
                   extractor_options={k: dict(v) for k, v in extractor_options.items()})
    _check_stage1(spec)
    if spec.preset:
        if spec.preset not in PRESETS:
            raise ReconstructError(f"reconstruct.runs.{name}.preset = {spec.preset!r}; expected one of "
                                   f"{sorted(PRESETS)} or \"\" (stage 1 only)")
        try:
            preset(spec.preset, **spec.settings)
        except (TypeError, ValueError) as exc:
            raise ReconstructError(f"reconstruct.runs.{name}.settings: {exc}") from None
        vd: dict[str, Any] = {"device": device}
        if options.get("tiny"):
            vd["tiny"] = True
        elif weights.get("versatile_diffusion"):
            vd["weights"] = weights["versatile_diffusion"]
        elif weights.get("versatile_diffusion_pth"):
            vd.update(unet_pth=weights["versatile_diffusion_pth"], vae_pth=weights.get("kl_f8_pth", ""))
        if weights.get("storage_options") and not vd.get("tiny"):
            vd["storage_options"] = dict(weights["storage_options"])
        vd["dtype"] = spec.settings.get("dtype", preset(spec.preset).dtype)
        spec.vd = vd
        _check_contexts(spec)
    return spec


def part_provenance(run: RunSpec) -> dict[str, dict[str, Any]]:
    """``random_weights`` and ``weights_note`` of each part (the attrs of ``recon/.../stage1`` and ``final``).

    stage 1 is random iff its feature's extractor has random weights (``tiny``); the final image is
    random iff Versatile Diffusion is tiny or any feature it uses (stage 1, CLIP-vision, CLIP-text) is.
    The note joins the extractors' ``note`` options (e.g. weights the demo trained) and names what is random.
    """
    def random(name: str) -> bool:
        return bool(run.extractor_options.get(name, {}).get("tiny"))

    def notes(names: list[str]) -> list[str]:
        return [str(run.extractor_options.get(n, {}).get("note")) for n in names
                if run.extractor_options.get(n, {}).get("note")]

    s1 = random(run.stage1)
    out = {"stage1": {"random_weights": s1, "weights_note": "; ".join(
        notes([run.stage1]) + ([f"{run.stage1}: seeded random weights (plumbing check)"] if s1 else []))}}
    if run.preset:
        used = run.features_needed()
        rand = [n for n in used if random(n)] + (["Versatile Diffusion"] if run.vd.get("tiny") else [])
        out["final"] = {"random_weights": bool(rand), "weights_note": "; ".join(
            notes(used) + ([f"seeded random weights: {', '.join(rand)} (plumbing check)"] if rand else []))}
    return out


def reconstruct_run(store: Store, subject: int, run: RunSpec, *, client=None, images_per_task: int = 8,
                    outputs: Outputs | None = None, progress: bool = True,
                    config: Mapping[str, Any] | None = None) -> dict:
    """Reconstruct the test images of ``subject`` for ``run``; resumable per partition."""
    t0 = time.perf_counter()
    _check_stage1(run)
    for name in run.features_needed():
        if not store.is_complete(prediction_group(subject, name)):
            raise ReconstructError(
                f"run {run.name!r} needs predictions/{schema.subject_key(subject)}/{name}: add {name!r} to "
                f"[features] extractors and run the features and regress stages first")
        if name not in run.extractor_options and name != "pixels":
            raise ReconstructError(f"run {run.name!r} needs the {name!r} extractor's settings ([features] {name})")
    ids = np.asarray(store.group(prediction_group(subject, run.stage1))["image"][:])
    regions = regular_regions("image", len(ids), images_per_task, "images")
    base = {**schema.provenance(config=config), "run": json.dumps(run.__dict__, default=str, sort_keys=True)}
    prov = part_provenance(run)
    attrs = {**base, **prov["stage1"]}
    salt = {"stage1": run.stage1, "seed": run.seed, "opts": run.extractor_options.get(run.stage1),
            "predictions": {name: store.group(prediction_group(subject, name)).attrs.get("fmri2img_salt")
                            for name in run.features_needed()}}
    t1 = _template(ids, 512, images_per_task, False)
    todo1 = store.ensure_template(recon_group(subject, run.name, "stage1"), t1, regions, attrs=attrs,
                                  salt=json.dumps(salt, sort_keys=True, default=str))
    todo = list(todo1)
    if run.preset:
        from fmri2img.models.vd_sampler import preset

        size = preset(run.preset, **run.settings).size
        t2 = _template(ids, size, images_per_task, True)
        salt2 = json.dumps({**salt, "preset": run.preset, "settings": run.settings, "vd": run.vd,
                            "contexts": [run.extractor_options.get(run.vision), run.extractor_options.get(run.text)]},
                           sort_keys=True, default=str)
        todo2 = store.ensure_template(recon_group(subject, run.name, "final"), t2, regions,
                                      attrs={**base, **prov["final"]}, overwrite=bool(todo1), salt=salt2)
        todo = sorted({r.index: r for r in todo1 + todo2}.values(), key=lambda r: r.index)
    device = str(run.vd.get("device", "auto"))
    tasks = [Task(r.label, reconstruct_block, (store, subject, run, r, outputs)) for r in todo]
    results = run_tasks(tasks, stage=f"reconstruct-{schema.subject_key(subject)}-{run.name}", client=client,
                        progress=progress, resources=gpu_resources(client, device) if run.preset else None,
                        block_option=f"[reconstruct] images_per_task (now {images_per_task})")
    summary = {"subject": int(subject), "run": run.name, "images": int(len(ids)), "blocks_written": len(todo),
               "stage2": bool(run.preset), "redone_fp32": int(sum(r["redone_fp32"] for r in results)),
               "random_weights": any(p["random_weights"] for p in prov.values()),
               "random_weights_parts": {k: p["random_weights"] for k, p in prov.items()},
               "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("reconstruct %s: %s", run.name, summary)
    return summary


def run_specs(config: Config) -> list[RunSpec]:
    """The :class:`RunSpec` of every ``[reconstruct.runs]`` table of a configuration."""
    opts = {name: config.extractor_options(name) for name in config.features.extractors}
    return [run_spec(name, options, extractor_options=opts, weights=dataclasses.asdict(config.weights),
                     seed=config.seed, device=config.reconstruct.device)
            for name, options in config.reconstruct.runs.items()]


def check_config(config: Config) -> None:
    """``[reconstruct]``: every run is valid, and every feature a run reads is a [features.extractors] entry
    (pixels needs none) when the reconstruct stage runs."""
    try:
        specs = run_specs(config)
    except ReconstructError as exc:
        raise ConfigError(str(exc)) from None
    if "reconstruct" not in config.stages:
        return
    for spec in specs:
        for key in ("stage1", "vision", "text"):
            feature = getattr(spec, key)
            if feature in spec.features_needed() and feature != "pixels" and feature not in config.features.extractors:
                raise ConfigError(f"reconstruct.runs.{spec.name}.{key} = {feature!r} is not a [features.extractors] "
                                  f"entry (configured: {sorted(config.features.extractors)}); add "
                                  f"[features.extractors.{feature}] or name one of those")


register_check("reconstruct", check_config)
