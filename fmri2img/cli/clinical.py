"""The clinician's path on the command line: ``fmri2img decode`` and ``fmri2img align``.

Their parsers and commands; :mod:`fmri2img.cli.main` dispatches to them and
:mod:`fmri2img.cli.runtime` has the argument types and the cluster they share.
"""
from __future__ import annotations

import argparse

from fmri2img.cli.runtime import add_lock_option, betas_scale, cluster_from, kv


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``decode`` and ``align`` subcommands."""
    p = sub.add_parser("decode", help="apply a fitted subject's models to new betas (a session file or masked "
                                      "voxels): reconstructions, metrics when the images are known, a page")
    p.add_argument("store", nargs="?", default=None, help="project store URL (default: [store] of --config)")
    p.add_argument("--subject", type=int, default=None, help="the fitted subject whose models decode the betas")
    p.add_argument("--betas", default=None,
                   help="a session file in the subject's func1pt8mm space (.nii.gz/.nii/.hdf5/.h5, NSD's layout) "
                        "or its masked voxels, trials × voxels (.npy/.zarr); without it, --via decodes a BIDS "
                        "participant's own trials from the store (those no fit used)")
    p.add_argument("--trials", default=None, help="1-based trials to decode, e.g. 1-750 or 1,3,5-7 (default: all)")
    p.add_argument("--trials-file", default=None,
                   help="CSV with columns trial (1-based) and optionally image (0-based NSD-73k id: metrics)")
    p.add_argument("--runs", default=None,
                   help="comma-separated runs, e.g. brain-diffuser,pixels (default: every run reconstructed for "
                        "the subject, with the settings the store recorded; with --config: [reconstruct.runs])")
    p.add_argument("--out", default=None, help="outputs URL for PNGs and the page (default: 'outputs' beside "
                                              "the store)")
    p.add_argument("--name", default=None, help="name of decoded/<name> (default: the input's file name)")
    p.add_argument("--betas-scale", type=betas_scale, default=None,
                   help="'nsd' (NSD's int16 × 300; default) or a number the values are divided by (arrays: "
                        "default 1, percent signal change)")
    p.add_argument("--mask", default=None, help="the subject's nsdgeneral.nii.gz (default: from the ingest source)")
    p.add_argument("--calibration", choices=("loo", "none"), default=None,
                   help="'loo' (non-transductive, default) or 'none'")
    p.add_argument("--nets", default=None, help="evaluation networks, comma-separated (default: all)")
    p.add_argument("--imagery", action="store_true",
                   help="decode the subject's ingested NSD-Imagery betas (ingest --experiment nsdimagery) instead "
                        "of --betas; metrics per task against the imagery targets")
    p.add_argument("--tasks", default=None, help="with --imagery: tasks to decode, e.g. vision,imagery (default: "
                                                "vision, imagery, attention)")
    p.add_argument("--config", default=None, help="a TOML configuration with a [decode] section")
    p.add_argument("--via", default=None, help="align-to-subjMM: --subject is a new subject aligned to subject MM "
                                             "(fmri2img align); MM's models and runs decode its scans")
    p.add_argument("--betas-option", type=kv, action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option of the betas, trials and mask URLs")
    p.add_argument("--store-option", type=kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cluster", default=None, help="run the tasks on a cluster ('local', 'slurm', an address ...: "
                                                  "as for ingest); default: in this process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(cluster_option=[], workers=None)
    add_lock_option(p)

    p = sub.add_parser("align", help="a new subject from a few sessions: ridge alignment of its voxels to a fitted "
                                     "reference subject's (models/subjNN/align-to-subjMM); decode with --via")
    p.add_argument("store", help="project store URL (both subjects ingested, the reference fitted)")
    p.add_argument("--subject", type=int, required=True, help="the new subject")
    p.add_argument("--reference", type=int, required=True, help="the fitted reference subject")
    p.add_argument("--sessions", default=None, help="the new subject's sessions to align on, e.g. 1 or 1-3 (default: "
                                                   "1; a BIDS participant from fmri2img glm --bids: all)")
    p.add_argument("--targets", choices=("encoding", "shared", "hybrid"), default=None,
                   help="alignment targets: the reference's encoding-model pseudo-responses to every image "
                        "(default), its own responses to the images both saw, or both")
    p.add_argument("--encoding-features", default=None,
                   help="feature sets of the reference's encoding model, comma-separated (default: all it has "
                        "models for)")
    p.add_argument("--store-option", type=kv, action="append", default=[], metavar="KEY=VALUE")
    add_lock_option(p)


def cmd_decode(args) -> int:
    from fmri2img import config as cfgmod
    from fmri2img.pipeline.clinical.configured import decode_config, decoder
    from fmri2img.storage import identity, lock
    from fmri2img.storage.outputs import Outputs

    config = cfgmod.load(args.config) if args.config else None
    if args.store is None and config is None:
        raise ValueError("give the store (fmri2img decode STORE ...) or --config with a [store] section")
    kwargs = decode_config(config, args.store, subject=args.subject, betas=args.betas, trials=args.trials,
                           trials_file=args.trials_file, runs=args.runs.split(",") if args.runs else None,
                           name=args.name, betas_scale=args.betas_scale, mask=args.mask,
                           calibration=args.calibration, nets=args.nets.split(",") if args.nets else None,
                           storage_options=dict(args.betas_option) or None, via=args.via,
                           imagery=args.imagery or None, tasks=args.tasks.split(",") if args.tasks else None)
    store = kwargs.pop("store")
    run_decode, kwargs = decoder(kwargs)
    if args.store_option:
        store = type(store)(store.url, dict(args.store_option))
    out = args.out or (config.outputs.url if config else None)
    outputs = Outputs(out) if out else Outputs.beside(store.url, dict(store.storage_options))
    identity.claim(store)
    with lock.held(store, take_over_stale=args.take_over_stale_lock):
        if args.cluster:
            with cluster_from(args, config.cluster if config else None, outputs.url) as client:
                summary = run_decode(store, outputs=outputs, client=client, progress=not args.no_progress, **kwargs)
        else:
            summary = run_decode(store, outputs=outputs, progress=not args.no_progress, **kwargs)
    whose = f"subject {summary['subject']}'s" if not summary.get("via") else \
        f"subject {summary['subject']} via {summary['via']}:"
    print(f"decoded {summary['trials']} trials of {summary['input']} with {whose} models "
          f"(calibration: {summary['calibration']}) into {summary['group']}")
    if summary["random_weights"]:
        print("random-weight models: these pictures test the pipeline; they are not decoded images")
    for key, means in summary["metrics"].items():
        print(f"  {key}: " + ", ".join(f"{m} {v:.3f}" for m, v in means.items() if v is not None))
    if summary["page"]:
        print(f"page: {summary['page']}")
    return 0


def cmd_align(args) -> int:
    from fmri2img.pipeline.clinical.align import DEFAULT_TARGETS, align
    from fmri2img.storage import identity, lock
    from fmri2img.storage.store import Store

    store = Store(args.store, dict(args.store_option))
    identity.claim(store)
    features = [f for f in (args.encoding_features or "").split(",") if f]
    with lock.held(store, take_over_stale=args.take_over_stale_lock):
        s = align(store, args.subject, args.reference, args.sessions, targets=args.targets or DEFAULT_TARGETS,
                  encoding_features=features or None)
    print(f"aligned subject {s['subject']} (sessions {s['sessions']}, {s['n_images']} images, {s['n_voxels']} voxels) "
          f"to subject {s['reference']} ({s['n_ref_voxels']} voxels; targets: {s['targets']}) in {s['seconds']:.1f} s "
          f"→ {s['group']}")
    held = s["held_out"]
    if "voxel_r" in held:
        print(f"  held out: {held['n_test_images']} test images, aligned vs subject {s['reference']}'s responses: "
              f"voxel r {held['voxel_r']:.3f}, two-way identification {held['two_way_identification']:.3f}")
    from fmri2img.pipeline.clinical.participant import is_bids

    own = "" if is_bids(store, s["subject"]) else " --betas ..."  # a BIDS participant's other trials are in the store
    print(f"  decode its scans: fmri2img decode {store.url} --subject {s['subject']} --via align-to-subj"
          f"{s['reference']:02d}{own}")
    return 0


COMMANDS = {"decode": cmd_decode, "align": cmd_align}
