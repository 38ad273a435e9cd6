"""Building a run from its three inputs, and running it in this process.

Each runner is a small adapter: it builds the scenario and the user's trainer from the
hyper-parameters and settings and calls ``train()``; none holds training logic.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytrainer import storage
from raytrainer.backends import LocalBackend
from raytrainer.errors import ConfigError, RunFailedError
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
from raytrainer.settings import ExperimentSettings, default_storage_location
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
    unmirrored: list[str] = field(default_factory=list)
    """Checkpoints and artifacts the W&B mirror could not upload (they are safe in storage)."""


COMPLETE_FILE = "complete.json"
"""Written into the run folder when a run finishes; a rerun then has nothing to do."""


def _already_complete(run_uri: str, run_id: str, settings: ExperimentSettings) -> RunResult | None:
    """The result of a run that finished before (its ``complete.json``), or ``None``."""
    summary = None if settings.test_run else storage.read_json(storage.join(run_uri, COMPLETE_FILE))
    if summary is None:
        return None
    settings.get_logger().info("run %s is already complete in %s; nothing to do.", run_id, run_uri)
    return RunResult(
        run_id,
        run_uri,
        summary.get("iteration", 0),
        summary.get("metrics", {}),
        already_complete=True,
    )


def _mark_complete(run_uri: str, result: RunResult, settings: ExperimentSettings) -> None:
    if not settings.test_run:
        storage.write_json(
            storage.join(run_uri, COMPLETE_FILE),
            {"run_id": result.run_id, "iteration": result.iteration, "metrics": result.metrics},
        )
    settings.get_logger().info(
        "run %s finished at iteration %d: %s", result.run_id, result.iteration, result.metrics
    )


def run_local(hyper_params: HyperParameters, settings: ExperimentSettings) -> RunResult:
    """Run the trainer in this process; resume the run if it has checkpoints.

    A breakpoint in the trainer works. Checkpoints go to ``<storage>/<run id>/checkpoint_<n>``,
    the same layout as under Ray. Rerunning a finished run returns at once with
    ``already_complete=True``.
    """
    run_id = settings.run_id or hyper_params.default_run_id()
    backend = settings.backend or LocalBackend.from_settings(settings, run_id)
    done = _already_complete(backend.storage_uri, run_id, settings)
    if done is not None:
        return done
    settings = dataclasses.replace(settings, run_id=run_id, backend=backend)
    trainer = build_trainer(hyper_params, settings)
    try:
        trainer.train()
    finally:
        unmirrored = trainer.close()
    result = RunResult(
        run_id, backend.storage_uri, trainer.iteration, dict(trainer.metrics), False, unmirrored
    )
    _mark_complete(backend.storage_uri, result, settings)
    return result


@dataclass(frozen=True)
class Scaling:
    """How many Ray Train workers a run uses, and what each gets.

    Parameters
    ----------
    num_workers : int
        Training processes (DDP ranks). ``batch_size`` is divided among them.
    gpus_per_worker : float
        GPUs per worker; 0 trains on CPU with gloo, more on GPU with nccl.
    cpus_per_worker : float
        CPUs reserved per worker.
    """

    num_workers: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1

    def __post_init__(self) -> None:
        for name, value, ok in (
            ("num_workers", self.num_workers, self.num_workers >= 1),
            ("gpus_per_worker", self.gpus_per_worker, self.gpus_per_worker >= 0),
            ("cpus_per_worker", self.cpus_per_worker, self.cpus_per_worker > 0),
        ):
            if not ok:
                raise ConfigError(f"scaling {name}={value!r} is invalid: it must be positive.")


def run(
    hyper_params: HyperParameters,
    settings: ExperimentSettings,
    scaling: Scaling | None = None,
    address: str | None = None,
) -> RunResult:
    """Run the trainer as Ray Train workers; resume the run if its storage has checkpoints.

    Runs on the driver. Connects to the Ray cluster at ``address`` (or the one Ray finds:
    ``RAY_ADDRESS``, a running local head, the cluster of a ``ray job``), or starts a local
    instance for the run and stops it afterwards. The run is ``RunConfig(name=run_id)`` under
    ``settings.storage_path``, so rerunning the same command after the driver dies resumes it.

    Raises
    ------
    ConfigError
        Before Ray starts, for a bad scaling or a batch size the workers cannot share.
    RunFailedError
        When the workers fail more than ``settings.max_failures`` times; it carries the
        workers' error.
    """
    scaling = scaling or Scaling()
    if hyper_params.batch_size % scaling.num_workers:
        raise ConfigError(
            f"batch_size={hyper_params.batch_size} is the global batch and must divide by "
            f"num_workers={scaling.num_workers}."
        )
    run_id = settings.run_id or hyper_params.default_run_id()
    root = settings.storage_path or default_storage_location()
    storage_fs, storage_path = storage.resolve(root)
    done = _already_complete(storage.join(root, run_id), run_id, settings)
    if done is not None:  # checked before Ray starts: a finished run costs nothing
        return done
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints shown once

    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    settings = _with_wandb_folders(settings, on_this_machine=started and address is None)
    try:
        return _fit(hyper_params, settings, scaling, run_id, root, storage_fs, storage_path)
    finally:
        if started:
            ray.shutdown()


_WANDB_FOLDERS = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")


def _with_wandb_folders(settings: ExperimentSettings, on_this_machine: bool) -> ExperimentSettings:
    """Give rank 0 the driver's W&B folders: a Ray worker's cwd is a temporary session folder.

    The driver's ``WANDB_*DIR`` variables are passed on; on a Ray instance this driver started
    (one machine), ``WANDB_DIR`` defaults to the driver's working directory, as in-process.
    Entries of ``settings.worker_env`` win. The API key is never passed on by raytrainer.
    """
    if settings.wandb_mode == "disabled":
        return settings
    env = {name: os.environ[name] for name in _WANDB_FOLDERS if os.environ.get(name)}
    if on_this_machine:
        env.setdefault("WANDB_DIR", os.getcwd())
    return dataclasses.replace(settings, worker_env={**env, **settings.worker_env})


def _fit(
    hyper_params: HyperParameters,
    settings: ExperimentSettings,
    scaling: Scaling,
    run_id: str,
    root: str,
    storage_fs: Any,
    storage_path: str,
) -> RunResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raytrainer.backends.ray_train import DriverProgress, RunStatusActor

    run_uri = storage.join(root, run_id)
    actor_name = f"raytrainer-status-{run_id}-{uuid.uuid4().hex[:6]}"
    actor = RunStatusActor.options(name=actor_name).remote()
    worker_settings = dataclasses.replace(settings, run_id=run_id).to_worker_config()
    trainer = TorchTrainer(
        train_loop_per_worker=_worker_loop,
        train_loop_config={
            "hyper_params": hyper_params.to_saved(),
            "settings": worker_settings,
            "storage_root": root,
            "status_actor": actor_name,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": scaling.cpus_per_worker,
                **({"GPU": scaling.gpus_per_worker} if scaling.gpus_per_worker else {}),
            },
        ),
        run_config=RunConfig(
            name=run_id,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=settings.num_to_keep,
                checkpoint_score_attribute=settings.checkpoint_score_metric,
                checkpoint_score_order=settings.checkpoint_score_order,
            ),
            # Worker errors are retried max_failures times; a controller that cannot start
            # the workers at all fails the run instead of retrying forever.
            failure_config=FailureConfig(
                max_failures=settings.max_failures, controller_failure_limit=3
            ),
            worker_runtime_env={"env_vars": dict(settings.worker_env)}
            if settings.worker_env
            else None,
        ),
    )
    try:
        with DriverProgress(actor, settings.progress_bar_factory, desc=run_id):
            result = trainer.fit()
        unmirrored = ray.get(actor.get_unmirrored.remote())
    except SystemExit as exc:
        # Ray Train's SIGINT handler aborts the controller and exits; to the caller this is
        # a Ctrl-C like any other (the last checkpoint is intact; rerunning resumes).
        raise KeyboardInterrupt from exc
    except ray.train.TrainingFailedError as exc:
        raise RunFailedError(
            f"run {run_id} failed after {settings.max_failures} restart(s); the last good "
            f"checkpoint is in {run_uri}. Workers reported:\n{exc}"
        ) from exc
    finally:
        ray.kill(actor)
    final = dict(result.metrics or {})  # reported with the last checkpoint
    iteration = int(final.pop("iteration", 0))
    out = RunResult(run_id, run_uri, iteration, final, False, unmirrored)
    _mark_complete(run_uri, out, settings)
    return out


def _worker_loop(config: dict[str, Any]) -> None:
    # A module-level function of the installed package, so workers can always unpickle it.
    from raytrainer.backends.ray_train import worker_loop

    worker_loop(config)
