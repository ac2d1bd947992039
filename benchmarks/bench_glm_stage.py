"""Benchmark: the glm stage (Dask tasks over a store, reading NSD-layout files) against GLMsingle, and at NSD size.

    python benchmarks/bench_glm_stage.py --shape 16 18 10 --glmsingle   # a simulated NSD session, both sides
    python benchmarks/bench_glm_stage.py --shape 32 36 20 --glmsingle
    python benchmarks/bench_glm_stage.py --mini-nsd DIR --session 1      # e.g. an NSD-sized mini-NSD

Simulated sessions come from benchmarks/bench_glm_glmsingle.py's simulator (NSD's timing: 12 runs of
226 volumes, 750 trials, TR 4/3 s, 3-s images). fmri2img's side is the whole stage as a user runs it:
the session written in NSD's time-series layout (float32 ``.nii.gz`` runs, design TSVs, a brain mask
of every voxel, as GLMsingle fits every voxel it is given), read by the stage's run tasks, fitted
by its block tasks on a LocalCluster of ``--workers`` single-threaded worker processes; its wall
time includes reading and decompressing the files and writing the store. GLMsingle gets the same
values as arrays in memory, with its defaults, one BLAS thread (its worker and environment from
bench_glm_glmsingle.py), so its time includes no reading. Peak memory: each process's resident
set, sampled every 0.2 s (fmri2img: the largest worker and the client; GLMsingle: its process's
maximum). Equality: the same measures as bench_glm_glmsingle.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_nsd_layout(session: Path, root: Path) -> tuple:
    """The simulated session as NSD's time-series files of subject 1, session 1; its volume shape."""
    import nibabel as nib

    f = np.load(session)
    n, shape, tr = int(f["n_runs"]), tuple(int(s) for s in f["shape"]), float(f["tr"])
    base = root / "nsddata_timeseries/ppdata/subj01/func1pt8mm"
    (base / "timeseries").mkdir(parents=True, exist_ok=True)
    (base / "design").mkdir(parents=True, exist_ok=True)
    for r in range(n):
        run = f[f"run{r}"]
        img = nib.Nifti1Image(run.T.reshape(shape + (run.shape[0],)).astype(np.float32), np.diag([1.8] * 3 + [1]))
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = tr
        nib.save(img, base / f"timeseries/timeseries_session01_run{r + 1:02d}.nii.gz")
        design = f[f"design{r}"]
        rows = np.where(design.any(axis=1), design.argmax(axis=1) + 1, 0)
        (base / f"design/design_session01_run{r + 1:02d}.tsv").write_text("".join(f"{v}\n" for v in rows))
    mask_dir = root / "nsddata/ppdata/subj01/func1pt8mm"
    mask_dir.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.diag([1.8] * 3 + [1])), mask_dir / "brainmask.nii.gz")
    return shape


class PeakMemory:
    """Samples the resident set of some processes every ``interval`` seconds; ``peaks`` in MB."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peaks = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                try:
                    self.peaks[name] = max(self.peaks[name], proc.memory_info().rss / 2**20)
                except Exception:  # noqa: BLE001 - a process that ended keeps its last peak
                    continue
            self._stop.wait(0.2)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_stage(root: Path, store_url: str, session: int, workers: int, block_size: int, keep: bool) -> dict:
    """The glm stage on ``workers`` worker processes; its outputs and timings."""
    from distributed import Client, LocalCluster

    from fmri2img import glm
    from fmri2img.pipeline.glm.inputs import NSDInputs
    from fmri2img.pipeline.glm.stage import glm_session
    from fmri2img.storage.store import Store

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster) as client:
        pids = {f"worker{k}": pid for k, pid in enumerate(client.run(os.getpid).values())}
        with PeakMemory({"client": os.getpid(), **pids}) as mem:
            t0 = time.perf_counter()
            inputs = NSDInputs.open(str(root), 1, session)
            summary = glm_session(Store(store_url), inputs, 1, session, options=glm.get_preset("glmsingle"),
                                  block_size=block_size, client=client, progress=False, keep_timeseries=keep)
            wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "peak_rss_mb": {k: round(v) for k, v in mem.peaks.items()},
            "voxels": summary["voxels"], "trials": summary["trials"], "pcnum": summary["pcnum"]}


def ours_like_glmsingle(store_url: str, wall: float, peak_mb: float) -> dict:
    """The stage's outputs under bench_glm_glmsingle's names (for its ``compare``)."""
    from fmri2img import glm
    from fmri2img.storage.store import Store

    store = Store(store_url)
    ds = store.open_dataset("subjects/subj01/glm/session01")
    fit = store.open_dataset("subjects/subj01/glm/_work/session01/fit")
    attrs = store.group("subjects/subj01/glm/session01").attrs
    th = glm.Thresholds(**json.loads(attrs["thresholds"]))
    out = {"wall": wall, "rss_before_kb": 0, "rss_peak_kb": peak_mb * 1024,
           "library": glm.hrf_library(float(attrs["stimdur"]), float(attrs["tr"])), "brain_r2": th.brain_r2,
           "onoff_r2": ds.onoff_r2.values, "meanvol": ds.meanvol.values, "onoff_beta": ds.onoff_beta.values,
           "hrf_index": ds.hrf_index.values, "hrf_r2": fit.hrf_r2.values, "pcnum": int(ds.pcnum),
           "xvaltrend": np.asarray(json.loads(attrs["xvaltrend"])), "noise_pool": ds.noise_pool.values,
           "pc_voxels": glm.pc_voxels(ds.onoff_r2.values, th), "frac": ds.frac.values}
    for key, model in zip(("typeb", "typec", "typed"), ds.model.values):
        out[key + "_betas"] = ds.betas.sel(model=model).values
        out[key + "_r2"] = ds.r2.sel(model=model).values
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 18, 10), help="simulated volume (X Y Z)")
    parser.add_argument("--glmsingle", action="store_true", help="also run GLMsingle on the same session")
    parser.add_argument("--mini-nsd", type=Path, help="a mini-NSD directory with time series (no simulation)")
    parser.add_argument("--session", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the session, the store and GLMsingle's output here")
    args = parser.parse_args(argv)
    result: dict = {"load": open("/proc/loadavg").read().split()[:3], "workers": args.workers,
                    "block_size": args.block_size}
    with tempfile.TemporaryDirectory(prefix="bench_glm_stage_") as tmp:
        tmp = args.keep or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        store = str(tmp / "store.zarr")
        if args.mini_nsd:
            result["stage"] = run_stage(args.mini_nsd, store, args.session, args.workers, args.block_size, False)
        else:
            import bench_glm_glmsingle as gs

            sim = argparse.Namespace(nsd_size=True, runs=12, volumes=226, shape=list(args.shape), seed=args.seed,
                                     extra_regressors=False)
            result["size"] = gs.simulate(sim, tmp / "session.npz")
            write_nsd_layout(tmp / "session.npz", tmp / "nsd")
            result["stage"] = run_stage(tmp / "nsd", store, 1, args.workers, args.block_size, True)
            if args.glmsingle:
                env = dict(os.environ, **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
                gs.run_glmsingle(gs.ensure_glmsingle(Path("/tmp/glmsingle-venv"), Path("/tmp/glmsingle-src")), tmp,
                                 env)
                ours = ours_like_glmsingle(store, result["stage"]["wall_s"],
                                           max(result["stage"]["peak_rss_mb"].values()))
                result["compare"] = gs.compare(ours, dict(np.load(tmp / "gs.npz")))
                result["speedup"] = round(result["compare"]["glmsingle_wall_s"] / result["stage"]["wall_s"], 1)
        result["load_after"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
