"""Data in: ``fmri2img demo``, ``fmri2img mini-nsd`` and ``fmri2img ingest``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmri2img.cli.runtime import add_cluster_options, betas_scale, cluster_from, int_list, kv, sessions_per_subject


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``demo``, ``mini-nsd`` and ``ingest`` subcommands."""
    p = sub.add_parser("demo", help="generate mini-NSD and run every stage on it (minutes, no downloads)")
    p.add_argument("--workdir", default="./runs/demo", help="where mini-NSD, the store and the report go")
    p.add_argument("--fresh", action="store_true", help="delete the workdir's store first")
    add_cluster_options(p)

    p = sub.add_parser("mini-nsd", help="write a small dataset in the exact NSD layout and formats (and, with --bids, "
                                        "a new person's BIDS dataset with fMRIPrep-style derivatives)")
    p.add_argument("dir", nargs="?", default=None, help="where mini-NSD goes (not needed with --bids and --from)")
    _add_bids_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subjects", type=int_list, default=None, help="subjects whose fMRI is written, e.g. 1,2")
    p.add_argument("--side", type=int, default=None, help="stimulus side in pixels (NSD: 425)")
    p.add_argument("--n-images", type=int, default=None, help="distinct stimuli")
    p.add_argument("--n-shared", type=int, default=None, help="shared test images")
    p.add_argument("--n-per-subject", type=int, default=None, help="images per subject (incl. shared)")
    p.add_argument("--n-sessions", type=int, default=None, help="sessions per subject")
    p.add_argument("--trials-per-session", type=int, default=None, help="trials per session (NSD: 750)")
    p.add_argument("--volume", type=int_list, default=None,
                   help="X,Y,Z of the functional volume (NSD func1pt8mm: 81,104,83)")
    p.add_argument("--nan-voxels", type=int, default=None, help="plant NaN in this many voxels (float betas)")
    p.add_argument("--no-hdf5", action="store_true", help="do not write the .hdf5 twins of the betas")
    p.add_argument("--hdf5-layout", choices=("chunked", "contiguous"), default=None,
                   help="betas .hdf5 layout: NSD's chunks of one voxel's trials (default) or one contiguous block")
    p.add_argument("--nsdgeneral-keep", type=float, default=None,
                   help="fraction of the simulated posterior cap kept as nsdgeneral (default 0.66, about 7%% of "
                        "the volume; 0.22 gives NSD's 2.3%%)")
    p.add_argument("--imagery", action="store_true",
                   help="also write NSD-Imagery's files (one imagery session per subject, 720 betas; simulated "
                        "mental images: coarser, weaker, weakest in early visual areas)")
    p.add_argument("--timeseries", action="store_true",
                   help="also write NSD's time-series layout (nsddata_timeseries: runs, design TSVs, brain mask) "
                        "simulated from the same single-trial responses, for fmri2img glm")
    p.add_argument("--timeseries-sessions", type=int, default=None,
                   help="with --timeseries: sessions with time series, each subject's first K (default 1)")
    p.add_argument("--sessions-per-subject", type=sessions_per_subject, default=None, metavar="S:K,...",
                   help="subjects scanned for fewer sessions (their first K), e.g. 3:1 (a new person, one session)")

    p = sub.add_parser("ingest", help="NSD files (any URL) → the project store, one task per session")
    p.add_argument("--source", required=True, help="NSD root, e.g. s3://natural-scenes-dataset or ./mini-nsd")
    p.add_argument("--store", required=True, help="project store URL, e.g. ./runs/x/store.zarr or s3://bucket/x.zarr")
    p.add_argument("--subject", type=int_list, required=True, help="subject(s), e.g. 1 or 1,2,5,7")
    p.add_argument("--sessions", default="public",
                   help="sessions, e.g. 1-37 or 1,3,5-7; default 'public': 1–37 clipped to the design")
    p.add_argument("--prefer", choices=["hdf5", "nii.gz"], default="hdf5",
                   help="betas from the .hdf5 twin (only the masked voxels' bytes; default) or the .nii.gz stream")
    p.add_argument("--betas-scale", type=betas_scale, default="nsd",
                   help="units of the betas files: 'nsd' (NSD's int16 × 300; default) or a number the values are "
                        "divided by (1: floats in percent signal change, 300: floats × 300)")
    p.add_argument("--nan-policy", choices=["error", "zero"], default="error")
    p.add_argument("--experiment", choices=["nsd", "nsdimagery"], default="nsd",
                   help="'nsd' (default) or 'nsdimagery': NSD-Imagery's betas, trial labels and targets "
                        "→ subjects/subjNN/imagery and imagery/targets (--sessions does not apply)")
    p.add_argument("--no-stimuli", action="store_true", help="skip copying stimuli and captions")
    p.add_argument("--captions-url", default="", help="COCO_73k_annots_curated.npy (default: at the source root)")
    p.add_argument("--anon", action="store_true", help="anonymous access to the source (public buckets)")
    p.add_argument("--source-option", type=kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--store-option", type=kv, action="append", default=[], metavar="KEY=VALUE")
    add_cluster_options(p)


def _add_bids_options(p: argparse.ArgumentParser) -> None:
    """``mini-nsd --bids``: a new person's BIDS dataset (fmri2img.mininsd.bids)."""
    p.add_argument("--bids", default=None, metavar="BIDS_DIR",
                   help="also write a BIDS dataset: a simulated new person in their own voxel space who saw images "
                        "of a mini-NSD subject (and new ones), for fmri2img glm --bids")
    p.add_argument("--from", dest="bids_from", default=None, metavar="MINI_NSD_DIR",
                   help="with --bids: an existing mini-NSD (e.g. the demo's runs/demo/mini-nsd) instead of DIR")
    p.add_argument("--reference", type=int, default=None, help="with --bids: the mini-NSD subject whose images the "
                                                              "person also saw (default 1)")
    p.add_argument("--shared-images", type=int, default=None, help="with --bids: images shared with the reference "
                                                                  "(default 12)")
    p.add_argument("--new-images", type=int, default=None,
                   help="with --bids: images no mini-NSD subject saw (default 4)")
    p.add_argument("--bids-sessions", default=None, help="with --bids: session labels, e.g. 01,02 (default 01; "
                                                        "'none': a dataset without sessions)")
    p.add_argument("--bids-runs", type=int, default=None, help="with --bids: runs per session (default 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="with --bids: showings of each image per session (default 3)")


def mini_nsd_spec(args):
    """The MiniNSDSpec that ``fmri2img mini-nsd`` builds from its arguments."""
    from fmri2img.mininsd.generate import MiniNSDSpec

    fields = {"seed": args.seed, "subjects": tuple(args.subjects) if args.subjects else None, "side": args.side,
              "n_images": args.n_images, "n_shared": args.n_shared, "n_per_subject": args.n_per_subject,
              "nan_voxels": args.nan_voxels, "n_sessions": args.n_sessions,
              "trials_per_session": args.trials_per_session,
              "volume_shape": tuple(args.volume) if args.volume else None, "hdf5_layout": args.hdf5_layout,
              "nsdgeneral_keep": args.nsdgeneral_keep,
              "sessions_per_subject": getattr(args, "sessions_per_subject", None),
              "timeseries_sessions": getattr(args, "timeseries_sessions", None)}
    return MiniNSDSpec.sized(**{k: v for k, v in fields.items() if v is not None},
                             **({"write_hdf5": False} if args.no_hdf5 else {}),
                             **({"imagery": True} if getattr(args, "imagery", False) else {}),
                             **({"timeseries": True} if getattr(args, "timeseries", False) else {}))


def bids_spec(args):
    """The BIDSSpec that ``fmri2img mini-nsd --bids`` builds from its arguments."""
    from fmri2img.mininsd.bids import BIDSSpec

    sessions = None
    if args.bids_sessions is not None:
        sessions = () if args.bids_sessions == "none" else tuple(s for s in args.bids_sessions.split(",") if s)
    fields = {"seed": args.seed, "reference_subject": args.reference, "n_shared": args.shared_images,
              "n_new": args.new_images, "sessions": sessions, "runs": args.bids_runs, "repeats": args.repeats}
    return BIDSSpec(**{k: v for k, v in fields.items() if v is not None})


def cmd_mini_nsd(args) -> int:
    from fmri2img.mininsd.generate import generate_mini_nsd

    def progress(line: str) -> None:
        print(f"mini-NSD: {line}", file=sys.stderr, flush=True)

    if args.dir is None and not (args.bids and args.bids_from):
        raise ValueError("give the directory to write mini-NSD to (fmri2img mini-nsd DIR), or --bids BIDS_DIR --from "
                         "MINI_NSD_DIR to write only the BIDS dataset from an existing mini-NSD")
    if args.bids_from and args.dir:
        raise ValueError("give DIR (a new mini-NSD) or --from MINI_NSD_DIR (an existing one), not both")
    if args.dir is not None:
        spec = mini_nsd_spec(args)
        manifest = generate_mini_nsd(args.dir, spec, progress=progress)
        print(f"mini-NSD written to {args.dir}")
        for subject, info in sorted(manifest.get("subjects", {}).items()):
            print(f"  subj{int(subject):02d}: {info.get('n_voxels')} nsdgeneral voxels, {info.get('n_train_images')} "
                  f"train / {info.get('n_test_images')} test images")
    if args.bids:
        _write_bids(args, progress)
    return 0


def _write_bids(args, progress) -> None:
    from fmri2img.mininsd.bids import generate_bids

    source = args.bids_from or args.dir
    if not (Path(source) / "mini_nsd.json").exists():
        raise ValueError(f"--from {source}: no mini-NSD there (no mini_nsd.json); write one with fmri2img mini-nsd DIR")
    truth = generate_bids(args.bids, source, bids_spec(args), progress=progress)
    shared = sum(1 for i in truth["images"] if not i["new"])
    print(f"BIDS dataset written to {args.bids}: sub-{truth['spec']['participant']}, {len(truth['runs'])} runs, "
          f"{truth['n_voxels']} visual voxels in a {'x'.join(map(str, truth['volume_shape']))} volume; "
          f"{shared} images shared with mini-NSD subject {truth['reference_subject']}, "
          f"{len(truth['images']) - shared} new (truth under sourcedata/)")


def cmd_ingest(args) -> int:
    from fmri2img.storage.neterrors import probe

    source_opts = dict(args.source_option)
    if args.anon:
        source_opts["anon"] = True
    # a source or store out of reach: one error line within seconds, before the heavy imports and the cluster
    probe(args.source, source_opts)
    probe(args.store, dict(args.store_option))
    from fmri2img.config import Config, ClusterConfig, IngestConfig, SourceConfig, StoreConfig, validate
    from fmri2img.pipeline.runner import run

    config = validate(Config(
        stages=["ingest"],
        store=StoreConfig(args.store, dict(args.store_option)),
        source=SourceConfig(args.source, source_opts, args.captions_url),
        cluster=ClusterConfig(spec=args.cluster or "local"),
        ingest=IngestConfig(subjects=list(args.subject), sessions=args.sessions, prefer=args.prefer,
                            nan_policy=args.nan_policy, stimuli=not args.no_stimuli, betas_scale=args.betas_scale,
                            experiment=args.experiment),
    ))
    from fmri2img.storage.outputs import Outputs

    with cluster_from(args, config.cluster, Outputs.beside(args.store).url) as client:
        results = run(config, client=client, progress=not args.no_progress)
    for subject, summary in results["ingest"].items():
        if summary.get("experiment") == "nsdimagery":
            print(f"{subject}: NSD-Imagery, {summary['n_betas']} betas ({summary['betas_per_task']}), "
                  f"{summary['n_voxels']} voxels, {summary['n_targets']} targets, "
                  f"{'written' if summary['betas_written'] else 'already done'} ({summary['seconds']:.1f} s)")
            continue
        print(f"{subject}: {summary['n_train']} train / {summary['n_test']} test images, "
              f"{summary['n_voxels']} voxels, {summary['sessions_written']} sessions written, "
              f"{summary['sessions_skipped']} already done ({summary['seconds']:.1f} s)")
    print(f"store: {args.store}")
    return 0


def cmd_demo(args) -> int:
    from fmri2img.demo.run import run_demo

    with cluster_from(args, outputs=str(Path(args.workdir) / "outputs")) as client:
        run_demo(args.workdir, client=client, fresh=args.fresh, progress=not args.no_progress)
    return 0


COMMANDS = {"demo": cmd_demo, "mini-nsd": cmd_mini_nsd, "ingest": cmd_ingest}
