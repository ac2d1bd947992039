"""Benchmark of the ridge engine (fmri2img.ridge) against Brain-Diffuser's per-token
sklearn loop and himalaya's KernelRidge. Run by hand; results go to benchmarks/README.md.

Sub-commands (each measured method runs in a fresh subprocess; wall time covers fit +
predict (+ writing predictions to Zarr where stated), peak RSS is the subprocess's
VmHWM, which includes the imports and loading X (and Y when it is held in memory)):

  small     (a) n=4,000 × p=15,724 → 16 tokens × 768, 982 test: ours vs the per-token
                sklearn loop vs himalaya KernelRidge.
  full      (b) the full CLIP-vision shape, 8,859 × 15,724 → 257 × 768 streamed from a
                local Zarr store (generated into a temp dir, deleted after); with
                ``--all-targets`` also VDVAE (91,168) and CLIP-text (77 × 768) in one pass.
                ``--sklearn-tokens K`` times K tokens of the per-token loop at this shape to
                extrapolate it to 257 tokens.
  gcv       (c) per-target alphas by GCV from one eigendecomposition at the full shape.

``--device cpu|cuda|cuda:N`` runs ours on the torch backend (``BlockRidge(device=...)``)
instead of NumPy, and adds the device name and (CUDA) the peak device memory
(``torch.cuda.max_memory_allocated``) to its result; starting the device (CUDA context,
cuBLAS/cuSOLVER handles) is done before the clock starts, like the imports, and is
reported as ``device_init_s``. ``full`` runs the sklearn loop only with
``--sklearn-tokens``; ``small --methods ours`` times ours alone. ``--n/--p/--m/--tokens``
shrink the shapes for a smoke run.

Examples::

  python benchmarks/bench_ridge.py small
  python benchmarks/bench_ridge.py full --sklearn-tokens 2
  python benchmarks/bench_ridge.py full --all-targets
  python benchmarks/bench_ridge.py gcv
  python benchmarks/bench_ridge.py full --device cuda                  # GPU machine
  python benchmarks/bench_ridge.py full --device cpu --n 1000 --p 2000 --m 100 --tokens 8
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench_ridge")

ALPHA = 60_000.0
TOKENS_VISION, TOKENS_TEXT, DIM, VDVAE = 257, 77, 768, 91_168


# ----------------------------------------------------------------- data generation
def make_inputs(workdir: Path, n: int, p: int, m: int, seed: int = 0) -> np.ndarray:
    """Write X_train.npy (n × p) and X_test.npy (m × p), float32, NSD-like units (×300)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + m, p), dtype=np.float32)
    X *= 300.0
    np.save(workdir / "X_train.npy", X[:n])
    np.save(workdir / "X_test.npy", X[n:])
    return X[:n]


def make_targets_npy(workdir: Path, X: np.ndarray, tokens: int, seed: int = 1) -> None:
    """Y (n × tokens × 768) = 0.05 × (a random voxel per column, standardised) + noise."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, X.shape[1], tokens * DIM)
    Y = rng.standard_normal((X.shape[0], tokens * DIM), dtype=np.float32)
    Y += X[:, idx] * np.float32(0.05 / 300)
    np.save(workdir / "Y.npy", Y.reshape(X.shape[0], tokens, DIM))


def make_targets_zarr(path: Path, X: np.ndarray, tail: tuple[int, ...], block: tuple[int, ...],
                      seed: int, threads: int | None = None) -> None:
    """Zarr array (n, *tail), float32, uncompressed, chunked by target blocks (all rows).

    Chunks are generated and written on ``threads`` threads (default: all cores), each
    from its own generator seeded by (seed, chunk number), so the data do not depend on
    the thread count.
    """
    import zarr

    n = X.shape[0]
    z = zarr.create_array(str(path), shape=(n,) + tail, chunks=(n,) + block, dtype="float32",
                          compressors=None)
    starts = [range(0, t, b) for t, b in zip(tail, block)]
    corners = np.array(np.meshgrid(*starts, indexing="ij")).reshape(len(tail), -1).T

    def write(i: int) -> None:
        rng = np.random.default_rng([seed, i])
        sl = tuple(slice(c, min(c + b, t)) for c, b, t in zip(corners[i], block, tail))
        shape = (n,) + tuple(s.stop - s.start for s in sl)
        w = int(np.prod(shape[1:]))
        Y = rng.standard_normal((n, w), dtype=np.float32)
        Y += X[:, rng.integers(0, X.shape[1], w)] * np.float32(0.05 / 300)
        z[(slice(None),) + sl] = Y.reshape(shape)

    with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count()) as pool:
        list(pool.map(write, range(len(corners))))


# ------------------------------------------------------------------------ workers
def _bd_calibrate(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return (P - P.mean(0)) / P.std(0) * Y.std(0) + Y.mean(0)


def _bd_zscore(X: np.ndarray, Xtr: np.ndarray) -> np.ndarray:
    Xs, Xt = X / 300.0, Xtr / 300.0
    return (Xs - Xt.mean(0)) / Xt.std(0, ddof=1)


def worker_sklearn(d: Path, tokens: int | None) -> dict:
    """Brain-Diffuser's loop: float64 fMRI, one sklearn Ridge per token."""
    from sklearn.linear_model import Ridge

    Xtr, Xte = np.load(d / "X_train.npy").astype(np.float64), np.load(d / "X_test.npy").astype(np.float64)
    Y = np.load(d / "Y.npy", mmap_mode="r") if (d / "Y.npy").exists() else None
    t0 = time.perf_counter()
    Xs, Xts = _bd_zscore(Xtr, Xtr), _bd_zscore(Xte, Xtr)
    per_token = []
    ntok = tokens or Y.shape[1]
    for t in range(ntok):
        s = time.perf_counter()
        Yt = np.asarray(Y[:, t]) if Y is not None else _zarr_token(d, t)
        P = Ridge(alpha=ALPHA, fit_intercept=True).fit(Xs, Yt).predict(Xts)
        _bd_calibrate(P, Yt)
        per_token.append(time.perf_counter() - s)
    return {"wall_s": time.perf_counter() - t0, "tokens": ntok, "per_token_s": per_token}


def _zarr_token(d: Path, t: int) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(str(d / "clip_vision.zarr"), mode="r")[:, t])


def worker_himalaya(d: Path) -> dict:
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidge

    set_backend("numpy")
    Xtr, Xte = np.load(d / "X_train.npy"), np.load(d / "X_test.npy")
    Y = np.load(d / "Y.npy")
    t0 = time.perf_counter()
    Xs = _bd_zscore(Xtr, Xtr).astype(np.float32)
    Xts = _bd_zscore(Xte, Xtr).astype(np.float32)
    Y2 = Y.reshape(len(Y), -1)
    P = KernelRidge(alpha=ALPHA, kernel="linear", fit_intercept=True).fit(Xs, Y2).predict(Xts)
    _bd_calibrate(np.asarray(P), Y2)
    return {"wall_s": time.perf_counter() - t0}


def worker_ours_small(d: Path, device: str | None) -> dict:
    from fmri2img.ridge import BlockRidge

    Xtr, Xte, Y = np.load(d / "X_train.npy"), np.load(d / "X_test.npy"), np.load(d / "Y.npy")
    t0 = time.perf_counter()
    BlockRidge(alpha=ALPHA, calibration="test_batch", device=device).fit(Xtr, Y).predict(Xte)
    return {"wall_s": time.perf_counter() - t0}


def worker_ours_full(d: Path, names: list[str], device: str | None) -> dict:
    """Fit on Zarr-streamed targets and write the predictions to Zarr, block by block."""
    import dask
    import dask.array as da

    from fmri2img.ridge import BRAIN_DIFFUSER_ALPHAS, fit_shared

    Xtr, Xte = np.load(d / "X_train.npy"), np.load(d / "X_test.npy")
    t0 = time.perf_counter()
    targets = {k: (da.from_zarr(str(d / f"{k}.zarr")), BRAIN_DIFFUSER_ALPHAS[k]) for k in names}
    models = fit_shared(Xtr, targets, calibration="test_batch", device=device)
    t_fit = time.perf_counter() - t0
    writes = [m.predict(Xte).to_zarr(str(d / f"pred_{k}.zarr"), compute=False, overwrite=True)
              for k, m in models.items()]
    dask.compute(*writes)
    return {"wall_s": time.perf_counter() - t0, "fit_s": t_fit}


def worker_gcv(d: Path, n_alphas: int, device: str | None) -> dict:
    import dask.array as da

    from fmri2img.ridge import BlockRidge

    Xtr = np.load(d / "X_train.npy")
    grid = np.logspace(3, 6, n_alphas)
    t0 = time.perf_counter()
    est = BlockRidge(alpha=grid, alpha_groups="target", criterion="gcv", device=device).fit(
        Xtr, da.from_zarr(str(d / "clip_vision.zarr")))
    counts = np.bincount(est.alpha_index_, minlength=len(est.alphas_))
    return {"wall_s": time.perf_counter() - t0,
            "alphas_used": {f"{a:.0f}": int(c) for a, c in zip(est.alphas_, counts)}}


def _vm_hwm_gb() -> float:
    """Peak RSS of this process image (VmHWM). Unlike ``ru_maxrss``, which Linux carries
    over from the parent across fork/exec, this starts fresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def start_device(device: str | None) -> dict:
    """Start the torch device before the clock (CUDA context, cuBLAS and cuSOLVER handles)."""
    if device is None:
        return {"device": "numpy"}
    import torch

    t0 = time.perf_counter()
    dev = torch.device(device)
    a = torch.eye(4, device=dev)
    g = (a @ a).double() + 1.0  # float32 GEMM (cuBLAS), then float64 factorisations (cuSOLVER)
    torch.cholesky_solve(g, torch.linalg.cholesky(g + 4 * torch.eye(4, dtype=g.dtype, device=dev)))
    torch.linalg.eigh(g.float())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {"device": str(dev), "device_name": name, "torch": torch.__version__,
            "device_init_s": time.perf_counter() - t0}


def _device_peak(device: str | None) -> dict:
    if device is None or not device.startswith("cuda"):
        return {}
    import torch

    return {"peak_gpu_mem_gb": torch.cuda.max_memory_allocated(torch.device(device)) / 2**30}


def run_worker(args: argparse.Namespace) -> None:
    import dask

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.dask_threads:
        dask.config.set(num_workers=args.dask_threads)
    d = Path(args.data)
    dev = start_device(args.device)
    rss0 = _vm_hwm_gb()
    table = {
        "sklearn": lambda: worker_sklearn(d, args.tokens),
        "himalaya": lambda: worker_himalaya(d),
        "ours_small": lambda: worker_ours_small(d, args.device),
        "ours_full": lambda: worker_ours_full(d, args.names.split(","), args.device),
        "gcv": lambda: worker_gcv(d, args.n_alphas, args.device),
    }
    out = table[args.method]()
    out.update(_device_peak(args.device))
    out["peak_rss_gb"] = _vm_hwm_gb()
    out["rss_after_imports_gb"] = rss0
    if args.method not in ("sklearn", "himalaya"):
        out.update(dev)
    print("RESULT " + json.dumps(out), flush=True)


def measure(method: str, data: Path, **kw) -> dict:
    """Run one method in a fresh Python process and return its RESULT line."""
    cmd = [sys.executable, __file__, "_worker", "--method", method, "--data", str(data)]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    logger.info("running %s", " ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed with exit code {proc.returncode}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    print(f"{method:>12}: {json.dumps(res)}", flush=True)
    return res


# ---------------------------------------------------------------------- commands
def cmd_small(args: argparse.Namespace, work: Path) -> None:
    X = make_inputs(work, args.n, args.p, args.m)
    make_targets_npy(work, X, args.tokens)
    del X
    for method in args.methods.split(","):
        ours = method == "ours"
        measure("ours_small" if ours else method, work, dask_threads=args.dask_threads,
                device=args.device if ours else None)


def cmd_full(args: argparse.Namespace, work: Path) -> None:
    t0 = time.perf_counter()
    X = make_inputs(work, args.n, args.p, args.m)
    make_targets_zarr(work / "clip_vision.zarr", X, (args.tokens, DIM), (4, DIM), seed=1)
    names = ["clip_vision"]
    if args.all_targets:
        make_targets_zarr(work / "vdvae.zarr", X, (VDVAE,), (3072,), seed=2)
        make_targets_zarr(work / "clip_text.zarr", X, (TOKENS_TEXT, DIM), (4, DIM), seed=3)
        names = ["vdvae", "clip_text", "clip_vision"]
    del X
    logger.info("generated the synthetic store in %.0f s", time.perf_counter() - t0)
    measure("ours_full", work, names="clip_vision", dask_threads=args.dask_threads, device=args.device)
    if args.all_targets:
        measure("ours_full", work, names=",".join(names), dask_threads=args.dask_threads,
                device=args.device)
    if args.sklearn_tokens:
        res = measure("sklearn", work, tokens=args.sklearn_tokens)
        per = float(np.mean(res["per_token_s"]))
        print(f"per-token sklearn loop: {per:.1f} s/token → {per * args.tokens:.0f} s for "
              f"{args.tokens} tokens")


def cmd_gcv(args: argparse.Namespace, work: Path) -> None:
    X = make_inputs(work, args.n, args.p, args.m)
    make_targets_zarr(work / "clip_vision.zarr", X, (args.tokens, DIM), (4, DIM), seed=1)
    del X
    measure("gcv", work, n_alphas=args.n_alphas, dask_threads=args.dask_threads, device=args.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    shapes = (("small", 4000, 16), ("full", 8859, TOKENS_VISION), ("gcv", 8859, TOKENS_VISION))
    for name, n, tokens in shapes:
        sp = sub.add_parser(name)
        sp.add_argument("--n", type=int, default=n)
        sp.add_argument("--p", type=int, default=15_724)
        sp.add_argument("--m", type=int, default=982)
        sp.add_argument("--tokens", type=int, default=tokens, help="target tokens of 768 columns")
        sp.add_argument("--workdir", default=None, help="parent of the temp dir (default: system tmp)")
        sp.add_argument("--dask-threads", type=int, default=None)
        sp.add_argument("--device", default=None,
                        help="torch device for ours (cpu, cuda, cuda:N); default: NumPy")
    sub.choices["small"].add_argument("--methods", default="ours,sklearn,himalaya")
    sub.choices["full"].add_argument("--all-targets", action="store_true")
    sub.choices["full"].add_argument("--sklearn-tokens", type=int, default=0)
    sub.choices["gcv"].add_argument("--n-alphas", type=int, default=10)
    w = sub.add_parser("_worker")
    for flag in ("--method", "--data", "--names", "--device"):
        w.add_argument(flag)
    for flag in ("--tokens", "--n-alphas", "--dask-threads"):
        w.add_argument(flag, type=int, default=None)
    args = ap.parse_args()
    if args.cmd == "_worker":
        return run_worker(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M %Z')}; load {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench_ridge_", dir=args.workdir))
    try:
        {"small": cmd_small, "full": cmd_full, "gcv": cmd_gcv}[args.cmd](args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
