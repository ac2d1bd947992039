"""Benchmark: ingest one mini-NSD subject streamed from a loopback S3 server vs a plain byte copy.

    python benchmarks/bench_ingest.py [--side 425] [--workers 2] [--prefer hdf5]

1. Generates mini-NSD (default size, side 425) in a temp dir and uploads it to a moto S3
   server started as a separate process on 127.0.0.1.
2. Baseline: a plain byte copy (s3fs ``get``) of the files subject 1's ingest needs
   (design, ROI volumes, betas of every session in both formats, stimuli, captions) to a
   local temp dir.
3. fmri2img ingest of subject 1 from the S3 source into a store on the same S3 server, on a
   LocalCluster; records wall time, each worker's peak RSS and the bytes every process
   (driver and workers) wrote to local disk (/proc/PID/io write_bytes) — the store is on
   S3, so everything written locally is "outside the store".

Prints a JSON line with the results; copy them into benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _io_write_bytes(pid: int | None = None) -> int:
    path = f"/proc/{pid or 'self'}/io"
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return -1
    return -1


def _vm_hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it does not inherit the pre-exec peak
    of the process that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_stats() -> dict:
    return {"peak_rss_mb": _vm_hwm_mb(), "write_bytes": _io_write_bytes(), "pid": os.getpid()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=425)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefer", default="hdf5", choices=["hdf5", "nii.gz"])
    parser.add_argument("--store", default="s3", choices=["s3", "local"],
                        help="where the store goes (the copy baseline always writes to local disk)")
    parser.add_argument("--server", default="moto", choices=["moto", "s3rver"],
                        help="loopback S3 server: moto (the tests' server; it copies the whole object for every "
                             "range request) or s3rver (npm; serves a range from disk; path from --s3rver-bin)")
    parser.add_argument("--s3rver-bin", default=shutil.which("s3rver") or "s3rver",
                        help="the s3rver executable (npm install s3rver@3.7.1; node_modules/.bin/s3rver)")
    parser.add_argument("--data", default=None,
                        help="reuse a mini-NSD directory generated earlier with the same size options")
    parser.add_argument("--realistic", action="store_true",
                        help="NSD-sized sessions: the func1pt8mm volume (81×104×83), 750 trials per session, "
                             "3 sessions, 1,000 stimuli (about 1 GB per session file)")
    args = parser.parse_args()

    import s3fs
    from distributed import Client, LocalCluster

    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd
    from fmri2img.storage.nsd import NSDLayout, ROI_FILES
    from fmri2img.storage.source import Source
    from fmri2img.storage.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    port = _free_port()
    if args.server == "moto":
        cmd = [shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)]
        key, secret = "bench", "bench-secret"
    else:
        cmd = [args.s3rver_bin, "-d", str(tmp / "s3rver"), "-a", "127.0.0.1", "-p", str(port), "--silent"]
        (tmp / "s3rver").mkdir()
        key, secret = "S3RVER", "S3RVER"  # s3rver's fixed credentials
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    opts = {"key": key, "secret": secret, "endpoint_url": endpoint}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        t = time.perf_counter()
        spec = MiniNSDSpec(side=args.side, subjects=(1,))
        if args.realistic:
            spec = MiniNSDSpec(side=args.side, subjects=(1,), volume_shape=(81, 104, 83), trials_per_session=750,
                               n_sessions=3, n_images=1000, n_per_subject=900, n_shared=100)
        data = Path(args.data) if args.data else tmp / "mini"
        if not args.data:
            generate_mini_nsd(data, spec)
        gen_s = time.perf_counter() - t
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("nsd-source")
        fs.mkdir("nsd-store")
        fs.put(str(data) + "/", "nsd-source/root/", recursive=True)

        layout = NSDLayout("nsd-source/root")
        n_sessions = spec.n_sessions
        needed = [layout.expdesign(), layout.stimuli(), layout.captions()]
        needed += [layout.roi(1, name) for name in ROI_FILES]
        # the files ingest reads: the betas in the preferred format only
        needed += [layout.betas(1, s, args.prefer) for s in range(1, n_sessions + 1)]
        nbytes = sum(fs.size(p) for p in needed)

        # baseline: plain byte copy of the same files
        copy_dir = tmp / "copy"
        copy_dir.mkdir()
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
        t = time.perf_counter()
        fs.get(needed, [str(copy_dir / p.replace("/", "_")) for p in needed])
        copy_s = time.perf_counter() - t
        shutil.rmtree(copy_dir)

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            before = client.run(_worker_stats)
            driver_before = _io_write_bytes()
            t = time.perf_counter()
            store = Store("s3://nsd-store/nsd.zarr", opts) if args.store == "s3" else Store(str(tmp / "store.zarr"))
            summary = ingest(store, Source("s3://nsd-source/root", opts), 1, None,
                             client=client, prefer=args.prefer, progress=False)
            ingest_s = time.perf_counter() - t
            after = client.run(_worker_stats)
            driver_written = _io_write_bytes() - driver_before
        worker_written = sum(after[w]["write_bytes"] - before[w]["write_bytes"] for w in after)
        store_bytes = 0
        if args.store == "local":  # what the workers wrote minus the store itself = outside the store
            os.sync()
            store_bytes = sum(p.stat().st_size for p in (tmp / "store.zarr").rglob("*") if p.is_file())
        result = {
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "side": args.side, "workers": args.workers, "prefer": args.prefer, "realistic": args.realistic,
            "server": args.server,
            "volume": list(spec.volume_shape), "trials_per_session": spec.trials_per_session,
            "sessions": spec.n_sessions,
            "source_bytes_needed": nbytes, "generate_s": round(gen_s, 2),
            "copy_s": round(copy_s, 2), "ingest_s": round(ingest_s, 2), "ratio": round(ingest_s / copy_s, 2),
            "worker_peak_rss_mb": [round(after[w]["peak_rss_mb"]) for w in sorted(after)],
            "store": args.store, "store_bytes": store_bytes,
            "local_disk_bytes_written": {"workers": worker_written, "driver": driver_written},
            "subject": {k: summary[k] for k in ("n_train", "n_test", "n_voxels", "n_trials")},
        }
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
