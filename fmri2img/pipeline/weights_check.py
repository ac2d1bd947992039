"""``fmri2img weights check CONFIG``: per model, what is configured, present and loadable.

For every model the configuration needs (from its [features], [reconstruct] and
[evaluate] sections), report whether a weights file is configured, whether it exists
at its path or URL (and its size), and with ``--load`` whether it loads into the
architecture (key names and shapes), naming the missing or misshapen keys.
Tiny random-weight configurations need no file (their entries show as "unused").  Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from fmri2img.config import Config


@dataclass
class WeightsStatus:
    model: str
    key: str
    url: str
    state: str      # "unused", "not configured", "missing", "present", "loads", "does not load"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("unused", "present", "loads")


def _loaders() -> dict[str, Callable[[str, dict], Any]]:
    from fmri2img.metrics.features import EVAL_NETS

    def vdvae(url: str, opts: dict) -> Any:
        from fmri2img.models.vdvae import load_vdvae

        return load_vdvae(url, opts or None, device="cpu")

    def clip(url: str, opts: dict) -> Any:
        from fmri2img.models.clip import load_clip

        return load_clip(url, opts or None, device="cpu")

    def vd(url: str, opts: dict) -> Any:
        from fmri2img.models.versatile import load_vd

        return load_vd(url, opts or None, device="cpu", dtype="float32")

    out: dict[str, Callable[[str, dict], Any]] = {"vdvae": vdvae, "clip": clip, "versatile_diffusion": vd}
    for spec in EVAL_NETS.values():
        out.setdefault(spec.weights_key, lambda url, opts, b=spec.builder: b(weights=url, storage_options=opts or None))
    return out


def needed(config: Config) -> dict[str, str]:
    """[weights] key → what needs it, for the models this configuration runs with real weights."""
    from fmri2img.metrics.features import EVAL_NETS
    from fmri2img.models.extractors import WEIGHTS_KEY

    out: dict[str, str] = {}
    for name, options in config.features.extractors.items():
        key = WEIGHTS_KEY.get(name)
        if key and not options.get("tiny"):
            out.setdefault(key, f"features.{name}")
    for name, run in config.reconstruct.runs.items():
        if run.get("preset", "brain-diffuser") and not run.get("tiny"):
            key = "versatile_diffusion_pth" if config.weights.versatile_diffusion_pth else "versatile_diffusion"
            out.setdefault(key, f"reconstruct.runs.{name}")
            if key == "versatile_diffusion_pth":
                out.setdefault("kl_f8_pth", f"reconstruct.runs.{name}")
    if "evaluate" in config.stages:
        for net in config.evaluate.nets or list(EVAL_NETS):
            out.setdefault(EVAL_NETS[net].weights_key, f"evaluate ({net})")
    return out


def check(config: Config, *, load: bool = False) -> list[WeightsStatus]:
    """The status of every weights entry the configuration needs (and of any other that is set)."""
    from fmri2img.storage import urls

    weights = dataclasses.asdict(config.weights)
    opts = dict(weights.pop("storage_options") or {})
    wanted = needed(config)
    loaders = _loaders()
    rows = []
    for key, url in weights.items():
        user = wanted.get(key, "")
        if not url:
            state = "not configured" if user else "unused"
            detail = f"needed by {user}: set [weights] {key}" if user else "not needed (tiny or unused)"
            rows.append(WeightsStatus(key, key, "", state, detail))
            continue
        shown = urls.redact(url)
        try:
            fs, path = urls.filesystem(url, opts or None)
            exists = fs.exists(path)
        except ValueError as exc:
            rows.append(WeightsStatus(key, key, shown, "missing", str(exc)))
            continue
        if not exists:
            rows.append(WeightsStatus(key, key, shown, "missing", "no file or directory there"))
            continue
        size = fs.du(path) if fs.isdir(path) else fs.size(path)
        row = WeightsStatus(key, key, shown, "present", f"{size / 2**20:.1f} MB" + (f", for {user}" if user else ""))
        if load and key in loaders:
            try:
                loaders[key](url, opts)
                row.state, row.detail = "loads", row.detail + ", architecture matches"
            except Exception as exc:  # noqa: BLE001 - report any load failure for this model
                row.state, row.detail = "does not load", str(exc)
        rows.append(row)
    return rows
