"""Hyper-parameters: the typed, validated tree of everything that changes a run's result."""

from raytrainer.params.describe import describe_hyper_params
from raytrainer.params.io import (
    apply_overrides,
    check_json_values,
    did_you_mean,
    nearest,
    read_config_file,
    validate_hyper_params,
)
from raytrainer.params.tree import (
    DEFAULT_AGENT,
    AgentHyperParameters,
    BaseRunParameters,
    DebateProtocolParameters,
    HyperParameters,
    MnipProtocolParameters,
    NipProtocolParameters,
    ParamsModel,
    ProtocolCommonParameters,
)
from raytrainer.params.versions import register_conversion

__all__ = [
    "DEFAULT_AGENT",
    "AgentHyperParameters",
    "BaseRunParameters",
    "HyperParameters",
    "DebateProtocolParameters",
    "MnipProtocolParameters",
    "NipProtocolParameters",
    "ParamsModel",
    "ProtocolCommonParameters",
    "apply_overrides",
    "check_json_values",
    "describe_hyper_params",
    "did_you_mean",
    "nearest",
    "read_config_file",
    "register_conversion",
    "validate_hyper_params",
]
