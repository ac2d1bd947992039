"""Benchmark of NSD-Imagery decoding on mini-NSD, where the truth is known (issue 15, part 2).

Subject 1 of a mini-NSD with an imagery session (NSD-Imagery's size: 12 runs, 8 repeats, 720
betas) is ingested with all its sessions and fitted (tiny feature extractors, GCV ridge, the
non-transductive "loo" calibration); its imagery session is ingested and the vision and
imagery trials are decoded by `fmri2img decode --imagery`'s code with the pixel decoder
(stage 1 "pixels") and the Brain-Diffuser run (tiny VDVAE stage 1 + tiny Versatile Diffusion,
seeded random weights). Each trial is scored against its target with PixCorr and with two-way
identification among the task's 18 targets on AlexNet(2) and CLIP features of the *tiny seeded
evaluation nets the tests use* (no weights): relative decodability, not the published scale.

Against chance: identification's chance is 0.5; its p-value is the fraction of 2,000 random
relabellings of the 18 targets (all trials of a target share its new label) whose
mean score reaches the observed one. PixCorr's chance is the mean PixCorr of each
reconstruction with the other targets of its task (mismatched baseline).

  python benchmarks/bench_imagery.py [--workdir DIR] [--seed 0] [--side 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fmri2img.metrics.scores import pearson_matrix, pixcorr  # noqa: E402
from fmri2img.metrics.targets import identification_among_targets  # noqa: E402
from fmri2img.pipeline.clinical import decode as dec  # noqa: E402
from fmri2img.pipeline.clinical.imagery import text_values, decode_imagery  # noqa: E402
from fmri2img.pipeline.evaluate import net_features  # noqa: E402
from fmri2img.pipeline.features import extract_features  # noqa: E402
from fmri2img.pipeline.ingest.nsd import ingest  # noqa: E402
from fmri2img.pipeline.ingest.imagery import TARGETS, imagery_group, ingest_imagery  # noqa: E402
from fmri2img.pipeline.reconstruct import run_spec  # noqa: E402
from fmri2img.pipeline.regress import regress  # noqa: E402
from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd  # noqa: E402
from fmri2img.storage.source import Source  # noqa: E402
from fmri2img.storage.store import Store  # noqa: E402
from minisettings import EXTRACTORS, NETS, RIDGE, VD  # noqa: E402

TASKS = ["vision", "imagery"]


def build(workdir: Path, seed: int, side: int) -> Store:
    root, store = workdir / "mini", Store(str(workdir / "store.zarr"))
    if not (workdir / "built").exists():
        generate_mini_nsd(root, MiniNSDSpec(seed=seed, subjects=(1,), side=side, imagery=True),
                          progress=lambda _: None)
        ingest(store, Source(str(root)), 1, list(range(1, 11)), progress=False)
        ingest_imagery(store, Source(str(root)), 1, progress=False)
        for name, options in EXTRACTORS.items():
            extract_features(store, name, options, images_per_task=64, progress=False)
            regress(store, 1, name, RIDGE, progress=False)
        (workdir / "built").write_text("")
    return store


def against_chance(store: Store, name: str, run: str, part: str, rng: np.random.Generator) -> dict:
    """Per task: PixCorr vs its mismatched baseline, identification vs 0.5 with a relabelling p-value."""
    labels = store.open_dataset(imagery_group(1)).drop_vars("betas")
    rec_group = store.group(dec.group(name, "recon", run, part))
    trials = np.asarray(rec_group["trial"][:])
    rows = labels.trial.values.searchsorted(trials)
    task, target = text_values(labels.task.values)[rows], labels.target.values[rows].astype(np.int64)
    images = np.asarray(store.group(TARGETS)["images"][:])
    rec = np.asarray(rec_group["images"][:])
    t_feats, r_feats = net_features(images, NETS, {}, "cpu"), net_features(rec, NETS, {}, "cpu")
    out = {}
    for t in TASKS:
        sel = np.flatnonzero(task == t)
        cands = np.unique(target[sel])
        pc = np.stack([pixcorr(images[np.full(len(sel), c)], rec[sel]) for c in cands], axis=1)  # trials × cands
        own = pc[np.arange(len(sel)), np.searchsorted(cands, target[sel])]
        row = {"n_trials": int(len(sel)), "PixCorr": float(own.mean()),
               "PixCorr mismatched": float((pc.sum(axis=1) - own).mean() / (len(cands) - 1))}
        for net, metric in (("alexnet2", "AlexNet(2)"), ("clip", "CLIP")):
            score = float(np.nanmean(identification_among_targets(t_feats[net], r_feats[net][sel], target[sel])))
            r = pearson_matrix(t_feats[net][cands].reshape(len(cands), -1), r_feats[net][sel].reshape(len(sel), -1))
            null = []
            for _ in range(2000):  # relabel the targets: every trial of one target gets the same wrong label
                perm = rng.permutation(len(cands))[np.searchsorted(cands, target[sel])]
                mine = r[perm, np.arange(len(sel))]
                null.append(float(((r < mine[None]).sum(axis=0) / (len(cands) - 1)).mean()))
            row[metric] = score
            row[f"{metric} p"] = float((np.sum(np.asarray(null) >= score) + 1) / (len(null) + 1))
        out[t] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-imagery")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load0, t0 = os.getloadavg(), time.perf_counter()
    store = build(workdir, args.seed, args.side)
    build_s = time.perf_counter() - t0
    runs = [run_spec("pixels", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7),
            run_spec("bd", {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True, "settings": dict(VD)},
                     extractor_options=EXTRACTORS, weights={}, seed=7)]
    t1 = time.perf_counter()
    summary = decode_imagery(store, 1, runs, tasks=TASKS, nets=NETS, progress=False, images_per_task=48)
    decode_s = time.perf_counter() - t1
    rng = np.random.default_rng(args.seed)
    results = {f"{run}/{part}": against_chance(store, summary["name"], run, part, rng)
               for run, part in (("pixels", "stage1"), ("bd", "stage1"), ("bd", "final"))}
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} CPUs", "python": platform.python_version(),
                      "load_start": load0, "load_end": os.getloadavg(), "build_s": round(build_s, 1),
                      "decode_s": round(decode_s, 1), "betas_per_task": summary["betas_per_task"],
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "stage_metrics": summary["metrics"],
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
