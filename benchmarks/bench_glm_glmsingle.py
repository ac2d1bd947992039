"""Benchmark: fmri2img.glm against GLMsingle itself, on the same simulated session.

    python benchmarks/bench_glm_glmsingle.py                    # small: 6 runs x 226 volumes, 10x10x6 voxels
    python benchmarks/bench_glm_glmsingle.py --nsd-size         # NSD: 12 runs x 226, 750 trials, 16x18x10
    python benchmarks/bench_glm_glmsingle.py --shape 16 18 10   # any volume shape
    python benchmarks/bench_glm_glmsingle.py --extra-regressors # + 3 nuisance regressors per run

GLMsingle runs in its own virtual environment (default /tmp/glmsingle-venv, no system
site-packages), created on first use with numpy, scipy, scikit-learn, matplotlib,
nibabel, h5py, tqdm and fracridge from the package index and GLMsingle itself installed
from a fetched copy of its repository (``git archive`` of
/work/.mirror/cvnlab+GLMsingle/repo into /tmp/glmsingle-src; nothing of it is kept in
this repository). Each side runs in a subprocess with the same thread count; the
session comes from :func:`fmri2img.glm.simulate_session` (NSD's timing). GLMsingle runs
with its defaults and its own HRF library (checked equal to ours), file outputs off.

Reported: the fraction of voxels with the same HRF, ridge fraction, noise-pool and
pcnum-judging membership; pcnum; the correlation of the betas of each model; R² and
threshold differences; wall time of the fit and peak RSS of each process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIRROR = Path("/work/.mirror/cvnlab+GLMsingle/repo")
DEPS = ["numpy", "scipy", "scikit-learn", "matplotlib", "nibabel", "h5py", "tqdm", "fracridge"]
MODELS = ("typeb", "typec", "typed")

GLMSINGLE_WORKER = r'''
import os, resource, sys, time
import numpy as np
data_path, out_path, workdir = sys.argv[1:4]
f = np.load(data_path)
n, shape = int(f["n_runs"]), tuple(int(s) for s in f["shape"])
runs = [f[f"run{i}"].T.reshape(shape + (f[f"run{i}"].shape[0],)) for i in range(n)]
design = [f[f"design{i}"].astype(float) for i in range(n)]
params = {"wantfileoutputs": [0, 0, 0, 0], "wantmemoryoutputs": [1, 1, 1, 1]}
if int(f["n_extra"]):
    params["extra_regressors"] = [f[f"extra{i}"] for i in range(n)]
from glmsingle.glmsingle import GLM_single
np.random.seed(0)  # findtailthreshold's mixture fit draws from the global state
os.chdir(workdir)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
glm = GLM_single(params)
t0 = time.perf_counter()
res = glm.fit(design, runs, float(f["stimdur"]), float(f["tr"]), outputdir=os.path.join(workdir, "out"))
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
V = int(np.prod(shape))
flat = lambda a: np.asarray(a).reshape(V, -1)
out = {"wall": wall, "rss_before_kb": before, "rss_peak_kb": peak,
       "library": glm.params["hrflibrary"], "brain_r2": float(glm.params["brainR2"]),
       "onoff_r2": flat(res["typea"]["onoffR2"])[:, 0], "meanvol": flat(res["typea"]["meanvol"])[:, 0],
       "onoff_beta": flat(res["typea"]["betasmd"])[:, 0], "hrf_index": flat(res["typeb"]["HRFindex"])[:, 0],
       "hrf_r2": flat(res["typeb"]["FitHRFR2"]).T,
       "pcnum": int(res["typec"]["pcnum"]), "xvaltrend": np.asarray(res["typec"]["xvaltrend"]),
       "noise_pool": flat(res["typec"]["noisepool"])[:, 0], "pc_voxels": flat(res["typec"]["pcvoxels"])[:, 0],
       "frac": flat(res["typed"]["FRACvalue"])[:, 0]}
for key in ("typeb", "typec", "typed"):
    out[key + "_betas"] = flat(res[key]["betasmd"]).T
    out[key + "_r2"] = flat(res[key]["R2"])[:, 0]
np.savez(out_path, **out)
'''


def ensure_glmsingle(venv: Path, src: Path) -> Path:
    """Python of a venv where ``import glmsingle`` works; create and install it if needed."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import glmsingle, fracridge"],
                                          capture_output=True).returncode == 0:
        return python
    if not (src / "setup.py").exists():
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(MIRROR), "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *DEPS], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(src)], check=True)
    return python


def simulate(args: argparse.Namespace, path: Path) -> dict:
    """Simulate the session and save it where both workers read it."""
    from fmri2img.glm import simulate_session

    n_runs = 12 if args.nsd_size else args.runs
    shape = tuple(args.shape) if args.shape else ((16, 18, 10) if args.nsd_size else (10, 10, 6))
    sim = simulate_session(n_runs=n_runs, n_volumes=args.volumes, shape=shape, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    extra = [rng.standard_normal((args.volumes, 3)) for _ in range(n_runs)] if args.extra_regressors else []
    arrays = {f"run{i}": r for i, r in enumerate(sim.runs)}
    arrays.update({f"design{i}": d for i, d in enumerate(sim.design)})
    arrays.update({f"extra{i}": e for i, e in enumerate(extra)})
    np.savez(path, n_runs=n_runs, shape=shape, tr=sim.tr, stimdur=sim.stimdur, n_extra=len(extra), **arrays)
    return {"runs": n_runs, "volumes": args.volumes, "shape": shape, "voxels": int(np.prod(shape)),
            "brain_voxels": int(sim.brain.sum()), "trials": int(sim.conditions.size),
            "conditions": int(sim.conditions.max() + 1)}


def run_ours(data_path: str, out_path: str) -> None:
    """Worker: fmri2img.glm's in-memory driver on the saved session."""
    from fmri2img.glm import fit_session

    f = np.load(data_path)
    n = int(f["n_runs"])
    runs, design = [f[f"run{i}"] for i in range(n)], [f[f"design{i}"] for i in range(n)]
    extra = [f[f"extra{i}"] for i in range(n)] if int(f["n_extra"]) else None
    importlib.import_module("sklearn.mixture")  # the fit imports it lazily; GLMsingle's import already has it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = fit_session(runs, design, float(f["tr"]), float(f["stimdur"]), extra_regressors=extra,
                      denoise_extra_regressors="python")
    wall = time.perf_counter() - t0
    out = {"wall": wall, "rss_before_kb": before, "rss_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "library": res.plan.library, "brain_r2": res.thresholds.brain_r2, "onoff_r2": res.onoff_r2,
           "meanvol": res.meanvol, "onoff_beta": res.onoff_beta, "hrf_index": res.hrf_index, "hrf_r2": res.hrf_r2,
           "pcnum": res.pcnum,
           "xvaltrend": res.xvaltrend, "noise_pool": res.noise_pool, "pc_voxels": res.pc_voxels, "frac": res.frac}
    for key, name in zip(MODELS, res.models):
        out[key + "_betas"] = res.model(name)
        out[key + "_r2"] = res.r2[res.models.index(name)]
    np.savez(out_path, **out)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _hrf_mismatches(ours: dict, gs: dict) -> list[dict]:
    """Voxels whose HRF differs: each side's R² margin between its choice and the other's (percent)."""
    out = []
    for v in np.flatnonzero(ours["hrf_index"] != gs["hrf_index"]):
        a, b = int(ours["hrf_index"][v]), int(gs["hrf_index"][v])
        out.append({"voxel": int(v), "ours": a, "glmsingle": b,
                    "r2_margin_ours": float(ours["hrf_r2"][a, v] - ours["hrf_r2"][b, v]),
                    "r2_margin_glmsingle": float(gs["hrf_r2"][b, v] - gs["hrf_r2"][a, v]),
                    "r2": float(ours["hrf_r2"][a, v])})
    return out


def compare(ours: dict, gs: dict) -> dict:
    """Agreement of every output (fractions of voxels, correlations, largest differences)."""
    per_voxel = lambda a, b: np.array([_corr(a[:, v], b[:, v]) for v in range(a.shape[1])])  # noqa: E731
    same = ours["hrf_index"] == gs["hrf_index"]
    out = {
        "library_max_abs_diff": float(np.abs(ours["library"] - gs["library"]).max()),
        "brain_r2": (float(ours["brain_r2"]), float(gs["brain_r2"])),
        "onoff_r2_max_abs_diff": float(np.abs(ours["onoff_r2"] - gs["onoff_r2"]).max()),
        "meanvol_max_rel_diff": float(np.abs(ours["meanvol"] / gs["meanvol"] - 1).max()),
        "onoff_beta_corr": _corr(ours["onoff_beta"], gs["onoff_beta"]),
        "hrf_equal": float(np.mean(same)),
        "hrf_mismatches": _hrf_mismatches(ours, gs),
        "noise_pool_equal": float(np.mean(ours["noise_pool"] == gs["noise_pool"])),
        "pc_voxels_equal": float(np.mean(ours["pc_voxels"] == gs["pc_voxels"])),
        "pcnum": (int(ours["pcnum"]), int(gs["pcnum"])),
        "xvaltrend_max_rel_diff": float(np.abs(ours["xvaltrend"] / gs["xvaltrend"] - 1).max()),
        "frac_equal": float(np.mean(np.isclose(ours["frac"], gs["frac"], atol=1e-6))),
    }
    for key in MODELS:
        a, b = ours[key + "_betas"], gs[key + "_betas"]
        out[key + "_betas_corr"] = _corr(a, b)
        out[key + "_betas_min_voxel_corr_same_hrf"] = float(np.nanmin(per_voxel(a[:, same], b[:, same])))
        out[key + "_r2_max_abs_diff_same_hrf"] = float(np.abs(ours[key + "_r2"] - gs[key + "_r2"])[same].max())
    for name, side in (("ours", ours), ("glmsingle", gs)):
        out[name + "_wall_s"] = float(side["wall"])
        out[name + "_peak_rss_mb"] = float(side["rss_peak_kb"]) / 1024
        out[name + "_fit_rss_increase_mb"] = float(side["rss_peak_kb"] - side["rss_before_kb"]) / 1024
    return out


def run_glmsingle(python: Path, folder: Path, env: dict) -> None:
    """GLMsingle's worker on ``folder/session.npz`` → ``folder/gs.npz`` (its log in ``glmsingle.log``)."""
    (folder / "glmsingle_worker.py").write_text(GLMSINGLE_WORKER)
    with open(folder / "glmsingle.log", "w") as log:
        done = subprocess.run([python, folder / "glmsingle_worker.py", folder / "session.npz", folder / "gs.npz",
                               folder], env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"GLMsingle failed:\n{(folder / 'glmsingle.log').read_text()[-3000:]}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nsd-size", action="store_true", help="12 runs, 750 trials, 16x18x10 voxels")
    parser.add_argument("--runs", type=int, default=6, help="runs when not --nsd-size (default 6)")
    parser.add_argument("--volumes", type=int, default=226, help="volumes per run (NSD: 226)")
    parser.add_argument("--shape", type=int, nargs=3, help="voxel grid (default 10 10 6; 16 18 10 with --nsd-size)")
    parser.add_argument("--extra-regressors", action="store_true", help="3 random nuisance regressors per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="BLAS/numba threads of each side (default 1)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/glmsingle-venv"))
    parser.add_argument("--src", type=Path, default=Path("/tmp/glmsingle-src"))
    parser.add_argument("--keep", type=Path, help="keep the session and both sides' outputs in this folder")
    parser.add_argument("--reuse-glmsingle", action="store_true",
                        help="with --keep: reuse the kept session and GLMsingle's output, rerun our side only")
    parser.add_argument("--worker", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_ours(*args.worker)
        return {}
    python = ensure_glmsingle(args.venv, args.src)
    env = dict(os.environ, **{k: str(args.threads) for k in
                              ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    with tempfile.TemporaryDirectory(prefix="bench_glm_") as tmp:
        tmp = args.keep or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        reuse = args.reuse_glmsingle and args.keep and (tmp / "gs.npz").exists()
        size = json.loads((tmp / "size.json").read_text()) if reuse else simulate(args, tmp / "session.npz")
        (tmp / "size.json").write_text(json.dumps(size))
        subprocess.run([sys.executable, __file__, "--worker", str(tmp / "session.npz"), str(tmp / "ours.npz")],
                       check=True, env=env)
        if not reuse:
            run_glmsingle(python, tmp, env)
        result = {"size": size, "threads": args.threads, "extra_regressors": args.extra_regressors,
                  **compare(dict(np.load(tmp / "ours.npz")), dict(np.load(tmp / "gs.npz")))}
    print(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
