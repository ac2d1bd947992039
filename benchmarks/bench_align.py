"""Benchmark of `fmri2img align` on mini-NSD, where the truth is known (issue 15, part 3).

For subject S (default 2) and a reference R (default 1), both ingested with all sessions, the
same test scans of S (its test images, repeats of all sessions averaged, never used by any
fit) are decoded by

  (a) S's own models, fitted on all its sessions (the regress stage);
  (b) S's own models, fitted on its first session only (same ridge options);
  (c) R's models (fitted on all R's sessions) through S's alignment fitted on S's first
      session (`fmri2img align`), once per --targets kind (default: encoding only).

Each set of predicted features is reconstructed with the pixel decoder (stage 1 "pixels") and
with the Brain-Diffuser run (tiny VDVAE stage 1 + tiny Versatile Diffusion, seeded random
weights), and scored with PixCorr and two-way identification on AlexNet(2) and CLIP features:
the *tiny seeded evaluation nets the tests use* (no weights), so the identification numbers
measure relative decodability, not Brain-Diffuser's published scale. Two-way identification on
the predicted features themselves (all four sets) is also reported.
`fmri2img align` for the one-session subject is timed as a command (a fresh process).

  python benchmarks/bench_align.py [--workdir DIR] [--seed 0] [--side 64] [--noise 2] [--n-sessions 37]
                                   [--pixel-side 64] [--targets encoding[,shared,hybrid]] [--calibration loo|none]
                                   [--vdvae tiny|demo]
  python benchmarks/bench_align.py --nsd-shape     # the alignment math alone at NSD's size (cost)

Defaults follow NSD's proportions where they decide the comparison: one session is 1/37 of a
subject's trials (NSD: 750 of 27,750) and the pixel decoder's features (64 × 64 × 3 = 12,288)
outnumber the voxels (about 2,500-3,200) as NSD's do (VDVAE 91,168 vs 12,682-15,724). Earlier
runs used 10 sessions and 16 × 16 pixels (one session = 10 %, 768 features): see
benchmarks/README.md, "align".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fmri2img.metrics.scores import per_image_scores, two_way_identification  # noqa: E402
from fmri2img.pipeline.clinical import align as al  # noqa: E402
from fmri2img.pipeline.clinical.decode import load_models, reconstruct_rows  # noqa: E402
from fmri2img.pipeline.evaluate import net_features, stimuli_for  # noqa: E402
from fmri2img.pipeline.features import extract_features  # noqa: E402
from fmri2img.pipeline.ingest.nsd import ingest  # noqa: E402
from fmri2img.pipeline.reconstruct import run_spec  # noqa: E402
from fmri2img.pipeline.regress import regress  # noqa: E402
from fmri2img.ridge import BlockRidge  # noqa: E402
from fmri2img.storage import schema  # noqa: E402
from fmri2img.mininsd.generate import MiniNSDSpec, generate_mini_nsd  # noqa: E402
from fmri2img.storage.source import Source  # noqa: E402
from fmri2img.storage.store import Store  # noqa: E402
from minisettings import EXTRACTORS, NETS, RIDGE, VD  # noqa: E402



def demo_vdvae(root: Path, models_dir: Path) -> dict:
    """The demo's VDVAE (the project's architecture at demo size) trained on this mini-NSD's training photographs
    of both subjects (never a test image), as `fmri2img demo` trains it: extractor options loading it by path."""
    from fmri2img.demo.vdvae import DEMO_HPARAMS, DEMO_N_BLOCKS, ensure_demo_vdvae

    path, _ = ensure_demo_vdvae(root, models_dir, (1, 2))
    return {"weights": str(path), "hparams": DEMO_HPARAMS, "n_blocks": DEMO_N_BLOCKS}


def build(workdir: Path, seed: int, side: int, noise: float, n_sessions: int, extractors: dict = EXTRACTORS,
          trained_vdvae: bool = False) -> Store:
    root, url = workdir / "mini", workdir / "store.zarr"
    if not (root / "mini_nsd.json").exists():
        spec = MiniNSDSpec.sized(seed=seed, subjects=(1, 2), side=side, noise=noise, n_sessions=n_sessions)
        generate_mini_nsd(root, spec, progress=lambda _: None)
    if trained_vdvae:
        extractors["vdvae"] = demo_vdvae(root, workdir / "models")
    if not (workdir / "built").exists():
        store = Store(str(url))
        for s in (1, 2):
            ingest(store, Source(str(root)), s, list(range(1, n_sessions + 1)), progress=False)
        for name, options in extractors.items():
            extract_features(store, name, options, images_per_task=64, progress=False)
        (workdir / "built").write_text("")
    store = Store(str(url))
    for s in (1, 2):
        for name in extractors:
            regress(store, s, name, RIDGE, progress=False)
    return store


def one_session_models(store: Store, subject: int) -> dict:
    """(b): the subject's own models fitted on its first session's training images."""
    excluded = al.evaluation_images(store, subject, 1 if subject != 1 else 2)
    ids, X = al.alignment_inputs(store, subject, [1], excluded)
    models = {}
    for name in EXTRACTORS:
        g = store.group(f"features/{name}")
        index = {int(v): i for i, v in enumerate(np.asarray(g["image"][:]))}
        Y = np.asarray(g["features"].get_orthogonal_selection((np.array([index[int(i)] for i in ids]),)))
        models[name] = BlockRidge(**RIDGE, fmri_scale=None).fit(X, Y)
    return models, len(ids)


def score(store: Store, ids: np.ndarray, preds: dict, runs) -> dict:
    truth = stimuli_for(store, ids)
    out = {}
    for name in EXTRACTORS:
        g = store.group(f"features/{name}")
        index = {int(v): i for i, v in enumerate(np.asarray(g["image"][:]))}
        true = np.asarray(g["features"].get_orthogonal_selection((np.array([index[int(i)] for i in ids]),)))
        out[f"features {name} 2-way"] = float(np.nanmean(two_way_identification(
            true.reshape(len(ids), -1), np.asarray(preds[name]).reshape(len(ids), -1))))
    gt = net_features(truth, NETS, {}, "cpu")
    for run in runs:
        stage1, final, _ = reconstruct_rows(preds, ids, run)
        for part, images in (("", stage1 if final is None else final), (" stage1", None if final is None else stage1)):
            if images is None:
                continue
            values = per_image_scores(gt_images=truth, rec_images=images, gt_features=gt,
                                      rec_features=net_features(images, NETS, {}, "cpu"),
                                      metrics=["PixCorr", "AlexNet(2)", "CLIP"])
            out.update({f"{run.name}{part} {m}": float(np.nanmean(v)) for m, v in values.items()})
    return out


def time_cli(store: Store, targets: str) -> float:
    exe = Path(sys.executable).with_name("fmri2img")
    t0 = time.perf_counter()
    subprocess.run([str(exe), "align", store.url, "--subject", "2", "--reference", "1", "--sessions", "1",
                    "--targets", targets], check=True, capture_output=True)
    return time.perf_counter() - t0


def nsd_shape(n_new: int = 600, v_new: int = 14_278, v_ref: int = 15_724, n_fit: int = 2_000) -> dict:
    """The alignment math at NSD's size on random data (no store): cost only, no quality."""
    import dask.array as da

    from fmri2img.ridge.align import fit_alignment, pseudo_responses

    rs = da.random.RandomState(0)
    sets = {"clip-vision": 257 * 768, "vdvae": 91_168, "clip-text": 77 * 768}
    train = [rs.standard_normal((n_fit, c), chunks=(n_fit, 8192)).astype(np.float32) for c in sets.values()]
    new = [rs.standard_normal((n_new, c), chunks=(n_new, 8192)).astype(np.float32) for c in sets.values()]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    pseudo, _ = pseudo_responses(train, rng.standard_normal((n_fit, v_ref), np.float32), new)
    t1 = time.perf_counter()
    fit_alignment(rng.standard_normal((n_new, v_new), np.float32), pseudo)
    t2 = time.perf_counter()
    return {"shape": {"n_new": n_new, "v_new": v_new, "v_ref": v_ref, "n_fit": n_fit, "feature_columns": sets},
            "encoding_s": round(t1 - t0, 1), "alignment_s": round(t2 - t1, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-align")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--noise", type=float, default=2.0, help="mini-NSD trial noise (percent signal change)")
    parser.add_argument("--n-sessions", type=int, default=37,
                        help="sessions per subject (one is aligned on; NSD: 37, so one session = 1/37 of the data)")
    parser.add_argument("--pixel-side", type=int, default=64,
                        help="side of the pixel decoder's features (64: 12,288 features, more than the voxels)")
    parser.add_argument("--targets", default="encoding", help="alignment targets to run, comma-separated "
                        f"(of {list(al.TARGETS)})")
    parser.add_argument("--calibration", choices=("loo", "none"), default="loo",
                        help="of every decoder's predictions (decode's default: loo)")
    parser.add_argument("--vdvae", choices=("tiny", "demo"), default="tiny",
                        help="tiny: seeded random weights (Brain-Diffuser run = plumbing); demo: the demo's VDVAE "
                             "trained on this mini-NSD's training photographs, Brain-Diffuser's stage 1 only "
                             "(use a separate --workdir: the features differ)")
    parser.add_argument("--nsd-shape", action="store_true",
                        help="only time the alignment math at NSD's size on random data (encoding kernel over "
                             "2,000 reference images and the three feature sets; 600 images × 14k → 15.7k voxels)")
    args = parser.parse_args()
    if args.nsd_shape:
        load0 = os.getloadavg()
        print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} CPUs", "load_start": load0,
                          **nsd_shape(), "load_end": os.getloadavg(),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    RIDGE["calibration"] = args.calibration
    EXTRACTORS["pixels"] = {"side": args.pixel_side}
    load0, t0 = os.getloadavg(), time.perf_counter()
    store = build(workdir, args.seed, args.side, args.noise, args.n_sessions, EXTRACTORS, args.vdvae == "demo")
    build_s = time.perf_counter() - t0
    runs = [run_spec("pixels", {"stage1": "pixels", "preset": ""}, extractor_options=EXTRACTORS, weights={}, seed=7)]
    if args.vdvae == "demo":  # Brain-Diffuser's stage 1 through a trained VDVAE: a decoded picture, not plumbing
        runs.append(run_spec("bd-stage1", {"stage1": "vdvae", "preset": ""}, extractor_options=EXTRACTORS,
                             weights={}, seed=7))
    else:
        runs.append(run_spec("bd", {"stage1": "vdvae", "preset": "brain-diffuser", "tiny": True,
                                    "settings": dict(VD)}, extractor_options=EXTRACTORS, weights={}, seed=7))
    test = store.open_dataset(schema.subject_group(2, "test"))
    ids, X = test.image.values.astype(np.int64), test.fmri.values
    results = {}
    full = load_models(store, 2, list(EXTRACTORS), args.calibration)
    results["(a) all sessions"] = score(store, ids, {n: np.asarray(m.predict(X)) for n, m in full.items()}, runs)
    one, n_one = one_session_models(store, 2)
    for m in one.values():
        m.calibration = args.calibration
    results["(b) one session"] = score(store, ids, {n: np.asarray(m.predict(X)) for n, m in one.items()}, runs)
    facts = {"n_test_images": len(ids), "n_one_session_train_images": n_one}
    for targets in args.targets.split(","):
        summary = al.align(store, 2, 1, "1", targets=targets)
        models = al.aligned_models(store, 2, "align-to-subj01", list(EXTRACTORS), args.calibration)
        key = f"(c) aligned, {targets}"
        results[key] = score(store, ids, {n: np.asarray(m.predict(X)) for n, m in models.items()}, runs)
        results[key]["align_s"] = summary["seconds"]
        results[key]["held_out"] = summary["held_out"]
        facts[f"{targets} alignment images"] = summary["n_images"]
        results[key]["cli_s"] = round(time_cli(store, targets), 1)
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} CPUs", "python": platform.python_version(),
                      "args": vars(args), "load_start": load0, "load_end": os.getloadavg(),
                      "build_s": round(build_s, 1),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "facts": facts,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
