"""``fmri2img demo``: the embedded default run.

Generates mini-NSD (real photographs shipped with scikit-image, a simulated
visual cortex, files in the exact NSD layout) under ``WORKDIR/mini-nsd``, then
runs every stage that exists on it into ``WORKDIR/store.zarr`` and prints where
the outputs are.  No download, minutes on two cores.
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
from fmri2img.pipeline.report import write_report
from fmri2img.pipeline.runner import run, status
from fmri2img.storage.outputs import Outputs
from fmri2img.storage.store import Store

logger = logging.getLogger(__name__)

#: mini-NSD settings of the demo (small stimuli keep it fast on a laptop)
DEMO_SPEC = {"seed": 0, "subjects": (1, 2), "side": 128}
#: the demo's features: the weight-free pixel feature, and Brain-Diffuser's three feature sets
#: computed by tiny seeded random-weight models (they prove the plumbing, not the pictures)
DEMO_FEATURES = {
    "pixels": {"side": 64},
    "vdvae": {"tiny": True, "n_blocks": 8},
    "clip-text": {"tiny": True},
    "clip-vision": {"tiny": True},
}
#: the demo's reconstruction runs: Brain-Diffuser's two stages with tiny random-weight models (small
#: output, few DDIM steps: plumbing, not pictures), and the pixel decoder (real blobs, no weights)
DEMO_RUNS = {
    "brain-diffuser": {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True,
                       "settings": {"size": 32, "steps": 10, "dtype": "float32"}},
    "pixels": {"stage1": "pixels", "preset": ""},
}


def demo_config(workdir: Path) -> Config:
    """The configuration the demo runs (also a template for real runs)."""
    return validate(Config(
        stages=list(METHOD_STAGES),
        store=StoreConfig(url=str(workdir / "store.zarr")),
        source=SourceConfig(url=str(workdir / "mini-nsd")),
        ingest=IngestConfig(subjects=list(DEMO_SPEC["subjects"])),
        features=FeaturesConfig(extractors={k: dict(v) for k, v in DEMO_FEATURES.items()}, images_per_task=64),
        reconstruct=ReconstructConfig(runs={k: dict(v) for k, v in DEMO_RUNS.items()}, images_per_task=15,
                                      subjects=[1]),
        evaluate=EvaluateConfig(subjects=[1], images_per_task=30),
        roi=RoiConfig(subjects=[1]),
        outputs=OutputsConfig(url=str(workdir / "outputs")),
    ))


def ensure_mini_nsd(root: Path) -> dict:
    """Generate mini-NSD at ``root`` unless the same spec is already there."""
    from fmri2img.storage.mininsd import MiniNSDSpec, generate_mini_nsd

    spec = MiniNSDSpec(**DEMO_SPEC)
    manifest_path = root / "mini_nsd.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("spec", {}).get("seed") == spec.seed and manifest.get("spec", {}).get("side") == spec.side:
            return manifest
    return generate_mini_nsd(root, spec)


def run_demo(workdir: str | Path, *, client=None, fresh: bool = False, progress: bool = True) -> dict:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if fresh and (workdir / "store.zarr").exists():
        shutil.rmtree(workdir / "store.zarr")
    t0 = time.perf_counter()
    print(f"[1/2] mini-NSD in {workdir / 'mini-nsd'}", file=sys.stderr)
    ensure_mini_nsd(workdir / "mini-nsd")
    config = demo_config(workdir)
    (workdir / "config.toml").write_text(_config_text(config))
    print(f"[2/2] stages {', '.join(config.stages)} → {config.store.url}", file=sys.stderr)
    results = run(config, client=client, progress=progress)
    store = Store(config.store.url)
    report = write_report(store, 1, Outputs(config.outputs.url, dict(config.outputs.storage_options)))
    rows = status(store)
    done = sum(1 for _, d, t in rows if t and d == t)
    print(f"\nfmri2img demo finished in {time.perf_counter() - t0:.0f} s ({done}/{len(rows)} store groups complete)\n")
    print(report["table"])
    print(f"  report:  {report['files']['html']}  (grid.png, metrics.png, metrics.md beside it)")
    print(f"  store:   {config.store.url}   (fmri2img status {config.store.url})")
    print(f"  config:  {workdir / 'config.toml'}   (rerun: fmri2img run {workdir / 'config.toml'})")
    print(f"  read it: xarray.open_zarr({config.store.url!r}, group='predictions/subj01/pixels')")
    return results


def _config_text(config: Config) -> str:
    from fmri2img.config import dumps

    return "# written by fmri2img demo\n" + dumps(config)
