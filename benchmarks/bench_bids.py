"""Benchmark of the BIDS path (issue 21): a new person's decoding quality, and ``glm --bids`` from S3.

**quality** — on generated data where the truth is known. mini-NSD (default sizes: subject 1 sees 300
images, 60 of them its test images, in 10 sessions) gives the reference, fitted as the pipeline does
(ingest, the tiny seeded feature sets of ``minisettings``, ridge). ``fmri2img mini-nsd --bids`` gives a new
person in their own voxel space who saw every image subject 1 saw (240 of its training images, its 60 test
images) and 20 new ones, twice each, in 8 runs; ``glm --bids`` fits their betas (timed). The person's
trials of the reference's 60 test images (averaged over their two showings; never used by any fit) are
decoded by the reference's models through the alignment (``align``, default targets) fitted on k of the
shared training images (a seeded sample; k = 50, 100, 200, all), and compared with

- **chance**: the alignment fitted on all the shared images with the pairs shuffled (the person's
  response to one image paired with the targets of another), and 0.5 for two-way identification;
- **the fully fitted reference**: its own models on its own test responses to the same 60 images.

Scores: two-way identification of each predicted feature set against the true features, and the pixel
decoder's pictures (stage 1 "pixels") by PixCorr and two-way identification on the tiny seeded AlexNet(2)
and CLIP nets of the tests (relative decodability, not Brain-Diffuser's published scale); the person's
20 new images (not in the store) are scored by PixCorr of the pixel decoder against the pictures they saw.

**s3** — ``fmri2img glm --bids`` (a command, 2 local workers) on an OpenNeuro-sized dataset served by moto's
S3 server on loopback (its own process): one participant, 2 runs of 300 volumes on the 2-mm MNI grid
(97 × 115 × 97, float32 ``desc-preproc_bold`` as fMRIPrep writes it, gzip level 1), an ellipsoidal brain
mask of about a fifth of the grid, 70 images shown once a run (3 s every 4 s, TR 2 s), six motion
confounds taken (``--confounds motion=basic``). Reported: wall time, bytes the server sent to the command
(counted by a forwarding proxy on loopback between them) against the dataset's size, the store's size. The
raw ``_bold.nii.gz`` of each run is a one-volume stand-in (the glm reads only fMRIPrep's outputs, events and
sidecars).

  python benchmarks/bench_bids.py quality [--workdir DIR] [--seed 0] [--ks 50,100,200,all]
  python benchmarks/bench_bids.py s3 [--workdir DIR] [--shape 97,115,97] [--volumes 300] [--runs 2] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_align import score  # noqa: E402
from minisettings import EXTRACTORS, RIDGE  # noqa: E402

from fmri2img.metrics.scores import per_image_scores  # noqa: E402
from fmri2img.pipeline.clinical import align as al  # noqa: E402
from fmri2img.pipeline.clinical.decode import load_models, reconstruct_rows  # noqa: E402
from fmri2img.pipeline.reconstruct import run_spec  # noqa: E402
from fmri2img.storage import schema  # noqa: E402
from fmri2img.storage.store import Store  # noqa: E402

SUBJECT = 9


def _facts() -> dict:
    return {"machine": f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_start": [round(x, 2) for x in os.getloadavg()]}


# -- quality ---------------------------------------------------------------------------------------

def build(workdir: Path, seed: int) -> tuple[Store, float]:
    """The fitted reference, the person's BIDS dataset and its glm (seconds of the glm)."""
    from fmri2img import config as cfgmod
    from fmri2img.mininsd.bids import BIDSSpec, generate_bids
    from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd
    from fmri2img.pipeline.features import extract_features
    from fmri2img.pipeline.ingest.nsd import ingest
    from fmri2img.pipeline.regress import regress
    from fmri2img.pipeline.runner import run
    from fmri2img.storage.source import Source

    mini, ds, store = workdir / "mini", workdir / "ds", Store(str(workdir / "store.zarr"))
    if not (mini / "mini_nsd.json").exists():
        generate_mini_nsd(mini, MiniNSDSpec.sized(seed=seed, subjects=(1,), side=64), progress=lambda _: None)
    if not (workdir / "reference-built").exists():
        ingest(store, Source(str(mini)), 1, list(range(1, 11)), progress=False)
        for name, options in EXTRACTORS.items():
            extract_features(store, name, options, images_per_task=64, progress=False)
            regress(store, 1, name, RIDGE, progress=False)
        (workdir / "reference-built").write_text("")
    if not (ds / "dataset_description.json").exists():
        generate_bids(ds, mini, BIDSSpec(seed=seed, n_shared=300, n_new=20, repeats=2, runs=8),
                      progress=lambda _: None)
    t0 = time.perf_counter()
    run(cfgmod.loads(f'stages = ["glm"]\n[store]\nurl = "{store.url}"\n[glm]\nsubjects = [{SUBJECT}]\n'
                     f'bids = "{ds}"\nparticipant = "01"\n'), progress=False)
    return store, time.perf_counter() - t0


def _test_scans(store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, the person's scans averaged per image, the reference's own test scans) on the shared test images."""
    ref = store.open_dataset(schema.subject_group(1, "test"))
    betas = store.open_dataset(schema.subject_group(SUBJECT, "betas"))
    rows = np.flatnonzero(np.isin(betas.image.values, ref.image.values))
    from fmri2img.ridge.align import average_by_image

    ids, X = average_by_image(np.asarray(betas.betas.isel(trial=rows).values, np.float32), betas.image.values[rows])
    return ids, X, ref.sel(image=ids).fmri.values


def _shuffled(store: Store) -> dict:
    """The reference's models through an alignment fitted on shuffled pairs (chance)."""
    from fmri2img.ridge.align import AlignedModel, fit_alignment

    _, _, ids, X = al._inputs(store, SUBJECT, 1, None, None)
    rows, Y, _ = al.build_targets(store, 1, ids, al.DEFAULT_TARGETS, al.reference_features(store, 1),
                                  al.ALIGN_ALPHAS)
    perm = np.random.default_rng(1).permutation(len(rows))
    alignment = fit_alignment(X[rows][perm], Y, al.ALIGN_ALPHAS, "target")
    models = load_models(store, 1, list(EXTRACTORS), "loo")
    return {n: AlignedModel(alignment, m) for n, m in models.items()}


def _new_images(store: Store, models: dict, run) -> float:
    """PixCorr of the pixel decoder on the person's new images (averaged over showings) against what they saw."""
    from fmri2img.ridge.align import average_by_image

    betas = store.open_dataset(schema.subject_group(SUBJECT, "betas"))
    rows = np.flatnonzero(betas.image.values < 0)
    stim, X = average_by_image(np.asarray(betas.betas.isel(trial=rows).values, np.float32),
                               betas.stimulus.values[rows])
    truth = store.open_dataset(schema.subject_group(SUBJECT, "stimuli")).images.values[stim]
    preds = {n: np.asarray(m.predict(X)) for n, m in models.items()}
    stage1, _, _ = reconstruct_rows(preds, stim + 100_000, run)
    return float(np.nanmean(per_image_scores(gt_images=truth, rec_images=stage1, metrics=["PixCorr"])["PixCorr"]))


def quality(workdir: Path, seed: int, ks: list) -> dict:
    out = _facts()
    store, glm_s = build(workdir, seed)
    runs = [run_spec("pixels", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7)]
    ids, X, ref_scans = _test_scans(store)
    results = {"reference, fully fitted": score(store, ids, {n: np.asarray(m.predict(ref_scans)) for n, m in
                                                             load_models(store, 1, list(EXTRACTORS), "loo").items()},
                                                runs)}
    results["chance (shuffled pairs)"] = score(store, ids, {n: np.asarray(m.predict(X)) for n, m in
                                                            _shuffled(store).items()}, runs)
    facts = {}
    for k in ks:
        t0 = time.perf_counter()
        summary = al.align(store, SUBJECT, 1, max_images=None if k == "all" else int(k))
        models = al.aligned_models(store, SUBJECT, "align-to-subj01", list(EXTRACTORS), "loo")
        key = f"aligned, k = {summary['n_images']}"
        results[key] = score(store, ids, {n: np.asarray(m.predict(X)) for n, m in models.items()}, runs)
        results[key].update(align_s=round(time.perf_counter() - t0, 2), held_out=summary["held_out"],
                            new_images_pixcorr=_new_images(store, models, runs[0]))
        facts[str(k)] = summary["n_images"]
    out.update(glm_s=round(glm_s, 1), n_test_images=len(ids), alignment_images=facts, results=results,
               load_end=[round(x, 2) for x in os.getloadavg()])
    return out


# -- s3 ----------------------------------------------------------------------------------------------

def _hrf(tr: float, n: int) -> np.ndarray:
    from scipy import stats

    t = np.arange(n) * tr
    return stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6


def write_openneuro_sized(root: Path, shape: tuple, volumes: int, runs: int, seed: int = 0) -> int:
    """The OpenNeuro-sized dataset (see the module docstring); returns its size in bytes."""
    import nibabel as nib
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    tr, affine = 2.0, np.array([[-2.0, 0, 0, 96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]])
    func, dfunc = root / "sub-01/func", root / "derivatives/fmriprep/sub-01/func"
    for d in (func, dfunc, root / "stimuli"):
        d.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.10.0"}')
    (root / "derivatives/fmriprep/dataset_description.json").write_text(
        '{"Name": "bench fMRIPrep", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}')
    (root / "task-images_bold.json").write_text(json.dumps({"TaskName": "images", "RepetitionTime": tr}))
    for k in range(70):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"stimuli/im{k:03d}.png")
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    brain = (np.linalg.norm(grid / np.array([0.7, 0.8, 0.7]), axis=-1) < 1)
    visual = brain & (grid[..., 1] < -0.4)
    n_vox = int(brain.sum())
    gains = rng.uniform(0.5, 2.0, int(visual.sum())).astype(np.float32)
    drive = rng.standard_normal((70, int(visual.sum()))).astype(np.float32)
    for r in range(1, runs + 1):
        order = rng.permutation(70)
        onsets = 4.0 + 4.0 * np.arange(70) + 4.0 * (np.arange(70) // 4)  # a blank slot after every four
        pd.DataFrame({"onset": onsets, "duration": 3.0, "trial_type": "image",
                      "stim_file": [f"im{k:03d}.png" for k in order]}).to_csv(
            func / f"sub-01_task-images_run-{r}_events.tsv", sep="\t", index=False)
        design = np.zeros((volumes, 70), np.float32)
        design[np.rint(onsets / tr).astype(int).clip(0, volumes - 1), np.arange(70)] = 1
        signal = np.apply_along_axis(lambda c: np.convolve(c, _hrf(tr, 16))[:volumes], 0, design) @ drive[order]
        data = np.zeros((*shape, volumes), np.float32)
        data[brain] = 800 + rng.standard_normal((n_vox, volumes)).astype(np.float32) * 8
        data[visual] += (gains[:, None] * signal.T) * 8
        img = nib.Nifti1Image(data, affine)
        img.header.set_zooms((2.0, 2.0, 2.0, tr))
        nib.save(img, dfunc / f"sub-01_task-images_run-{r}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz")
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine),
                 dfunc / f"sub-01_task-images_run-{r}_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz")
        motion = np.cumsum(rng.normal(0, 0.01, (volumes, 6)), 0)
        pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]).to_csv(
            dfunc / f"sub-01_task-images_run-{r}_desc-confounds_timeseries.tsv", sep="\t", index=False)
        raw = nib.Nifti1Image(np.zeros((*shape, 1), np.int16), affine)
        raw.header.set_zooms((2.0, 2.0, 2.0, tr))
        nib.save(raw, func / f"sub-01_task-images_run-{r}_bold.nii.gz")
        del data
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class CountingProxy:
    """A TCP forwarder on loopback in front of the S3 server that counts the bytes it sends back (what was read)."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target, self.sent, self._lock = port, 0, threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, count: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                dst.sendall(data)
                if count:
                    with self._lock:
                        self.sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(2)
                except OSError:
                    pass


def s3(workdir: Path, shape: tuple, volumes: int, runs: int, workers: int) -> dict:
    import socket

    import s3fs

    out = _facts()
    ds = workdir / "openneuro-sized"
    if not (ds / "dataset_description.json").exists():
        t0 = time.perf_counter()
        write_openneuro_sized(ds, shape, volumes, runs)
        out["generate_s"] = round(time.perf_counter() - t0, 1)
    size = sum(p.stat().st_size for p in ds.rglob("*") if p.is_file())
    preproc = sum(p.stat().st_size for p in ds.rglob("*desc-preproc_bold.nii.gz"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        options = {"key": "bench", "secret": "bench", "endpoint_url": endpoint}
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        t0 = time.perf_counter()
        fs.put(str(ds), "bench/ds", recursive=True)
        out["upload_s"] = round(time.perf_counter() - t0, 1)
        store = workdir / "s3-store.zarr"
        if store.exists():
            shutil.rmtree(store)
        proxy = CountingProxy(port)  # the command reads through it
        argv = [str(Path(sys.executable).with_name("fmri2img")), "glm", "--bids", "s3://bench/ds", "--participant",
                "01", "--subject", str(SUBJECT), "--store", str(store), "--space", "MNI152NLin2009cAsym",
                "--confounds", "motion=basic", "--workers", str(workers), "--no-progress"] + \
            [f"--bids-option={k}={v}" for k, v in {**options, "endpoint_url": f"http://127.0.0.1:{proxy.port}"}.items()]
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        sent = proxy.sent
    finally:
        server.terminate()
        server.wait()
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    store_bytes = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    out.update(shape=list(shape), volumes=volumes, runs=runs, workers=workers, dataset_bytes=size,
               preproc_bytes=preproc, glm_wall_s=round(wall, 1), bytes_sent_by_s3=sent,
               sent_over_dataset=round(sent / size, 3), store_bytes=store_bytes, stdout=done.stdout.strip(),
               load_end=[round(x, 2) for x in os.getloadavg()])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("quality", "s3"))
    parser.add_argument("--workdir", default="/tmp/bench-bids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ks", default="50,100,200,all", help="numbers of shared training images to align on")
    parser.add_argument("--shape", default="97,115,97")
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.what == "quality":
        result = quality(workdir, args.seed, [k if k == "all" else int(k) for k in args.ks.split(",")])
    else:
        result = s3(workdir, tuple(int(s) for s in args.shape.split(",")), args.volumes, args.runs, args.workers)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
