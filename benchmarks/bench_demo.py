"""Benchmark: ``fmri2img demo`` from nothing (mini-NSD generation and VDVAE training included).

    python benchmarks/bench_demo.py [--workdir DIR] [--keep] [--shuffles 200]

1. Runs ``fmri2img demo --workdir TMP --no-progress`` as a user would after install, in an empty
   temporary directory (no mini-NSD, no cached VDVAE, no store), and timestamps its output lines:
   mini-NSD, VDVAE training, then each stage (the runner's "stage X: done in" lines) and the reports.
2. Records the total wall time, the peak RSS of the largest process (the demo or a worker), the
   load average before and after (other work on the machine slows the demo down), the date, cores.
3. Reads the stage-1 scores of both subjects from the store and scores the same reconstructions
   against shuffled ground truth (random derangements of the test images): the chance level.

Prints a JSON line; copy the numbers into benchmarks/README.md ("Demo").
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKS = [("mini-NSD", re.compile(r"^\[2/3\]")), ("VDVAE training", re.compile(r"^\[3/3\]"))]
STAGE = re.compile(r"stage (\w+): done in ([0-9.]+) s")


def run_demo(workdir: Path) -> dict:
    """Run the demo command; return its per-part wall times, total and output."""
    cmd = [sys.executable, "-m", "fmri2img.cli.main", "demo", "--workdir", str(workdir), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    parts: dict[str, float] = {}
    last = t0
    lines = []
    for line in proc.stdout:
        now = time.perf_counter()
        lines.append(line)
        for name, pattern in MARKS:
            if pattern.search(line):
                parts[name] = round(now - last, 1)
                last = now
        m = STAGE.search(line)
        if m:
            parts[m.group(1)] = float(m.group(2))
            last = now
    rc = proc.wait()
    total = time.perf_counter() - t0
    parts["reports and exit"] = round(time.perf_counter() - last, 1)
    if rc:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"fmri2img demo failed with exit code {rc}")
    return {"seconds": parts, "total_s": round(total, 1), "output": "".join(lines)}


def chance_scores(store_url: str, subject: int, run: str, n_shuffles: int, seed: int = 0) -> dict:
    """Stage-1 PixCorr/SSIM of ``run`` as the evaluate stage scored it, and against deranged ground truth
    (PixCorr: ``n_shuffles`` derangements; SSIM, about 10x slower: a tenth of them)."""
    import numpy as np
    import xarray as xr

    from fmri2img.metrics.scores import per_image_scores
    from fmri2img.pipeline.evaluate import read_summary, stimuli_for
    from fmri2img.storage.store import Store

    store = Store(store_url)
    summary = read_summary(store, subject, run, "stage1")
    ds = xr.open_zarr(store_url, group=f"recon/subj{subject:02d}/{run}/stage1", consolidated=False)
    rec, ids = ds.images.values, ds.image.values
    gt = stimuli_for(store, ids)
    rng = np.random.default_rng(seed)
    pix, ssim = [], []
    for i in range(n_shuffles):
        perm = rng.permutation(len(ids))
        while np.any(perm == np.arange(len(ids))):
            perm = rng.permutation(len(ids))
        metrics = ["PixCorr"] + (["SSIM (column)"] if i % 10 == 0 else [])
        s = per_image_scores(gt_images=gt[perm], rec_images=rec, metrics=metrics)
        pix.append(float(np.nanmean(s["PixCorr"])))
        if "SSIM (column)" in s:
            ssim.append(float(np.nanmean(s["SSIM (column)"])))
    return {"PixCorr": round(summary["PixCorr"]["mean"], 3), "SSIM (column)": round(summary["SSIM (column)"]["mean"], 3),
            "PixCorr shuffled mean": round(float(np.mean(pix)), 3), "PixCorr shuffled max": round(float(np.max(pix)), 3),
            "SSIM shuffled mean": round(float(np.mean(ssim)), 3), "shuffles": n_shuffles,
            "ssim_shuffles": len(ssim)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="run here (must not exist); default: a fresh temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--shuffles", type=int, default=100)
    args = ap.parse_args()
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-demo-")) / "demo"
    if base.exists():
        raise SystemExit(f"{base} exists: the benchmark starts from nothing; give a new --workdir")
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result = run_demo(base)
    load_after = os.getloadavg()
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    manifest = json.loads((base / "models" / "vdvae-demo.json").read_text())
    (base / "demo.log").write_text(result["output"])
    print(json.dumps({"total_s": result["total_s"], "stages_s": result["seconds"]}), file=sys.stderr, flush=True)
    scores = {f"subj{s:02d}/{run}": chance_scores(str(base / "store.zarr"), s, run, args.shuffles)
              for s in (1, 2) for run in ("brain-diffuser", "pixels")}
    out = {"date": started, "cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
           "load_after": [round(x, 2) for x in load_after], "total_s": result["total_s"],
           "stages_s": result["seconds"], "peak_rss_mb_largest_process": round(rss),
           "vdvae": {"steps": manifest["settings"]["steps"], "images": manifest["n_images"],
                     "train_s": manifest["seconds"], "elbo_first": manifest["loss"]["elbo_first"],
                     "elbo_last": manifest["loss"]["elbo_last"]},
           "stage1": scores, "workdir": str(base) if args.keep else None}
    print(json.dumps(out))
    if not args.keep:
        shutil.rmtree(base.parent if not args.workdir else base, ignore_errors=True)


if __name__ == "__main__":
    main()
