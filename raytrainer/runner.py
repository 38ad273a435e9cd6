"""Building a run from its three inputs, and running it in this process.

Each runner is a small adapter: it builds the scenario and the user's trainer from the
hyper-parameters and settings and calls ``train()``; none holds training logic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytrainer.backends import LocalBackend
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
    hyper_params = validate_hyper_params(data, params_cls, source)
    SCENARIOS.get(hyper_params.scenario)
    agents = PROTOCOLS.get(hyper_params.protocol).agent_names
    unknown = sorted(set(hyper_params.agents) - set(agents) - {DEFAULT_AGENT})
    if unknown:
        raise ConfigError(
            f"invalid hyper-parameters in {source}:\n  agents.{unknown[0]}: protocol "
            f"{hyper_params.protocol!r} has agents {list(agents)} (and '{DEFAULT_AGENT}')"
        )
    return hyper_params


def build_trainer(hyper_params: HyperParameters, settings: ExperimentSettings) -> Trainer:
    """Build the scenario instance and the trainer named by the hyper-parameters.

    The generators are seeded first, so the scenario's modules start from the same weights in
    every process.
    """
    seed_everything(hyper_params.seed + settings.world_rank)
    scenario_instance = build_scenario_instance(hyper_params, settings)
    return TRAINERS.get(hyper_params.trainer)(hyper_params, scenario_instance, settings)


@dataclass
class RunResult:
    """What a finished run reports."""

    run_id: str
    storage_uri: str
    iteration: int
    metrics: dict[str, float] = field(default_factory=dict)
    already_complete: bool = False


def run_local(hyper_params: HyperParameters, settings: ExperimentSettings) -> RunResult:
    """Run the trainer in this process; resume the run if it has checkpoints.

    A breakpoint in the trainer works. Checkpoints go to ``<storage>/<run id>/checkpoint_<n>``,
    the same layout as under Ray. Rerunning a finished run returns at once with
    ``already_complete=True``.
    """
    run_id = settings.run_id or hyper_params.default_run_id()
    backend = settings.backend or LocalBackend.from_settings(settings, run_id)
    logger = settings.get_logger()
    summary = None if settings.test_run else backend.completed_summary()
    if summary is not None:
        logger.info("run %s is already complete in %s; nothing to do.", run_id, backend.storage_uri)
        return RunResult(
            run_id,
            backend.storage_uri,
            summary.get("iteration", 0),
            summary.get("metrics", {}),
            already_complete=True,
        )
    settings = dataclasses.replace(settings, run_id=run_id, backend=backend)
    trainer = build_trainer(hyper_params, settings)
    trainer.train()
    result = RunResult(run_id, backend.storage_uri, trainer.iteration, dict(trainer.metrics))
    if not settings.test_run:
        backend.mark_complete(
            {"run_id": run_id, "iteration": result.iteration, "metrics": result.metrics}
        )
    logger.info("run %s finished at iteration %d: %s", run_id, result.iteration, result.metrics)
    return result
