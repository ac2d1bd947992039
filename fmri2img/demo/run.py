"""``fmri2img demo``: the embedded default run.

Generates mini-NSD (real photographs shipped with scikit-image, a simulated visual cortex,
files in the exact NSD layout) under ``WORKDIR/mini-nsd``, trains the demo's VDVAE on the
subjects' training photographs (cached under ``WORKDIR/models``, see :mod:`fmri2img.demo.vdvae`),
then runs every stage on it into ``WORKDIR/store.zarr`` for both subjects and prints where the
outputs are.  No download, a few minutes on two cores (benchmarks/README.md, "Demo").

What is trained and what is random: stage 1 of the Brain-Diffuser run decodes with the trained
VDVAE (a result, though of a tiny model on a tiny dataset); its stage 2 uses tiny seeded
random-weight CLIP and Versatile Diffusion, and the evaluation networks are tiny random stand-ins,
so the final images and the network-based metrics are plumbing checks, and the report keeps them
apart from the results.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

from fmri2img.config import (METHOD_STAGES, Config, EvaluateConfig, FeaturesConfig, IngestConfig, OutputsConfig,
                             ReconstructConfig, RoiConfig, SourceConfig, StoreConfig, validate)
from fmri2img.report.build import NothingToReport, across_subjects, write_report
from fmri2img.pipeline.runner import run, status
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

#: mini-NSD settings of the demo (small stimuli keep it fast on a laptop)
DEMO_SPEC = {"seed": 0, "subjects": (1, 2), "side": 128}
#: the demo's features: the weight-free pixel feature, the VDVAE latents of the demo's trained VDVAE
#: (its weights file is filled in by :func:`demo_config`), and CLIP-text/vision from tiny seeded
#: random-weight models (they prove the plumbing, not the pictures)
DEMO_FEATURES = {
    "pixels": {"side": 64},
    "vdvae": {"hparams": "demo", "n_blocks": 7},
    "clip-text": {"tiny": True},
    "clip-vision": {"tiny": True},
}
#: the demo's reconstruction runs: Brain-Diffuser's two stages (stage 1 with the trained VDVAE; stage 2
#: with tiny random-weight Versatile Diffusion, small output, few DDIM steps: plumbing, not pictures),
#: and the pixel decoder (no weights)
DEMO_RUNS = {
    "brain-diffuser": {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True,
                       "settings": {"size": 32, "steps": 10, "dtype": "float32"}},
    "pixels": {"stage1": "pixels", "preset": ""},
}


def demo_config(workdir: Path, vdvae_weights: str | Path | None = None, vdvae_note: str = "") -> Config:
    """The configuration the demo runs (also a template for real runs).

    Parameters
    ----------
    workdir : Path
    vdvae_weights : path, optional
        The demo VDVAE's state-dict file (:func:`fmri2img.demo.vdvae.ensure_demo_vdvae`); without
        it the VDVAE features use the tiny random-weight VDVAE (a plumbing check).
    vdvae_note : str
        Provenance of that file, recorded with the features and reconstructions.
    """
    features = {k: dict(v) for k, v in DEMO_FEATURES.items()}
    if vdvae_weights is not None:
        features["vdvae"].update(weights=str(vdvae_weights), note=vdvae_note)
    else:
        features["vdvae"] = {"tiny": True, "n_blocks": 8}
    subjects = list(DEMO_SPEC["subjects"])
    return validate(Config(
        stages=list(METHOD_STAGES),
        store=StoreConfig(url=str(workdir / "store.zarr")),
        source=SourceConfig(url=str(workdir / "mini-nsd")),
        ingest=IngestConfig(subjects=subjects),
        features=FeaturesConfig(extractors=features, images_per_task=64),
        reconstruct=ReconstructConfig(runs={k: dict(v) for k, v in DEMO_RUNS.items()}, images_per_task=15,
                                      subjects=subjects),
        evaluate=EvaluateConfig(subjects=subjects, images_per_task=30, tiny=True),
        roi=RoiConfig(subjects=[1]),
        outputs=OutputsConfig(url=str(workdir / "outputs")),
    ))


def ensure_mini_nsd(root: Path, progress: bool = True) -> dict:
    """Generate mini-NSD at ``root`` unless the same spec is already there (a progress bar per file written)."""
    from fmri2img.pipeline.tasks import progress_bar
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd

    spec = MiniNSDSpec(**DEMO_SPEC)
    manifest_path = root / "mini_nsd.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("spec", {}).get("seed") == spec.seed and manifest.get("spec", {}).get("side") == spec.side:
            return manifest
    with progress_bar(None, "mini-NSD", progress, unit="file") as bar:
        return generate_mini_nsd(root, spec, progress=lambda line: bar.update(1))


def run_demo(workdir: str | Path, *, client=None, fresh: bool = False, progress: bool = True) -> dict:
    """Generate mini-NSD, train (or reuse) the demo VDVAE, run every stage and write the reports."""
    from fmri2img.demo.vdvae import ensure_demo_vdvae

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if fresh and (workdir / "store.zarr").exists():
        shutil.rmtree(workdir / "store.zarr")
    t0 = time.perf_counter()
    print(f"[1/3] mini-NSD in {workdir / 'mini-nsd'}", file=sys.stderr)
    ensure_mini_nsd(workdir / "mini-nsd", progress)
    t1 = time.perf_counter()
    print(f"[2/3] demo VDVAE in {workdir / 'models'} (trained on the subjects' training photographs, "
          f"never a test image)", file=sys.stderr)
    weights, manifest = ensure_demo_vdvae(workdir / "mini-nsd", workdir / "models", DEMO_SPEC["subjects"],
                                          progress=progress)
    t2 = time.perf_counter()
    config = demo_config(workdir, weights, manifest["note"])
    (workdir / "config.toml").write_text(_config_text(config))
    print(f"[3/3] stages {', '.join(config.stages)} → {config.store.url}", file=sys.stderr)
    results = run(config, client=client, progress=progress)
    results["demo"] = {"mini_nsd_seconds": round(t1 - t0, 1), "vdvae_seconds": round(t2 - t1, 1),
                       "vdvae_reused": bool(manifest["reused"]), "vdvae_weights": str(weights)}
    store = Store(config.store.url)
    outputs = Outputs(config.outputs.url, dict(config.outputs.storage_options))
    subjects = list(config.reconstruct.subjects)
    report = None
    for subject in subjects:
        try:
            out = write_report(store, subject, outputs, config=config, index_link=len(subjects) > 1)
        except NothingToReport as exc:
            print(f"  subject {subject}: {exc}", file=sys.stderr)
            continue
        report = report or out
    index = across_subjects(store, subjects, outputs, config=config) if len(subjects) > 1 else None
    rows = status(store)
    done = sum(1 for _, d, t in rows if t and d == t)
    print(f"\nfmri2img demo finished in {time.perf_counter() - t0:.0f} s ({done}/{len(rows)} store groups complete)\n")
    print(f"{manifest['note']} ({'reused' if manifest['reused'] else 'trained'} "
          f"{weights.name}; ELBO {manifest['loss']['elbo_first']} -> {manifest['loss']['elbo_last']} nats/dim)\n")
    if report is not None:
        print(report["table"])
        print(f"  report:  {report['files']['html']}  (grid.png, metrics.png, metrics.md beside it)")
    if index is not None:
        print(f"  both subjects: {index['html']}")
    print(f"  store:   {config.store.url}   (fmri2img status {config.store.url})")
    print(f"  config:  {workdir / 'config.toml'}   (rerun: fmri2img run {workdir / 'config.toml'})")
    print(f"  read it: xarray.open_zarr({config.store.url!r}, group='predictions/subj01/pixels')")
    return results


def _config_text(config: Config) -> str:
    from fmri2img.config import dumps

    return "# written by fmri2img demo\n" + dumps(config)
