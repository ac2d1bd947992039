"""The ``fmri2img`` command.

    fmri2img demo [--workdir DIR] [--cluster SPEC]
    fmri2img mini-nsd DIR [--seed N] [--subjects 1,2] [--side 425] ...
    fmri2img ingest --source URL --store URL --subject N [--sessions 1-37]
    fmri2img run CONFIG.toml [--stages ingest,...] [--cluster SPEC]
    fmri2img status STORE [--verify [--repair]]
    fmri2img unlock STORE
    fmri2img decode STORE --subject N --betas URL [--trials 1-750 | --trials-file CSV] [--runs ...] [--out URL]
    fmri2img align STORE --subject NEW --reference REF --sessions 1[-k] [--targets encoding|shared|hybrid]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from fmri2img.cli_clinical import add_clinical_parsers, cmd_align, cmd_decode
from fmri2img.cli_runtime import cluster_from, exit_promptly, os_error_line, probe_configured, stage_lines

logger = logging.getLogger("fmri2img")


def _kv(text: str) -> tuple[str, object]:
    """``key=value`` → (key, parsed value) for --source-option/--store-option."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    low = value.lower()
    parsed: object = value
    if low in ("true", "false"):
        parsed = low == "true"
    else:
        try:
            parsed = int(value)
        except ValueError:
            pass
    return key, parsed


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,5,7, got {text!r}") from None


def _sessions_per_subject(text: str) -> dict[int, int]:
    try:
        return {int(s): int(k) for s, _, k in (part.partition(":") for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SUBJECT:SESSIONS pairs like 3:1,4:2, got {text!r}") from None


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=None,
                   help="'local' (default: one worker per core), 'slurm', 'pbs', 'kubernetes', or a scheduler "
                        "address tcp://HOST:PORT / tls://HOST:PORT")
    from fmri2img.cluster.connect import options_help

    p.add_argument("--cluster-option", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the cluster kind, e.g. cores=8 gpus=1 maximum=20 (overrides [cluster.options]; "
                        "README 'From laptop to cluster' says what each means). " + options_help())
    p.add_argument("--workers", type=int, default=None, help="local cluster: number of worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmri2img", description="Decode fMRI into images (Brain-Diffuser) "
                                     "on chunked Zarr stores and Dask clusters.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate mini-NSD and run every stage on it (minutes, no downloads)")
    p.add_argument("--workdir", default="./runs/demo", help="where mini-NSD, the store and the report go")
    p.add_argument("--fresh", action="store_true", help="delete the workdir's store first")
    _add_cluster(p)

    p = sub.add_parser("mini-nsd", help="write a small dataset in the exact NSD layout and formats")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subjects", type=_int_list, default=None, help="subjects whose fMRI is written, e.g. 1,2")
    p.add_argument("--side", type=int, default=None, help="stimulus side in pixels (NSD: 425)")
    p.add_argument("--n-images", type=int, default=None, help="distinct stimuli")
    p.add_argument("--n-shared", type=int, default=None, help="shared test images")
    p.add_argument("--n-per-subject", type=int, default=None, help="images per subject (incl. shared)")
    p.add_argument("--n-sessions", type=int, default=None, help="sessions per subject")
    p.add_argument("--trials-per-session", type=int, default=None, help="trials per session (NSD: 750)")
    p.add_argument("--volume", type=_int_list, default=None,
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
    p.add_argument("--sessions-per-subject", type=_sessions_per_subject, default=None, metavar="S:K,...",
                   help="subjects scanned for fewer sessions (their first K), e.g. 3:1 (a new person, one session)")

    p = sub.add_parser("ingest", help="NSD files (any URL) → the project store, one task per session")
    p.add_argument("--source", required=True, help="NSD root, e.g. s3://natural-scenes-dataset or ./mini-nsd")
    p.add_argument("--store", required=True, help="project store URL, e.g. ./runs/x/store.zarr or s3://bucket/x.zarr")
    p.add_argument("--subject", type=_int_list, required=True, help="subject(s), e.g. 1 or 1,2,5,7")
    p.add_argument("--sessions", default="public",
                   help="sessions, e.g. 1-37 or 1,3,5-7; default 'public': 1–37 clipped to the design")
    p.add_argument("--prefer", choices=["hdf5", "nii.gz"], default="hdf5",
                   help="betas from the .hdf5 twin (only the masked voxels' bytes; default) or the .nii.gz stream")
    p.add_argument("--betas-scale", type=_betas_scale, default="nsd",
                   help="units of the betas files: 'nsd' (NSD's int16 × 300; default) or a number the values are "
                        "divided by (1: floats in percent signal change, 300: floats × 300)")
    p.add_argument("--nan-policy", choices=["error", "zero"], default="error")
    p.add_argument("--experiment", choices=["nsd", "nsdimagery"], default="nsd",
                   help="'nsd' (default) or 'nsdimagery': NSD-Imagery's betas, trial labels and targets "
                        "→ subjects/subjNN/imagery and imagery/targets (--sessions does not apply)")
    p.add_argument("--no-stimuli", action="store_true", help="skip copying stimuli and captions")
    p.add_argument("--captions-url", default="", help="COCO_73k_annots_curated.npy (default: at the source root)")
    p.add_argument("--anon", action="store_true", help="anonymous access to the source (public buckets)")
    p.add_argument("--source-option", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--store-option", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    _add_cluster(p)

    p = sub.add_parser("run", help="run the stages of a TOML configuration")
    p.add_argument("config")
    p.add_argument("--stages", default=None, help="comma-separated subset, e.g. ingest")
    _add_cluster(p)

    p = sub.add_parser("report", help="write each subject's report page (report/subjNN/index.html) and "
                                      "report/index.html comparing the runs across subjects")
    p.add_argument("store")
    p.add_argument("--subject", type=_int_list, required=True,
                   help="subject(s), e.g. 1 or 1,2,5,7 (several: also a table comparing runs across subjects)")
    p.add_argument("--runs", default=None, help="comma-separated run names (default: every run in the store)")
    p.add_argument("--out", default=None, help="outputs URL (default: an 'outputs' folder beside the store)")
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--config", default=None,
                   help="the run's TOML configuration, shown in the report's provenance (credentials redacted)")
    p.add_argument("--store-option", type=_kv, action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("weights", help="check the model weights a configuration needs")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    w = wsub.add_parser("check", help="per model: configured, present, loadable (--load)")
    w.add_argument("config")
    w.add_argument("--load", action="store_true", help="also load each file into its architecture (slow)")

    p = sub.add_parser("status", help="what is done and what remains in a store")
    p.add_argument("store")
    p.add_argument("--store-option", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true",
                   help="read every chunk: name each corrupt, truncated or missing one (exit 1 when any)")
    p.add_argument("--repair", action="store_true",
                   help="with --verify: clear the completion records of the bad chunks' regions, so that "
                        "rerunning their stage rewrites them")

    add_clinical_parsers(sub)

    p = sub.add_parser("unlock", help="remove the lock a killed run left in a store (after checking it is dead)")
    p.add_argument("store")
    p.add_argument("--store-option", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    return parser


def _betas_scale(text: str) -> str | float:
    if text == "nsd":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'nsd' or a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def mini_nsd_spec(args):
    """The MiniNSDSpec that ``fmri2img mini-nsd`` builds from its arguments."""
    from fmri2img.mininsd.generate import MiniNSDSpec

    fields = {"seed": args.seed, "subjects": tuple(args.subjects) if args.subjects else None, "side": args.side,
              "n_images": args.n_images, "n_shared": args.n_shared, "n_per_subject": args.n_per_subject,
              "nan_voxels": args.nan_voxels, "n_sessions": args.n_sessions,
              "trials_per_session": args.trials_per_session,
              "volume_shape": tuple(args.volume) if args.volume else None, "hdf5_layout": args.hdf5_layout,
              "nsdgeneral_keep": args.nsdgeneral_keep,
              "sessions_per_subject": getattr(args, "sessions_per_subject", None)}
    return MiniNSDSpec.sized(**{k: v for k, v in fields.items() if v is not None},
                             **({"write_hdf5": False} if args.no_hdf5 else {}),
                             **({"imagery": True} if getattr(args, "imagery", False) else {}))


def cmd_mini_nsd(args) -> int:
    from fmri2img.mininsd.generate import generate_mini_nsd

    spec = mini_nsd_spec(args)
    manifest = generate_mini_nsd(args.dir, spec, progress=lambda line: print(f"mini-NSD: {line}", file=sys.stderr,
                                                                              flush=True))
    print(f"mini-NSD written to {args.dir}")
    for subject, info in sorted(manifest.get("subjects", {}).items()):
        print(f"  subj{int(subject):02d}: {info.get('n_voxels')} nsdgeneral voxels, {info.get('n_train_images')} train"
              f" / {info.get('n_test_images')} test images")
    return 0


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


def cmd_run(args) -> int:
    probe_configured(args.config, args.stages)  # before the heavy imports of the configuration and the stages
    from fmri2img import config as cfgmod
    from fmri2img.pipeline.runner import run
    from fmri2img.storage import secrets

    config = cfgmod.load(args.config)
    secrets.add_secrets(sum((secrets.secrets_of(section.storage_options) for section in
                               (config.store, config.source, config.outputs, config.weights)), []))
    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    with cluster_from(args, config.cluster, config.outputs.url) as client:
        results = run(config, stages=stages, client=client, progress=not args.no_progress)
    print(json.dumps(results, indent=1, default=str))
    return 0


def cmd_status(args) -> int:
    from fmri2img.pipeline.runner import read_runlog, status
    from fmri2img.storage import identity
    from fmri2img.storage.store import Store

    store = Store(args.store, dict(args.store_option))
    found = identity.inspect(store)
    if not found.is_ours:
        raise identity.refusal(store, found)
    rows = status(store)
    if args.verify:
        return _verify(store, rows, args)
    if args.json:
        print(json.dumps([{"group": g, "done": d, "total": t} for g, d, t in rows]))
        return 0
    if not rows:
        print(f"{store.describe()}: empty (nothing ingested yet)")
        return 0
    width = max(len(g) for g, _, _ in rows)
    print(f"{store.describe()}")
    for group, done, total in rows:
        state = "done" if total and done == total else f"{total - done} regions to do"
        print(f"  {group:<{width}}  {done:>5}/{total:<5} {state}")
    log = read_runlog(store)
    if log:
        last = log[-1]
        print(f"last run: stage {last.get('stage')} at {last.get('time')} ({last.get('seconds')} s)")
    return 0


def _verify(store, rows, args) -> int:
    from fmri2img.storage import verify

    bad = verify.verify_store(store, [g for g, _, _ in rows])
    if args.json:
        print(json.dumps([b.__dict__ for b in bad]))
    for b in bad:
        print(f"BAD {b.line()}")
    if not bad:
        if not args.json:
            print(f"{store.describe()}: every chunk of {len(rows)} groups reads back and matches its checksum")
        return 0
    stages = sorted({verify.stage_of(b.group) for b in bad})
    if args.repair:
        from fmri2img.storage import lock

        with lock.held(store):
            cleared = verify.forget_bad(store, bad)
        for group, what in cleared.items():
            print(f"cleared {group}: {', '.join(what)}", file=sys.stderr)
        print(f"{len(bad)} bad chunk(s); their records are cleared: rerun the {', '.join(stages)} stage(s) "
              f"(the same `fmri2img run CONFIG` or `fmri2img ingest ...` command as before) to rewrite them",
              file=sys.stderr)
    else:
        print(f"{len(bad)} bad chunk(s). Fix: `fmri2img status {args.store} --verify --repair` clears their "
              f"completion records, then rerun the {', '.join(stages)} stage(s) (the same `fmri2img run CONFIG` "
              f"or `fmri2img ingest ...` command as before) to rewrite exactly those regions", file=sys.stderr)
    return 1


def cmd_report(args) -> int:
    """Each subject's report; a subject with nothing reconstructed gets one line and the others go on."""
    from fmri2img import config as cfgmod
    from fmri2img.pipeline.report import NothingToReport, across_subjects, write_report
    from fmri2img.storage.outputs import Outputs
    from fmri2img.storage.store import Store

    store = Store(args.store, dict(args.store_option))
    outputs = Outputs(args.out) if args.out else Outputs.beside(args.store, dict(args.store_option))
    runs = args.runs.split(",") if args.runs else None
    config = cfgmod.load(args.config) if args.config else None
    written = 0
    for subject in args.subject:
        try:
            result = write_report(store, subject, outputs, runs, n_images=args.n_images, config=config,
                                  index_link=len(args.subject) > 1)
        except NothingToReport as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        written += 1
        print(f"subject {subject}\n{result['table']}")
        for name, url in result["files"].items():
            print(f"  {name}: {url}")
    if written and len(args.subject) > 1:
        combined = across_subjects(store, args.subject, outputs, runs, config=config)
        print(f"\nacross subjects\n{combined['table']}  page: {combined['html']}  table: {combined['file']}")
    if not written:
        print(f"error: no report written: none of subject(s) {', '.join(map(str, args.subject))} has finished "
              "reconstructions (see above)", file=sys.stderr)
        return 1
    return 0


def cmd_weights(args) -> int:
    from fmri2img import config as cfgmod
    from fmri2img.pipeline.weights_check import check

    rows = check(cfgmod.load(args.config), load=args.load)
    width = max(len(r.model) for r in rows)
    for r in rows:
        mark = "ok " if r.ok else "!! "
        print(f"{mark}{r.model:<{width}}  {r.state:<15} {r.url}  {r.detail}".rstrip())
    bad = [r.model for r in rows if not r.ok]
    demo = [r.model for r in rows if r.state == "demo model"]
    if demo:
        print(f"\n{len(demo)} demo model(s), not real weights: {', '.join(demo)} (seeded random weights: their "
              f"outputs test the pipeline; for real results set their paths in [weights], README 'Configuration')")
    if bad:
        print(f"\n{len(bad)} model(s) not ready: {', '.join(bad)} (nothing is downloaded at run time: set their "
              f"paths in [weights], README 'Configuration')")
    return 1 if bad else 0


def cmd_demo(args) -> int:
    from fmri2img.demo import run_demo

    with cluster_from(args, outputs=str(Path(args.workdir) / "outputs")) as client:
        run_demo(args.workdir, client=client, fresh=args.fresh, progress=not args.no_progress)
    return 0


def cmd_unlock(args) -> int:
    from fmri2img.storage import identity, lock
    from fmri2img.storage.store import Store

    store = Store(args.store, dict(args.store_option))
    identity.check(store)
    holder = lock.unlock(store)
    if holder is None:
        print(f"{store.describe()} was not locked")
    else:
        print(f"removed the lock of {store.describe()} held by {lock.describe_holder(holder)}")
    return 0


COMMANDS = {"demo": cmd_demo, "mini-nsd": cmd_mini_nsd, "ingest": cmd_ingest, "run": cmd_run,
            "status": cmd_status, "report": cmd_report, "weights": cmd_weights, "unlock": cmd_unlock,
            "decode": cmd_decode, "align": cmd_align}


def _secrets_of_args(args) -> list[str]:
    from fmri2img.storage.secrets import secrets_of

    out: list[str] = []
    for name in ("store_option", "source_option", "cluster_option"):
        out += secrets_of(dict(getattr(args, name, None) or []))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the ``fmri2img`` command line ``argv`` (default: this process's); return the exit code."""
    try:
        return _main(argv)
    finally:
        stage_lines(False)  # called in-process (tests, notebooks): leave logging as it was


def _main(argv: list[str] | None) -> int:
    from fmri2img.storage import secrets

    args = build_parser().parse_args(argv)
    # every record of every logger is redacted, at every verbosity (botocore's -vv DEBUG lines included)
    secrets.install(_secrets_of_args(args))
    # default: warnings, progress bars and one short line per stage; -v: our INFO log; -vv: everyone's DEBUG
    logging.basicConfig(level=logging.DEBUG if args.verbose >= 2 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("fmri2img").setLevel({0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG))
    stage_lines(not args.verbose)
    if args.verbose < 2:  # distributed configures its own loggers at import (workers inherit the env)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for name in [n for n in logging.root.manager.loggerDict if n.startswith("distributed")] + ["distributed"]:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: finished regions are recorded; run the same command again to resume", file=sys.stderr)
        if argv is None:
            exit_promptly(130)
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        if args.verbose >= 2:  # the traceback, redacted like every other line
            import traceback

            print(secrets.redact_text(traceback.format_exc()), file=sys.stderr, end="")
        raw_os = isinstance(exc, OSError) and exc.errno is not None  # ours carry their own message
        line = os_error_line(exc) if raw_os else str(exc)
        print(f"error: {secrets.redact_text(line)}", file=sys.stderr)
        if argv is None:  # this process's own command line: it ends promptly, whatever still runs
            exit_promptly(2)
        return 2
    except Exception as exc:  # a storage service out of reach: one line; anything else is a bug, shown whole
        from fmri2img.storage.neterrors import unreachable_line

        line = unreachable_line(exc)
        if line is None:
            raise
        print(f"error: {secrets.redact_text(line)}", file=sys.stderr)
        if argv is None:
            exit_promptly(2)
        return 2


if __name__ == "__main__":
    sys.exit(main())
