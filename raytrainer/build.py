"""From config and settings to a trainer: hyper-parameters, run id, storage root, backend.

Each is worked out here, once: the runners call :func:`resolve_settings` before they start
anything, and every process of a run builds its trainer with :func:`build_trainer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from raytrainer import storage
from raytrainer.backends.local import LocalBackend
from raytrainer.errors import ConfigError
from raytrainer.params import (
    DEFAULT_AGENT,
    HyperParameters,
    apply_overrides,
    read_config_file,
    validate_hyper_params,
)
from raytrainer.protocols import PROTOCOLS
from raytrainer.rng import seed_everything
from raytrainer.scenario import SCENARIOS, build_scenario_instance
from raytrainer.settings import ExperimentSettings
from raytrainer.trainer import TRAINERS, Trainer

# Keys of schema 1 that configs may still carry (saved runs are converted, see params/tree.py).
_RENAMED = {
    "protocol": "interaction_protocol",
    "protocol_params": "the protocol's own section (nip_protocol, debate_protocol, mnip_protocol)",
}


def load_hyper_params(
    config: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()
) -> HyperParameters:
    """Read, override and validate hyper-parameters against the named trainer's class.

    Parameters
    ----------
    config : str, Path or Mapping
        A YAML/JSON file (a checkpoint's ``hyper_params.json`` too) or an already-read mapping.
    overrides : Iterable[str]
        ``dotted.path=value`` pairs applied on top.

    Raises
    ------
    ConfigError
        Naming the field, for an unknown key, a wrong type or value, an unknown trainer,
        scenario or protocol, or an agent section the protocol does not have.
    """
    source = str(config) if isinstance(config, str | Path) else "config"
    data = read_config_file(config) if isinstance(config, str | Path) else dict(config)
    saved_version = None
    if "params" in data and "schema_version" in data:  # the saved form of a run's parameters
        saved_version = int(data["schema_version"])
        data = data["params"]
    data = apply_overrides(data, overrides)
    if "trainer" not in data:
        raise ConfigError(
            f"invalid hyper-parameters in {source}:\n  trainer: required field is missing"
        )
    trainer_cls = TRAINERS.get(str(data["trainer"]))
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)):
        raise ConfigError(f"trainer {data['trainer']!r} is not a raytrainer.Trainer subclass.")
    params_cls = trainer_cls.hyper_params_cls
    if saved_version is not None:
        data = params_cls.from_saved({"schema_version": saved_version, "params": data}).to_dict()
    for old, new in _RENAMED.items():
        if old in data and old not in params_cls.model_fields:
            raise ConfigError(
                f"invalid hyper-parameters in {source}:\n  {old}: renamed to {new} "
                "(the original project's name); rename the key."
            )
    hyper_params = validate_hyper_params(data, params_cls, source, overrides)
    SCENARIOS.get(hyper_params.scenario)
    agents = PROTOCOLS.get(hyper_params.interaction_protocol).agent_names
    unknown = sorted(set(hyper_params.agents) - set(agents) - {DEFAULT_AGENT})
    if unknown:
        raise ConfigError(
            f"invalid hyper-parameters in {source}:\n  agents.{unknown[0]}: protocol "
            f"{hyper_params.interaction_protocol!r} has agents {list(agents)} "
            f"(and '{DEFAULT_AGENT}')"
        )
    return hyper_params


def resolve_settings(
    hyper_params: HyperParameters, settings: ExperimentSettings
) -> ExperimentSettings:
    """Return the settings with the run id and the storage root decided.

    The run id is ``settings.run_id``, else a stable hash of the hyper-parameters; the storage
    root is ``settings.storage_path`` (made absolute), else the default root.
    """
    return dataclasses.replace(
        settings,
        run_id=settings.run_id or hyper_params.default_run_id(),
        storage_path=storage.root_of(settings.storage_path),
    )


def run_uri(settings: ExperimentSettings) -> str:
    """Return where a resolved run's folder is: ``<storage root>/<run id>``."""
    if settings.run_id is None or settings.storage_path is None:
        raise ValueError("run_uri needs settings from resolve_settings().")
    return storage.join(settings.storage_path, settings.run_id)


def local_settings(
    hyper_params: HyperParameters, settings: ExperimentSettings
) -> ExperimentSettings:
    """Return resolved settings for an in-process run: run id, storage root, local backend.

    A backend already in ``settings`` is kept; ``device="auto"`` becomes CUDA when available,
    else the CPU. Pass the result to a trainer's constructor to build it by hand
    (``MyTrainer(hyper_params, scenario_instance, settings)``).

    Raises
    ------
    ConfigError
        If the storage root is a URI (in-process runs write to a local folder), or the device
        is not one this machine has.
    """
    settings = resolve_settings(hyper_params, settings)
    settings = dataclasses.replace(settings, device=resolve_device(settings.device))
    if settings.backend is not None:
        return settings
    return dataclasses.replace(settings, backend=_local_backend(settings))


def resolve_device(name: str) -> str:
    """Return the torch device for ``name``: ``"auto"`` picks CUDA when available.

    Raises
    ------
    ConfigError
        If ``name`` is not a device name, or names a device this machine does not have.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"setting device={name!r} is invalid: expected auto, cpu, cuda or cuda:<index>."
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            build = (
                "no CUDA in this torch build" if torch.version.cuda is None else f"{count} GPU(s)"
            )
            raise ConfigError(
                f"setting device={name!r} is not available here ({build}); use --device auto "
                "or cpu."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"setting device={name!r} is not available here; use --device auto.")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"setting device={name!r} is not supported; use auto, cpu or cuda.")
    return name


def _local_backend(settings: ExperimentSettings) -> LocalBackend:
    location = run_uri(settings)
    if storage.is_uri(location):
        raise ConfigError(
            f"storage_path={settings.storage_path!r}: the in-process runner writes to a local "
            "folder; use a local path, or run on Ray for cloud storage."
        )
    return LocalBackend(
        Path(location),
        num_to_keep=settings.num_to_keep,
        score_metric=settings.checkpoint_score_metric,
        score_order=settings.checkpoint_score_order,
        logger=settings.get_logger(),
    )


def build_trainer(hyper_params: HyperParameters, settings: ExperimentSettings) -> Trainer:
    """Build the scenario instance and the trainer named by the hyper-parameters.

    Runs in every training process. Settings without a backend are resolved here and get the
    in-process backend, so a trainer can be built directly for debugging. The generators are
    seeded first, so the scenario's modules start from the same weights in every process.
    """
    if settings.backend is None:
        settings = local_settings(hyper_params, settings)
    seed_everything(hyper_params.seed + settings.world_rank)
    scenario_instance = build_scenario_instance(hyper_params, settings)
    return TRAINERS.get(hyper_params.trainer)(hyper_params, scenario_instance, settings)
