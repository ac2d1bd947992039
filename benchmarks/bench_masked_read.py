"""Benchmark: ingest of an NSD-sized subject in NSD's real layout, fetching only the masked voxels.

    python benchmarks/bench_masked_read.py [--data DIR] [--sessions 3] [--workers 2] [--formats hdf5,nii.gz]
        [--server s3rver --s3rver-bin node_modules/.bin/s3rver | --server moto] [--link-mbit 100]
        [--writers all [--pytables-path DIR]] [--no-ingest]

1. Generates (or reuses, ``--data``) a mini-NSD subject in NSD's layout and size: the
   func1pt8mm volume 81×104×83, 750 trials per session, int16 betas in ``.hdf5`` files chunked
   one voxel's trials per chunk, and an nsdgeneral-sized mask (``nsdgeneral_keep=0.22``, about
   2.3 % of the volume like subject 1's 15,724 of 699,192 voxels); uploads it to a loopback S3
   server started as a separate process on 127.0.0.1.
2. Bytes: reads one session through the same reader ingest uses, over s3fs with every range
   counted on the client, and reports the bytes fetched (data chunks, B-tree nodes, header)
   over the masked voxels' bytes (goal ≤ 3).
3. Baseline: a plain byte copy (s3fs ``get``) of the subject's session ``.hdf5`` files to local disk.
4. fmri2img ingest of the subject's betas (no stimuli) from S3 into a store on a LocalCluster,
   once per betas format in ``--formats``; wall time, each worker's peak RSS, and the bytes every
   process wrote to local disk outside the store (``/proc/PID/io`` write_bytes minus the store's
   size).

5. ``--writers all`` (or a comma list of :data:`WRITERS`): session 1 rewritten by each HDF5 writer (h5py's
   default as NSD, ``libver="latest"`` with its fixed array, extensible array, version 2 B-tree and implicit
   chunk indexes, early allocation, chunks written in x order, a sparse file, gzip, PyTables' CArray when
   ``--pytables-path`` holds PyTables), uploaded, and read through the same reader over the counting s3fs:
   bytes fetched against the file's size and the masked bytes, requests, seconds; the values are checked
   against h5py's own read of that file. ``--no-ingest`` skips 3 and 4.

``--link-mbit N`` (root, iproute2) puts the S3 server in a network namespace of its own behind a
veth pair whose server side sends at most N Mbit/s (a ``tbf`` queue): a lab's link to the bucket
instead of loopback. The namespace is removed at the end.

Prints a JSON line; copy the results into benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import _free_port, _io_write_bytes, _worker_stats  # noqa: E402

NSD_SUBJ01_NSDGENERAL = 15_724  # voxels (MindEye's num_voxels for subject 1)
NSD_SESSION_BYTES = 81 * 104 * 83 * 750 * 2
_HEADER_BLOCK = 64 * 2**10  # the reader's header read-ahead (fmri2img.storage.nsd.hdf5read.HEADER_BLOCK)
_INDEX_SIGNATURES = {b"TREE", b"FAHD", b"FADB", b"EAHD", b"EAIB", b"EASB", b"EADB", b"BTHD", b"BTIN", b"BTLF"}


class _Counted:
    """s3fs with every range fetched by ``cat_ranges`` and every file read counted, by kind."""

    def __init__(self, fs):
        self.fs = fs
        self.bytes = {"index": 0, "data": 0, "header": 0}
        self.requests = {"index": 0, "data": 0, "header": 0}

    def exists(self, path):
        return self.fs.exists(path)

    def cat_ranges(self, paths, starts, ends, **kw):
        parts = self.fs.cat_ranges(paths, starts, ends, **kw)
        for a, p in zip(starts, parts):
            # chunk index structures start with their signature; h5py's header reads are aligned read-ahead blocks
            kind = "index" if p[:4] in _INDEX_SIGNATURES else "header" if a % _HEADER_BLOCK == 0 else "data"
            self.bytes[kind] += len(p)
            self.requests[kind] += 1
        return parts

    def open(self, path, mode="rb", **kw):
        f = self.fs.open(path, mode, **kw)
        fetch, outer = f._fetch_range, self

        def counted(start, end):
            out = fetch(start, end)
            outer.bytes["header"] += len(out)
            outer.requests["header"] += 1
            return out

        f._fetch_range = counted
        f.cache.fetcher = counted
        return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="reuse a mini-NSD directory generated earlier by this script")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server", default="s3rver", choices=["moto", "s3rver"],
                        help="s3rver (npm; serves a range from disk) or moto (copies the whole object per range "
                             "request: thousands of range requests on a 1 GB object take minutes of server CPU)")
    parser.add_argument("--s3rver-bin", default=shutil.which("s3rver") or "s3rver")
    parser.add_argument("--formats", default="hdf5",
                        help="betas formats ingest reads, one ingest each, e.g. hdf5,nii.gz")
    parser.add_argument("--link-mbit", type=float, default=0,
                        help="serve from a network namespace behind a link of this many Mbit/s (0: loopback)")
    parser.add_argument("--writers", default="", help="'all' or a comma list of HDF5 writers to measure (step 5)")
    parser.add_argument("--pytables-path", default="", help="a directory holding PyTables (pip install --target), "
                        "put on PYTHONPATH of the process that writes the PyTables file")
    parser.add_argument("--no-ingest", action="store_true", help="skip the copy and the ingest runs (steps 3, 4)")
    parser.add_argument("--store", default="local", choices=["local", "s3"],
                        help="where ingest writes: local disk, or the same S3 server (then nothing may touch local disk)")
    args = parser.parse_args()

    import numpy as np
    import s3fs

    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd
    from fmri2img.storage.nsd import NSDLayout, read_mask, read_session_betas, session_chunk_map

    tmp = Path(tempfile.mkdtemp(prefix="bench-masked-"))
    spec = MiniNSDSpec.sized(subjects=(1,), volume_shape=(81, 104, 83), trials_per_session=750,
                             n_sessions=args.sessions, side=64, nsdgeneral_keep=0.22)
    data = Path(args.data) if args.data else tmp / "mini"
    t = time.perf_counter()
    if not (data / "mini_nsd.json").exists():
        generate_mini_nsd(data, spec)
    gen_s = time.perf_counter() - t
    port = _free_port()
    host, prefix = "127.0.0.1", []
    if args.link_mbit:
        host, prefix = _link_up(args.link_mbit), ["ip", "netns", "exec", _NETNS]
    if args.server == "moto":
        cmd = [shutil.which("moto_server") or "moto_server", "-H", host, "-p", str(port)]
        opts = {"key": "bench", "secret": "bench-secret"}
    else:
        (tmp / "s3rver").mkdir()
        cmd = [args.s3rver_bin, "-d", str(tmp / "s3rver"), "-a", host, "-p", str(port), "--silent"]
        opts = {"key": "S3RVER", "secret": "S3RVER"}  # s3rver's fixed credentials
    server = subprocess.Popen(prefix + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opts["endpoint_url"] = f"http://{host}:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
        fs.mkdir("nsd-source")
        formats = args.formats.split(",")
        layout = NSDLayout("nsd-source/root")
        local = NSDLayout(str(data))
        wanted = [local.expdesign()] + [local.roi(1, name) for name in ("nsdgeneral", "prf-visualrois", "floc-faces",
                                                                          "floc-words", "floc-places", "floc-bodies",
                                                                          "prf-eccrois")]
        wanted += [local.betas(1, s, fmt) for s in range(1, args.sessions + 1) for fmt in set(formats) | {"hdf5"}]
        fs.put(wanted, [f"nsd-source/root/{Path(w).relative_to(data).as_posix()}" for w in wanted])
        import fsspec

        mask = read_mask(fsspec.filesystem("file"), local.roi(1, "nsdgeneral"))
        voxels = np.flatnonzero(mask)
        masked = len(voxels) * 750 * 2
        sessions = list(range(1, args.sessions + 1))
        session_files = [layout.betas(1, s, "hdf5") for s in sessions]
        file_bytes = sum(fs.size(p) for p in session_files)

        counted = _Counted(s3fs.S3FileSystem(skip_instance_cache=True, **opts))
        t = time.perf_counter()
        read_session_betas(counted, layout, 1, 1, voxels, mask.shape, 750)
        one_session_s = time.perf_counter() - t
        # what ingest does for a subject: one walk (session 1), then every session reuses the verified map
        cmap = session_chunk_map(s3fs.S3FileSystem(skip_instance_cache=True, **opts), layout, 1, 1, voxels,
                                 mask.shape)
        mapped = _Counted(s3fs.S3FileSystem(skip_instance_cache=True, **opts))
        t = time.perf_counter()
        read_session_betas(mapped, layout, 1, min(2, args.sessions), voxels, mask.shape, 750, chunk_map=cmap)
        mapped_s = time.perf_counter() - t

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
        writers = list(WRITERS) if args.writers == "all" else [w for w in args.writers.split(",") if w]
        writer_rows = _writer_rows(args, writers, fs, opts, Path(local.betas(1, 1, "hdf5")), voxels, mask.shape,
                                   tmp / "writers")
        copy_s, runs = None, {}
        if not args.no_ingest:
            copy_dir = tmp / "copy"
            copy_dir.mkdir()
            t = time.perf_counter()
            fs.get(session_files, [str(copy_dir / Path(p).name) for p in session_files])
            copy_s = round(time.perf_counter() - t, 2)
            shutil.rmtree(copy_dir)
        for fmt in formats if not args.no_ingest else []:
            runs[fmt] = _ingest_run(args, fmt, fs, opts, sessions, tmp / f"store-{fmt.replace('.', '')}.zarr")
            runs[fmt]["copy_over_ingest"] = round(copy_s / runs[fmt]["ingest_s"], 2)
        fetched = sum(counted.bytes.values())
        fetched_mapped = sum(mapped.bytes.values())
        walk = counted.bytes["index"]
        # bytes per masked voxel for a 37-session subject: one walk, then 37 sessions through the map
        per_voxel_session = (walk / 37 + fetched_mapped) / len(voxels)
        real_session = per_voxel_session * NSD_SUBJ01_NSDGENERAL
        result = {
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_1min": round(os.getloadavg()[0], 2), "server": args.server, "store": args.store, "workers": args.workers,
            "volume": [81, 104, 83], "trials": 750, "sessions": args.sessions, "generate_s": round(gen_s, 1),
            "mask_voxels": int(len(voxels)), "mask_fraction": round(len(voxels) / mask.size, 4),
            "masked_bytes_per_session": masked, "session_file_bytes": file_bytes // args.sessions,
            "one_session": {"seconds": round(one_session_s, 2), "bytes": counted.bytes,
                            "requests": counted.requests, "fetched_over_masked": round(fetched / masked, 3)},
            "session_with_subject_map": {"seconds": round(mapped_s, 2), "bytes": mapped.bytes,
                                         "requests": mapped.requests,
                                         "fetched_over_masked": round(fetched_mapped / masked, 3)},
            "link_mbit": args.link_mbit or "loopback", "copy_hdf5_s": copy_s, "ingest": runs, "writers": writer_rows,
            "nsd_subject1_estimate": {
                "bytes_per_session": round(real_session), "bytes_37_sessions": round(37 * real_session),
                "seconds_37_at_100Mbit": round(37 * real_session * 8 / 100e6, 1),
                "seconds_37_at_1Gbit": round(37 * real_session * 8 / 1e9, 1),
                "whole_files_37_bytes": 37 * NSD_SESSION_BYTES,
            },
        }
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait()
        if args.link_mbit:
            subprocess.run(["ip", "netns", "del", _NETNS], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


_NETNS = "fmri2img-bench"


def _copy_betas(src, dst, order: str = "z", keep=None) -> None:
    """Copy ``betas`` (T, Z, Y, X) slab by slab: along z (a volume writer) or x; ``keep(z)`` skips z-slabs."""
    n = src.shape[1] if order == "z" else src.shape[3]
    for i in range(n):
        if keep is not None and not keep(i):
            continue
        if order == "z":
            dst[:, i] = src[:, i]
        else:
            dst[:, :, :, i] = src[:, :, :, i]


def _h5py_writer(libver: str = "earliest", maxshape: str = "", early: bool = False, order: str = "z",
                 sparse: bool = False, **filters):
    """A writer of ``betas`` with one voxel's trials per chunk, in one of h5py's layouts."""
    def write(src_path: Path, dst_path: Path) -> None:
        import h5py

        with h5py.File(src_path, "r") as src_h5, h5py.File(dst_path, "w", libver=libver) as h5:
            src = src_h5["betas"]
            t, z, y, x = src.shape
            chunks = (t, 1, 1, 1)
            if early:
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_chunk(chunks)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                h5py.h5d.create(h5.id, b"betas", h5py.h5t.STD_I16LE, h5py.h5s.create_simple(src.shape), dcpl=dcpl)
                dst = h5["betas"]
            else:
                maxs = {"": None, "trials": (None, z, y, x), "trials,z": (None, None, y, x)}[maxshape]
                dst = h5.create_dataset("betas", shape=src.shape, dtype=src.dtype, chunks=chunks, maxshape=maxs,
                                        **filters)
            _copy_betas(src, dst, order, (lambda i: i % 2 == 0) if sparse else None)
    return write


def _pytables_writer(src_path: Path, dst_path: Path, pytables_path: str) -> None:
    """PyTables' CArray, one voxel's trials per chunk, written by PyTables in a process of its own."""
    script = (
        "import sys, tables\n"
        f"src = tables.open_file({str(src_path)!r}); a = src.root.betas\n"
        f"with tables.open_file({str(dst_path)!r}, 'w') as f:\n"
        "    c = f.create_carray('/', 'betas', atom=tables.Int16Atom(), shape=a.shape,\n"
        "                        chunkshape=(a.shape[0], 1, 1, 1))\n"
        "    for z in range(a.shape[1]):\n"
        "        c[:, z] = a[:, z]\n"
        "src.close()\n")
    env = dict(os.environ, PYTHONPATH=pytables_path)
    subprocess.run([sys.executable, "-c", script], check=True, env=env)


#: writer -> function(src_path, dst_path); "nsd" is the mini-NSD file itself (h5py's default, as NSD's files)
WRITERS = {
    "nsd (h5py default)": None,
    "libver=latest: fixed array": _h5py_writer("latest"),
    "libver=latest: extensible array (trials unlimited)": _h5py_writer("latest", "trials"),
    "libver=latest: version 2 B-tree (trials, z unlimited)": _h5py_writer("latest", "trials,z"),
    "libver=latest: implicit (early allocation)": _h5py_writer("latest", early=True),
    "libver=latest: fixed array, gzip": _h5py_writer("latest", compression="gzip", compression_opts=1),
    "early allocation (version 1 B-tree)": _h5py_writer(early=True),
    "x order (version 1 B-tree)": _h5py_writer(order="x"),
    "sparse: every other z-slab (version 1 B-tree)": _h5py_writer(sparse=True),
    "PyTables CArray": "pytables",
}


def _h5py_voxels(path: Path, voxels, shape):
    """h5py's own read of the voxels (z-slab by z-slab), ÷ 300: the reference each writer's read must equal."""
    import h5py
    import numpy as np

    x, y, z = np.unravel_index(voxels, shape)
    with h5py.File(path, "r") as h5:
        ds = h5["betas"]
        out = np.empty((ds.shape[0], len(voxels)), np.float32)
        for zi in np.unique(z):
            sel = np.flatnonzero(z == zi)
            out[:, sel] = ds[:, zi][:, y[sel], x[sel]] / np.float32(300)
    return out


def _index_name(path: Path) -> str:
    import h5py

    from fmri2img.storage.nsd import hdf5chunks, hdf5meta

    raw_read = path.open("rb")

    def read(a: int, n: int) -> bytes:
        raw_read.seek(a)
        return raw_read.read(n)

    with h5py.File(path, "r") as h5, raw_read:
        layout = hdf5meta.read_layout(read, hdf5chunks._header_address(h5["betas"]))
        filters = h5["betas"].compression or "none"
    return f"{hdf5meta.INDEX_NAMES[layout.index]}, filters: {filters}"


def _writer_rows(args, writers: list[str], fs, opts: dict, src: Path, voxels, shape, work: Path) -> list[dict]:
    """Each writer's file: written, uploaded, read through the counting s3fs; bytes, requests, seconds."""
    import numpy as np
    import s3fs

    from fmri2img.storage.nsd.betas import read_betas_file

    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in writers:
        writer = WRITERS[name]
        path = src if writer is None else work / "betas.hdf5"
        t = time.perf_counter()
        if writer == "pytables":
            if not args.pytables_path:
                rows.append({"writer": name, "skipped": "no --pytables-path"})
                continue
            _pytables_writer(src, path, args.pytables_path)
        elif writer is not None:
            writer(src, path)
        write_s = time.perf_counter() - t
        key = f"nsd-source/writers/{len(rows):02d}.hdf5"
        fs.put(str(path), key)
        counted = _Counted(s3fs.S3FileSystem(skip_instance_cache=True, **opts))
        t = time.perf_counter()
        out = read_betas_file(counted, key, voxels, shape, 750)
        read_s = time.perf_counter() - t
        same = bool(np.array_equal(out, _h5py_voxels(path, voxels, shape)))
        size, masked, fetched = path.stat().st_size, len(voxels) * 750 * 2, sum(counted.bytes.values())
        rows.append({"writer": name, "index": _index_name(path), "file_bytes": size, "masked_bytes": masked,
                     "fetched_bytes": fetched, "bytes": counted.bytes, "requests": counted.requests,
                     "fetched_over_masked": round(fetched / masked, 2), "fetched_over_file": round(fetched / size, 4),
                     "read_s": round(read_s, 2), "write_s": round(write_s, 1), "equals_h5py": same,
                     "load_1min": round(os.getloadavg()[0], 2)})
        print(json.dumps(rows[-1]), file=sys.stderr)
        fs.rm(key)
        if writer is not None:
            path.unlink()
    return rows


def _link_up(mbit: float) -> str:
    """A namespace with the server's end of a veth pair, its sending rate capped; returns the server address."""
    subprocess.run(["ip", "netns", "del", _NETNS], check=False, stderr=subprocess.DEVNULL)
    for cmd in (f"ip netns add {_NETNS}", "ip link add fib0 type veth peer name fib1",
                f"ip link set fib1 netns {_NETNS}", "ip addr add 10.231.7.1/24 dev fib0", "ip link set fib0 up",
                f"ip netns exec {_NETNS} ip addr add 10.231.7.2/24 dev fib1",
                f"ip netns exec {_NETNS} ip link set fib1 up", f"ip netns exec {_NETNS} ip link set lo up",
                f"ip netns exec {_NETNS} tc qdisc add dev fib1 root tbf rate {mbit}mbit burst 64kb latency 50ms"):
        subprocess.run(cmd.split(), check=True)
    return "10.231.7.2"


def _ingest_run(args, fmt: str, fs, opts: dict, sessions: list, store_path: Path) -> dict:
    """One ingest of the subject's betas in format ``fmt``: seconds, peak RSS per worker, local disk written."""
    from distributed import Client, LocalCluster

    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.storage.source import Source
    from fmri2img.storage.store import Store

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        before = client.run(_worker_stats)
        driver_before = _io_write_bytes()
        if args.store == "s3":
            fs.mkdir(f"nsd-store-{fmt.replace('.', '')}")
        store = Store(f"s3://nsd-store-{fmt.replace('.', '')}/nsd.zarr", opts) if args.store == "s3" \
            else Store(str(store_path))
        t = time.perf_counter()
        ingest(store, Source("s3://nsd-source/root", opts), 1, sessions, client=client, stimuli=False,
               captions=False, prefer=fmt, progress=False)
        ingest_s = time.perf_counter() - t
        after = client.run(_worker_stats)
        driver_written = _io_write_bytes() - driver_before
    os.sync()
    worker_written = sum(after[w]["write_bytes"] - before[w]["write_bytes"] for w in after)
    store_bytes = sum(p.stat().st_size for p in store_path.rglob("*") if p.is_file()) if args.store == "local" else 0
    return {"ingest_s": round(ingest_s, 2),
            "worker_peak_rss_mb": [round(after[w]["peak_rss_mb"]) for w in sorted(after)],
            "local_disk_bytes_outside_store": max(0, worker_written + driver_written - store_bytes)}


if __name__ == "__main__":
    sys.exit(main())
