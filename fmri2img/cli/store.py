"""The store and what it holds: ``fmri2img status``, ``unlock``, ``report`` and ``weights check``."""
from __future__ import annotations

import argparse
import json
import sys

from fmri2img.cli.runtime import int_list, kv


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``report``, ``weights``, ``status`` and ``unlock`` subcommands."""
    p = sub.add_parser("report", help="write each subject's report page (report/subjNN/index.html) and "
                                      "report/index.html comparing the runs across subjects")
    p.add_argument("store")
    p.add_argument("--subject", type=int_list, required=True,
                   help="subject(s), e.g. 1 or 1,2,5,7 (several: also a table comparing runs across subjects)")
    p.add_argument("--runs", default=None, help="comma-separated run names (default: every run in the store)")
    p.add_argument("--out", default=None, help="outputs URL (default: an 'outputs' folder beside the store)")
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--config", default=None,
                   help="the run's TOML configuration, shown in the report's provenance (credentials redacted)")
    p.add_argument("--store-option", type=kv, action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("weights", help="check the model weights a configuration needs")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    w = wsub.add_parser("check", help="per model: configured, present, loadable (--load)")
    w.add_argument("config")
    w.add_argument("--load", action="store_true", help="also load each file into its architecture (slow)")

    p = sub.add_parser("status", help="what is done and what remains in a store")
    p.add_argument("store")
    p.add_argument("--store-option", type=kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true",
                   help="read every chunk: name each corrupt, truncated or missing one (exit 1 when any)")
    p.add_argument("--repair", action="store_true",
                   help="with --verify: clear the completion records of the bad chunks' regions, so that "
                        "rerunning their stage rewrites them")

    p = sub.add_parser("unlock", help="remove the lock a killed run left in a store (after checking it is dead)")
    p.add_argument("store")
    p.add_argument("--store-option", type=kv, action="append", default=[], metavar="KEY=VALUE")


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
        _print_lock(store)
        return 0
    width = max(len(g) for g, _, _ in rows)
    print(f"{store.describe()}")
    _print_lock(store)
    for group, done, total in rows:
        state = "done" if total and done == total else f"{total - done} regions to do"
        print(f"  {group:<{width}}  {done:>5}/{total:<5} {state}")
    log = read_runlog(store)
    if log:
        last = log[-1]
        print(f"last run: stage {last.get('stage')} at {last.get('time')} ({last.get('seconds')} s)")
    return 0


def _print_lock(store) -> None:
    """Who holds the store's lock, and whether that run is alive (its lease renewed) or stale."""
    from fmri2img.storage import lock

    holder = lock.read_holder(store)
    if holder is not None:
        state = "stale: that run is most likely dead" if lock.is_stale(holder) else "held"
        print(f"locked ({state}) by {lock.describe_holder(holder)}")


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
    from fmri2img.report.build import NothingToReport, across_subjects, write_report
    from fmri2img.storage import identity
    from fmri2img.storage.outputs import Outputs
    from fmri2img.storage.store import Store

    store = Store(args.store, dict(args.store_option))
    found = identity.inspect(store)  # what the store is, as status says it (a Zarr v2 store, a file, ...)
    if not found.is_ours:
        raise identity.refusal(store, found)
    if found.kind == "empty":
        raise NothingToReport(f"{store.describe()}: empty (nothing ingested yet): nothing to report; check the store "
                              f"URL, or run the stages first (`fmri2img run CONFIG`)")
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


COMMANDS = {"status": cmd_status, "report": cmd_report, "weights": cmd_weights, "unlock": cmd_unlock}
