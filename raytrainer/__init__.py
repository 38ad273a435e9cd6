"""raytrainer: research trainers that scale from one GPU to a Ray cluster unchanged."""

from raytrainer._version import __version__
from raytrainer.backends import Backend, LocalBackend
from raytrainer.data import ShardedBatchSampler
from raytrainer.errors import (
    CheckpointCorruptError,
    CheckPointNotFoundError,
    CheckpointStateError,
    CheckpointVersionError,
    ConfigError,
    MetricError,
    RayTrainerError,
    RegistryError,
    RunFailedError,
)
from raytrainer.params import AgentHyperParameters, HyperParameters, register_conversion
from raytrainer.protocols import ProtocolHandler, register_protocol
from raytrainer.runner import (
    RunResult,
    Scaling,
    build_trainer,
    load_hyper_params,
    run,
    run_local,
)
from raytrainer.scenario import ScenarioInstance, register_scenario
from raytrainer.settings import ExperimentSettings
from raytrainer.trainer import Progress, Trainer, attach_progress_bar, register_trainer

__all__ = [
    "AgentHyperParameters",
    "Backend",
    "CheckPointNotFoundError",
    "CheckpointCorruptError",
    "CheckpointStateError",
    "CheckpointVersionError",
    "ConfigError",
    "ExperimentSettings",
    "HyperParameters",
    "LocalBackend",
    "MetricError",
    "Progress",
    "ProtocolHandler",
    "RayTrainerError",
    "RegistryError",
    "RunFailedError",
    "RunResult",
    "Scaling",
    "ScenarioInstance",
    "ShardedBatchSampler",
    "Trainer",
    "__version__",
    "attach_progress_bar",
    "build_trainer",
    "load_hyper_params",
    "register_conversion",
    "register_protocol",
    "register_scenario",
    "register_trainer",
    "run",
    "run_local",
]
