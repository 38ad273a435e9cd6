"""Hyper-parameters: the typed, validated tree of everything that changes a run's result."""

from raytrainer.params.io import apply_overrides, read_config_file, validate_hyper_params
from raytrainer.params.tree import (
    DEFAULT_AGENT,
    AgentHyperParameters,
    BaseRunParameters,
    HyperParameters,
    ParamsModel,
    ProtocolParameters,
)
from raytrainer.params.versions import register_conversion

__all__ = [
    "DEFAULT_AGENT",
    "AgentHyperParameters",
    "BaseRunParameters",
    "HyperParameters",
    "ParamsModel",
    "ProtocolParameters",
    "apply_overrides",
    "read_config_file",
    "register_conversion",
    "validate_hyper_params",
]
