"""``fmri2img weights check CONFIG``: per model, what is configured, present and loadable.

For every model the configuration needs (from its [features], [reconstruct] and
[evaluate] sections), report whether a weights file is configured, whether it exists
at its path or URL (and its size), and with ``--load`` whether it loads into the
architecture (key names and shapes), naming the missing or misshapen keys.  An
extractor that names its own file (``weights = PATH`` in its table) is checked the same way.
Models that run with seeded random weights by design (``tiny = true``; the evaluation
networks of a configuration whose models are all tiny, such as the demo's) show as
"demo model": not an error, and not real weights.  Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from fmri2img.storage.weights import open_weights
from fmri2img.storage import secrets
from fmri2img.config import Config

#: states that are not a problem
OK_STATES = ("unused", "demo model", "present", "loads")
@dataclass
class WeightsStatus:
    model: str
    key: str
    url: str
    state: str      # "unused", "demo model", "not configured", "missing", "present", "loads", "does not load"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state in OK_STATES


def _loaders() -> dict[str, Callable[[str, dict], Any]]:
    from fmri2img.metrics.features import EVAL_NETS

    def vdvae(url: str, opts: dict) -> Any:
        from fmri2img.models.vdvae import load_vdvae

        return load_vdvae(open_weights(url, opts), device="cpu")

    def clip(url: str, opts: dict) -> Any:
        from fmri2img.models.clip import load_clip

        return load_clip(open_weights(url, opts), device="cpu")

    def vd(url: str, opts: dict) -> Any:
        from fmri2img.models.vd_load import load_vd

        return load_vd(open_weights(url, opts), device="cpu", dtype="float32")

    out: dict[str, Callable[[str, dict], Any]] = {"vdvae": vdvae, "clip": clip, "versatile_diffusion": vd}
    for spec in EVAL_NETS.values():
        out.setdefault(spec.weights_key, lambda url, opts, b=spec.builder: b(weights=open_weights(url, opts)))
    return out


def users(config: Config) -> dict[str, list[tuple[str, bool]]]:
    """[weights] key → ``(what uses it, whether that user runs with seeded random weights)`` for each user.

    An extractor with its own ``weights`` file does not use [weights].  Evaluation networks run with
    random weights when their entry is empty; that is by design only in a demo configuration
    (:func:`is_demo`), so they count as random there and as needing weights elsewhere.
    """
    from fmri2img.metrics.features import EVAL_NETS
    from fmri2img.models.extractors import WEIGHTS_KEY

    out: dict[str, list[tuple[str, bool]]] = {}
    for name, options in config.features.extractors.items():
        key = WEIGHTS_KEY.get(config.extractor_kind(name))
        if key and not options.get("weights"):
            out.setdefault(key, []).append((f"features.{name}", bool(options.get("tiny"))))
    vd_key = "versatile_diffusion_pth" if config.weights.versatile_diffusion_pth else "versatile_diffusion"
    for name, run in config.reconstruct.runs.items():
        if run.get("preset", "brain-diffuser"):
            for key in (vd_key, "kl_f8_pth") if vd_key == "versatile_diffusion_pth" else (vd_key,):
                out.setdefault(key, []).append((f"reconstruct.runs.{name}", bool(run.get("tiny"))))
    if "evaluate" in config.stages:
        demo = is_demo(config)
        for net in config.evaluate.nets or list(EVAL_NETS):
            out.setdefault(EVAL_NETS[net].weights_key, []).append((f"evaluate ({net})", demo))
    return out


def is_demo(config: Config) -> bool:
    """No [weights] entry set, and every extractor and Brain-Diffuser run tiny or with its own file (the demo's)."""
    weights = dataclasses.asdict(config.weights)
    weights.pop("storage_options", None)
    if any(weights.values()):
        return False
    from fmri2img.models.extractors import WEIGHTS_KEY

    extractors_ok = all(opts.get("tiny") or opts.get("weights") or not WEIGHTS_KEY.get(config.extractor_kind(n))
                        for n, opts in config.features.extractors.items())
    runs_ok = all(run.get("tiny") or not run.get("preset", "brain-diffuser") for run in config.reconstruct.runs.values())
    return extractors_ok and runs_ok


def needed(config: Config) -> dict[str, str]:
    """[weights] key → what needs it, for the models this configuration runs with real weights."""
    return {key: next(u for u, random in who if not random) for key, who in users(config).items()
            if any(not random for _, random in who)}


def _file_row(model: str, key: str, url: str, opts: dict, user: str, load: Callable[[], Any] | None) -> WeightsStatus:
    """The row of one configured file: missing, present (size) or, with ``load``, loads / does not load."""
    from fmri2img.storage import urls

    shown = secrets.redact(url)
    try:
        fs, path = urls.filesystem(url, opts or None)
        exists = fs.exists(path)
    except ValueError as exc:
        return WeightsStatus(model, key, shown, "missing", str(exc))
    if not exists:
        return WeightsStatus(model, key, shown, "missing", "no file or directory there")
    size = fs.du(path) if fs.isdir(path) else fs.size(path)
    row = WeightsStatus(model, key, shown, "present", f"{size / 2**20:.1f} MB" + (f", for {user}" if user else ""))
    if load is not None:
        try:
            load()
            row.state, row.detail = "loads", row.detail + ", architecture matches"
        except Exception as exc:  # noqa: BLE001 - report any load failure for this model
            row.state, row.detail = "does not load", str(exc)
    return row


def check(config: Config, *, load: bool = False) -> list[WeightsStatus]:
    """The status of every weights file the configuration names or needs (and of any other that is set)."""
    from fmri2img.models import extractors

    weights = dataclasses.asdict(config.weights)
    opts = dict(weights.pop("storage_options") or {})
    who = users(config)
    loaders = _loaders()
    rows = []
    for name, options in config.features.extractors.items():
        url = options.get("weights")
        if not url:
            continue
        own = dict(options.get("storage_options") or {})
        build = (lambda n=name, o=dict(options): extractors.build(n, **o)) if load else None
        row = _file_row(f"features.{name}", "weights", str(url), own, f"features.{name}", build)
        if options.get("note") and row.ok:
            row.detail += f" ({options['note']})"
        rows.append(row)
    for key, url in weights.items():
        using = who.get(key, [])
        real = [u for u, random in using if not random]
        if not url:
            if real:
                rows.append(WeightsStatus(key, key, "", "not configured", f"needed by {real[0]}: set [weights] {key}"))
            elif using:
                rows.append(WeightsStatus(key, key, "", "demo model",
                                          f"seeded random weights, for {', '.join(u for u, _ in using)}"))
            else:
                rows.append(WeightsStatus(key, key, "", "unused", "not needed by this configuration"))
            continue
        user = (real or [u for u, _ in using] or [""])[0]
        do_load = (lambda k=key, u=url: loaders[k](u, opts)) if load and key in loaders else None
        rows.append(_file_row(key, key, url, opts, user, do_load))
    return rows
