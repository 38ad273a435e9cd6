"""raytrainer: research trainers that scale from one GPU to a Ray cluster unchanged.

Public names are imported on first use, so ``raytrainer --help`` and ``import raytrainer``
stay fast (no torch, no Ray until a name that needs them is touched).
"""

from __future__ import annotations

import importlib
from typing import Any

from raytrainer._version import __version__ as __version__

# Each public name and the module it lives in.

_WHERE = {
    "AgentHyperParameters": "raytrainer.params",
    "Backend": "raytrainer.backends",
    "CheckPointNotFoundError": "raytrainer.errors",
    "CheckpointCorruptError": "raytrainer.errors",
    "CheckpointSaveError": "raytrainer.errors",
    "CheckpointStateError": "raytrainer.errors",
    "CheckpointVersionError": "raytrainer.errors",
    "ConfigError": "raytrainer.errors",
    "ExperimentSettings": "raytrainer.settings",
    "HyperParameters": "raytrainer.params",
    "LocalBackend": "raytrainer.backends",
    "MetricError": "raytrainer.errors",
    "NodePreempted": "raytrainer.errors",
    "Progress": "raytrainer.progress",
    "ProtocolHandler": "raytrainer.protocols",
    "RayTrainerError": "raytrainer.errors",
    "RegistryError": "raytrainer.errors",
    "RunFailedError": "raytrainer.errors",
    "RunStopped": "raytrainer.errors",
    "RunResult": "raytrainer.runners.result",
    "Scaling": "raytrainer.settings",
    "ScenarioInstance": "raytrainer.scenario",
    "ShardedBatchSampler": "raytrainer.data",
    "Trainer": "raytrainer.trainer",
    "attach_progress_bar": "raytrainer.progress",
    "build_trainer": "raytrainer.build",
    "load_hyper_params": "raytrainer.build",
    "register_conversion": "raytrainer.params",
    "register_protocol": "raytrainer.protocols",
    "register_scenario": "raytrainer.scenario",
    "register_trainer": "raytrainer.trainer",
    "run": "raytrainer.runners.ray_train",
    "run_local": "raytrainer.runners.local",
    "sweep": "raytrainer.runners.tune",
    "SweepResult": "raytrainer.runners.tune",
}

__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'raytrainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
