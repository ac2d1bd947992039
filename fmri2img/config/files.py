"""TOML files ⇄ :class:`~fmri2img.config.sections.Config`: read, validate and write configurations."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Mapping

from fmri2img.config.errors import ConfigError
from fmri2img.config.sections import Config
from fmri2img.config.validate import from_dict, validate

__all__ = ["load", "loads", "dumps"]


def load(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; write one (README: Configuration)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; fix the syntax at that line") from None
    try:
        return validate(from_dict(Config, data))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def loads(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config is not valid TOML: {exc}") from None
    return validate(from_dict(Config, data))


def dumps(config: Config) -> str:
    """The configuration as TOML text (credentials redacted)."""
    return _to_toml(config.redacted())


def _to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    simple = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in simple.items()]
    for k, v in tables.items():
        name = f"{prefix}.{k}" if prefix else k
        lines.append("")
        lines.append(f"[{name}]")
        lines.append(_to_toml(v, name))
    return "\n".join(line for line in lines if line is not None).strip() + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")
