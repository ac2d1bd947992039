"""The report's provenance block: configuration (credentials redacted), source, versions, seeds, commit.

Everything here goes into a file a person may share, so every value passes through
:func:`fmri2img.storage.urls.redact`, and :func:`scrub` removes the raw credential values of
the configuration from any text as a last line of defence.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from fmri2img.storage import secrets
from fmri2img.pipeline.reconstruct import recon_group
from fmri2img.report.data import DataSource, Part
from fmri2img.storage import schema
from fmri2img.storage.store import Store


def git_commit(timeout: float = 5.0) -> str:
    """The git commit of the fmri2img checkout this code runs from, or ``"unknown"``.

    Only a checkout whose top folder holds both ``fmri2img/`` and ``.git`` counts (an installed
    package inside some other repository does not); never raises.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"


def redacted_config(config: Any) -> dict | None:
    """A configuration (``Config`` or mapping) with every credential replaced by ``***``."""
    if config is None:
        return None
    tree = config.redacted() if hasattr(config, "redacted") else dict(config)
    return secrets.redact(json.loads(json.dumps(tree, default=str)))


def secrets_in(config: Any) -> list[str]:
    """The raw credential values of ``config`` (every ``storage_options`` table and URL password)."""
    from fmri2img.storage.secrets import MIN_SECRET_LENGTH, secrets_of

    if config is None:
        return []
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    found = secrets_of(tree)  # values under secret-looking keys, at any depth

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            found.extend(re.findall(r"://[^/@:\s]+:([^/@\s]+)@", value))  # user:PASSWORD@ in URLs

    walk(tree)
    return sorted({s for s in found if len(s) >= MIN_SECRET_LENGTH and s != secrets.REDACTED}, key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every value of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _versions(attrs: Mapping[str, Any]) -> dict:
    try:
        return json.loads(attrs.get("library_versions") or "{}")
    except ValueError:
        return {}


def run_records(store: Store, subject: int, parts: Sequence[Part]) -> list[dict]:
    """Per run: the seed, the run's settings (redacted), config hash and versions recorded with stage 1."""
    out, seen = [], set()
    for p in parts:
        if p.run in seen:
            continue
        seen.add(p.run)
        attrs = store.group(recon_group(subject, p.run, p.part)).attrs
        try:
            spec = json.loads(attrs.get("run") or "{}")
        except ValueError:
            spec = {}
        out.append({"run": p.run, "seed": spec.get("seed"), "settings": secrets.redact(spec),
                    "config_hash": attrs.get("config_hash", ""), "versions": _versions(attrs)})
    return out


def provenance(store: Store, subject: int, parts: Sequence[Part], source: DataSource,
               config: Any = None) -> dict:
    """Everything the provenance block shows (plain data, already redacted)."""
    import fmri2img

    cfg = redacted_config(config)
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "fmri2img_version": fmri2img.__version__,
        "git_commit": git_commit(),
        "store": str(secrets.redact(store.url)),
        "source": source.url or "not recorded",
        "data": source.kind,
        "n_test_images": source.n_test,
        "config_seed": None if cfg is None else cfg.get("seed"),
        "config": cfg,
        "config_hash": schema.config_hash(cfg) if cfg else "",
        "runs": run_records(store, subject, parts),
        "library_versions": schema.library_versions(),
    }
