"""The ``fmri2img`` command.

    fmri2img demo [--workdir DIR] [--cluster SPEC]
    fmri2img mini-nsd DIR [--seed N] [--subjects 1,2] [--side 425] ...
    fmri2img ingest --source URL --store URL --subject N [--sessions 1-37]
    fmri2img glm --source URL --store URL --subject N [--sessions 1-3] [--preset glmsingle|nsd] [--export DIR]
    fmri2img glm --bids URL --participant LABEL --subject N --store URL [--session LABEL] [--confounds STRATEGY]
    fmri2img run CONFIG.toml [--stages ingest,...] [--cluster SPEC]
    fmri2img status STORE [--verify [--repair]]
    fmri2img unlock STORE
    fmri2img decode STORE --subject N --betas URL [--trials 1-750 | --trials-file CSV] [--runs ...] [--out URL]
    fmri2img align STORE --subject NEW --reference REF [--sessions 1[-k]] [--targets encoding|shared|hybrid]
    fmri2img decode STORE --subject NEW --via align-to-subjREF      (a BIDS participant's own trials)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from fmri2img.cli import clinical, data, glm, store
from fmri2img.cli.runtime import (add_cluster_options, cluster_from, exit_promptly, os_error_line, probe_configured,
                                  stage_lines)

logger = logging.getLogger("fmri2img")


def build_parser() -> argparse.ArgumentParser:
    """The ``fmri2img`` parser: one subcommand per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="fmri2img", description="Decode fMRI into images (Brain-Diffuser) "
                                     "on chunked Zarr stores and Dask clusters.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    data.add_parsers(sub)
    glm.add_parsers(sub)
    p = sub.add_parser("run", help="run the stages of a TOML configuration")
    p.add_argument("config")
    p.add_argument("--stages", default=None, help="comma-separated subset, e.g. ingest")
    add_cluster_options(p)

    store.add_parsers(sub)
    clinical.add_parsers(sub)
    return parser


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


COMMANDS = {**data.COMMANDS, **glm.COMMANDS, "run": cmd_run, **store.COMMANDS, **clinical.COMMANDS}


def _secrets_of_args(args) -> list[str]:
    from fmri2img.storage.secrets import secrets_of

    out: list[str] = []
    for name in ("store_option", "source_option", "cluster_option", "bids_option"):
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
