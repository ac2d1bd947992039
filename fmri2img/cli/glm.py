"""From the scanner's time series to betas on the command line: ``fmri2img glm``."""
from __future__ import annotations

import argparse

from fmri2img.cli.runtime import add_cluster_options, cluster_from, kv


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``glm`` subcommand."""
    p = sub.add_parser("glm", help="single-trial betas from time series (GLMsingle's types A-D as Dask tasks): NSD's "
                                   "time-series layout → subjects/subjNN/glm/sessionSS and subjects/subjNN/betas")
    p.add_argument("--source", default=None, help="NSD root with nsddata_timeseries/ (e.g. s3://natural-scenes-dataset "
                                                 "or a mini-NSD directory)")
    p.add_argument("--store", default=None, help="project store URL")
    p.add_argument("--subject", type=int, default=None, help="the store subject (NSD: its number)")
    p.add_argument("--sessions", default=None, help="e.g. 1-3 (default: every session with time series)")
    p.add_argument("--preset", choices=("glmsingle", "nsd"), default=None,
                   help="'glmsingle' (GLMsingle's defaults; default) or 'nsd' (NSD's own GLM)")
    p.add_argument("--hrf-library", default=None,
                   help="a TSV of HRFs (one column an HRF, one row a TR from the onset; default GLMsingle's 20)")
    p.add_argument("--model", choices=("fithrf", "fithrf_glmdenoise", "fithrf_glmdenoise_rr"), default=None,
                   help="the model whose betas become subjects/subjNN/betas (default fithrf_glmdenoise_rr, type D)")
    p.add_argument("--block-size", type=int, default=None,
                   help="voxels per task (default 4096: about 0.5 GB per worker for an NSD session)")
    p.add_argument("--mask", default=None, help="brain mask (default: the subject's brainmask.nii.gz)")
    p.add_argument("--space", default=None, help="NSD: func1pt8mm (default) or func1mm")
    p.add_argument("--export", default=None,
                   help="also write NSD-layout betas_sessionSS.nii.gz and .hdf5 (int16 × 300) under this directory")
    p.add_argument("--keep-timeseries", action="store_true",
                   help="keep the staged time series in the store (default: deleted when a session is done)")
    p.add_argument("--bids", default=None, help="a BIDS dataset with fMRIPrep derivatives (a folder or any URL, e.g. "
                                               "s3://openneuro.org/ds000001) instead of --source")
    p.add_argument("--derivatives", default=None, help="BIDS: fMRIPrep's output (default <bids>/derivatives/fmriprep)")
    p.add_argument("--participant", default=None, help="BIDS: the participant label (e.g. 01); goes to --subject")
    p.add_argument("--session", default=None, help="BIDS: one session label (default: every session)")
    p.add_argument("--task", default=None, help="BIDS: the task label (needed when the participant has several)")
    p.add_argument("--stim-column", default=None,
                   help="BIDS: the events column naming the stimulus: files under /stimuli (default stim_file; "
                        "matched to the store's NSD images by their pixels), 0-based NSD ids, or labels")
    p.add_argument("--confounds", default=None,
                   help="BIDS: fMRIPrep confounds as extra regressors: none (default), simple, compcor, scrubbing, "
                        "or tokens such as motion=basic+high_pass+wm_csf")
    p.add_argument("--onsets", choices=("round", "resample"), default=None,
                   help="BIDS: onsets off the TR grid to the nearest volume (default) or resampled as NSD did")
    p.add_argument("--bids-option", type=kv, action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option of the BIDS dataset and derivatives URLs")
    p.add_argument("--config", default=None, help="a TOML configuration with a [glm] section (flags override it)")
    p.add_argument("--source-option", type=kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--store-option", type=kv, action="append", default=[], metavar="KEY=VALUE")
    add_cluster_options(p)


def _config(args):
    """The configuration the command runs: ``--config`` (or defaults) with the flags applied."""
    from fmri2img import config as cfgmod

    config = cfgmod.load(args.config) if args.config else cfgmod.Config()
    if args.store:
        config.store = cfgmod.StoreConfig(args.store, dict(args.store_option))
    if args.source:
        config.source = cfgmod.SourceConfig(args.source, dict(args.source_option))
    g = config.glm
    if args.subject is not None:
        g.subjects = [args.subject]
    for key in ("sessions", "preset", "hrf_library", "model", "block_size", "mask", "space", "export", "bids",
                "derivatives", "participant", "session", "task", "stim_column", "confounds", "onsets"):
        if getattr(args, key) is not None:
            setattr(g, key, getattr(args, key))
    if args.bids_option:
        g.storage_options = dict(args.bids_option)
    g.keep_timeseries = g.keep_timeseries or args.keep_timeseries
    config.stages = ["glm"]
    if args.bids and args.source:
        raise ValueError("give --bids (a BIDS dataset) or --source (NSD's time-series layout), not both")
    if not args.config and not (args.store and (args.source or args.bids) and args.subject is not None):
        raise ValueError("give --source (or --bids with --participant), --store and --subject (or --config with "
                         "[store], [source] and [glm])")
    return cfgmod.validate(config)


def _print_bids(subject: str, summary: dict) -> None:
    for name, s in summary["glm"].items():
        state = "already done" if s["skipped"] else f"fitted in {s['seconds']:.1f} s"
        print(f"{subject} {name}: {s['trials']} trials, {s['voxels']} voxels, {s['runs']} runs, pcnum {s['pcnum']}, "
              f"{state} → {s['group']}")
    b = summary["betas"]
    print(f"{subject}: sub-{summary['participant']}'s betas ({summary['model']}) → {b['group']}: {b['trials']} "
          f"trials of sessions {b['sessions']}, {b['voxels']} voxels (own space); {b['stimuli']} stimuli "
          f"({b['kind']}), {b['matched']} of them NSD images of the store")


def cmd_glm(args) -> int:
    from fmri2img.pipeline.runner import run
    from fmri2img.storage import secrets
    from fmri2img.storage.neterrors import probe

    config = _config(args)
    bids = config.glm.bids
    probe(bids or config.source.url, dict(config.glm.storage_options if bids else config.source.storage_options))
    probe(config.store.url, dict(config.store.storage_options))
    secrets.add_secrets(secrets.secrets_of(config.source.storage_options) +
                        secrets.secrets_of(config.store.storage_options) +
                        secrets.secrets_of(config.glm.storage_options))
    from fmri2img.storage.outputs import Outputs

    with cluster_from(args, config.cluster, Outputs.beside(config.store.url).url) as client:
        results = run(config, client=client, progress=not args.no_progress)
    for subject, summary in results["glm"].items():
        if "betas" in summary:  # a BIDS participant
            _print_bids(subject, summary)
            continue
        for name, s in summary["glm"].items():
            state = "already done" if s["skipped"] else f"fitted in {s['seconds']:.1f} s"
            print(f"{subject} {name}: {s['trials']} trials, {s['voxels']} voxels, {s['runs']} runs, "
                  f"pcnum {s['pcnum']}, {state} → {s['group']}")
        ing = summary["ingest"]
        print(f"{subject}: betas ({summary['model']}) → subjects/{subject}/betas: {ing['n_train']} train / "
              f"{ing['n_test']} test images, {ing['n_voxels']} voxels")
        for label, path in summary["exported"].items():
            print(f"  exported {label}: {path}")
    print(f"store: {config.store.url}")
    return 0


COMMANDS = {"glm": cmd_glm}
