"""The run configuration: a TOML file ⇄ dataclasses, validated with clear errors.

- :mod:`~fmri2img.config.sections`: one dataclass per table (:class:`Config` and its sections),
  defaults from the reference method;
- :mod:`~fmri2img.config.validate`: tables → dataclasses by name and type, cross-field checks,
  and the checks stages declare (:func:`register_check`);
- :mod:`~fmri2img.config.files`: :func:`load`, :func:`loads`, :func:`dumps`;
- :mod:`~fmri2img.config.errors`: :class:`ConfigError`.

The configuration imports no stage; stages import it.
"""
from fmri2img.config.errors import ConfigError
from fmri2img.config.files import dumps, load, loads
from fmri2img.config.sections import (
    METHOD_STAGES,
    PUBLIC,
    STAGES,
    AlignConfig,
    ClusterConfig,
    Config,
    DecodeConfig,
    EvaluateConfig,
    FeaturesConfig,
    GlmConfig,
    IngestConfig,
    OutputsConfig,
    ReconstructConfig,
    RegressConfig,
    RoiConfig,
    SourceConfig,
    StoreConfig,
    WeightsConfig,
    parse_sessions,
)
from fmri2img.config.validate import from_dict, register_check, validate

__all__ = ["ConfigError", "load", "loads", "dumps", "from_dict", "validate", "register_check", "parse_sessions",
           "PUBLIC", "STAGES", "METHOD_STAGES", "Config", "StoreConfig", "SourceConfig", "ClusterConfig",
           "IngestConfig", "GlmConfig", "FeaturesConfig", "RegressConfig", "ReconstructConfig", "EvaluateConfig", "RoiConfig",
           "DecodeConfig", "AlignConfig", "OutputsConfig", "WeightsConfig"]
