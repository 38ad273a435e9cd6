"""The ``Trainer`` base class: the seed's API, run unchanged in-process or as Ray workers.

A subclass builds its models in :meth:`Trainer._build`, exposes its state through
:meth:`Trainer._state_dict` / :meth:`Trainer._load_state_dict`, and implements
:meth:`Trainer.train`. The base class owns when state is restored, where checkpoints go (the
backend in ``settings``), the RNG state for exact resume, and the progress bar.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.distributed as dist

from raytrainer import storage
from raytrainer._version import __version__
from raytrainer.backends import Backend, LocalBackend
from raytrainer.checkpoint.layout import (
    METADATA_FILE,
    PARAMS_FILE,
    STATE_FILE,
    LoadedCheckpoint,
    checkpoint_dir_name,
    file_digest,
    read_checkpoint,
    write_checkpoint,
)
from raytrainer.checkpoint.sources import fetch_base_run_checkpoint
from raytrainer.checkpoint.wandb_mirror import CheckpointMirror, WandbClient
from raytrainer.data import ShardedBatchSampler
from raytrainer.errors import (
    CheckpointCorruptError,
    CheckPointNotFoundError,
    CheckpointStateError,
    ConfigError,
    MetricError,
)
from raytrainer.params import HyperParameters
from raytrainer.protocols import ProtocolHandler
from raytrainer.registry import Registry
from raytrainer.rng import get_rng_state, seed_everything, set_rng_state
from raytrainer.scenario import ScenarioInstance
from raytrainer.settings import ExperimentSettings, ProgressBar, default_storage_root

TRAINERS: Registry[type[Trainer]] = Registry("trainer")
register_trainer = TRAINERS.register

F = TypeVar("F", bound=Callable[..., Any])

_ARTIFACTS_DIR = "artifacts"


class Progress:
    """The progress context handed to a method decorated with :func:`attach_progress_bar`."""

    def __init__(self, bar: ProgressBar | None) -> None:
        self._bar = bar

    def step(self, n: int = 1) -> None:
        """Advance the run's progress bar by ``n`` iterations."""
        if self._bar is not None:
            self._bar.update(n)


def attach_progress_bar(num_iterations_func: Callable[[Any], int]) -> Callable[[F], F]:
    """Give a trainer method the run's progress bar.

    The decorated method receives a keyword argument ``progress`` (a :class:`Progress`) and
    calls ``progress.step()`` per iteration. ``num_iterations_func(trainer)`` says how many
    iterations the method runs; :meth:`Trainer.get_total_num_iterations` sums these over all
    decorated methods, so one bar covers the whole run. The bar starts at
    ``trainer.iteration``, so a resumed run's bar starts where it left off. Only rank 0 draws.

    Parameters
    ----------
    num_iterations_func : Callable[[Trainer], int]
        Returns the number of iterations of the decorated method.
    """

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(self: Trainer, *args: Any, **kwargs: Any) -> Any:
            if self._progress_bar is not None:  # nested: share the outer bar
                return func(self, *args, progress=Progress(self._progress_bar), **kwargs)
            factory = self.settings.progress_bar_factory
            if factory is None or not self.settings.is_rank_zero:
                return func(self, *args, progress=Progress(None), **kwargs)
            self._progress_bar = factory(
                total=self.get_total_num_iterations(), initial=self.iteration, desc=self.run_id
            )
            try:
                return func(self, *args, progress=Progress(self._progress_bar), **kwargs)
            finally:
                self._progress_bar.close()
                self._progress_bar = None

        wrapper._num_iterations_func = num_iterations_func  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    """The commit of the checkout in the working directory, or ``None`` outside one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


class Trainer(ABC):
    """Base class for all trainers.

    Parameters
    ----------
    hyper_params : HyperParameters
        The parameters of the experiment.
    scenario_instance : ScenarioInstance
        The components of the experiment.
    settings : ExperimentSettings
        The instance-specific settings of the experiment, like device, logging, etc.

    Notes
    -----
    ``__init__`` seeds every generator from ``hyper_params.seed`` (plus the rank), calls
    :meth:`_build`, then restores the run's newest good checkpoint when there is one (unless
    ``settings.do_not_load_checkpoint`` or ``settings.test_run``); otherwise it warm-starts from
    ``hyper_params.base_run`` when set, or calls :meth:`_initialise_state`.
    """

    hyper_params_cls: ClassVar[type[HyperParameters]] = HyperParameters
    """The hyper-parameter class of this trainer; configs are validated against it."""

    wandb_client_cls: ClassVar[type[WandbClient]] = WandbClient
    """The seam to W&B; swap it to change or stand in for every call to W&B."""

    def __init__(
        self,
        hyper_params: HyperParameters,
        scenario_instance: ScenarioInstance,
        settings: ExperimentSettings,
    ) -> None:
        self.hyper_params = hyper_params
        self.scenario_instance = scenario_instance
        self.settings = settings
        self.logger = settings.get_logger()
        self.device = torch.device(settings.device)
        self.run_id: str = settings.run_id or hyper_params.default_run_id()
        self.backend: Backend = settings.backend or LocalBackend.from_settings(
            settings, self.run_id
        )
        self.iteration = 0
        self.metrics: dict[str, float] = {}
        self._best_score: float | None = None
        self._progress_bar: ProgressBar | None = None
        self._mirror = self._start_mirror()

        try:
            self._restore_or_initialise()
        except BaseException:
            if self._mirror is not None:  # nothing to flush yet: do not wait for W&B
                self._mirror.close(timeout=0)
            raise

    def _restore_or_initialise(self) -> None:
        settings, hyper_params = self.settings, self.hyper_params
        seed_everything(hyper_params.seed + settings.world_rank)
        self._build()
        if not (settings.do_not_load_checkpoint or settings.test_run):
            try:
                self.load_and_set_state_from_checkpoint()
                return
            except CheckPointNotFoundError:
                pass
        if hyper_params.base_run is not None and not settings.test_run:
            self.load_and_set_state_from_checkpoint(
                from_base_run=True, version=hyper_params.base_run.version
            )
        else:
            self._initialise_state()

    def _start_mirror(self) -> CheckpointMirror | None:
        """Open the W&B mirror on rank 0 when W&B is enabled; its thread runs ``wandb.init``."""
        settings = self.settings
        if settings.wandb_mode == "disabled" or not settings.is_rank_zero:
            return None
        init_kwargs = {
            "id": self.run_id,
            "name": self.run_id,
            "resume": "allow",
            "project": settings.wandb_project or os.environ.get("WANDB_PROJECT") or "raytrainer",
            "entity": settings.wandb_entity,
            "mode": settings.wandb_mode,
            "group": settings.wandb_group,
            "tags": list(settings.wandb_tags) or None,
            "config": self.hyper_params.to_dict(),
            "dir": os.environ.get("WANDB_DIR"),  # read now: wandb keeps a process's first
            "settings": {"console": "off"},
        }
        return CheckpointMirror(
            self.wandb_client_cls(),
            init_kwargs,
            self.checkpoint_base_dir / ".wandb-staging",
            self.logger,
            digest_algorithm=settings.wandb_digest_algorithm,
        )

    def close(self) -> list[str]:
        """Flush the W&B mirror (waiting at most ``settings.wandb_flush_timeout`` seconds).

        The runners call this after :meth:`train`. Returns the names of checkpoints and
        artifacts that could not be mirrored (also logged as a warning).
        """
        if self._mirror is None:
            return []
        mirror, self._mirror = self._mirror, None
        return mirror.close(self.settings.wandb_flush_timeout)

    # ------------------------------------------------------------------ hooks for subclasses

    def _build(self) -> None:
        """Build models, optimisers and samplers. Called once, before any state is restored."""

    def _initialise_state(self) -> None:
        """Initialise the state of the experiment when starting from scratch.

        Called instead of a restore when the run has no checkpoint and no base run. The
        generators are already seeded and :meth:`_build` has run.
        """

    def _state_dict(self) -> dict[str, Any]:
        """Return the subclass's state: module/optimiser state dicts, sampler positions, ...

        Values are tensors, numbers, strings, lists and dicts; an entry holding tensors is
        saved as ``<key>.pt``, the rest in ``state.json``. Keys starting with ``_`` are
        reserved for the base class.
        """
        return {}

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the subclass's state from what :meth:`_state_dict` returned."""

    @abstractmethod
    def train(self) -> None:
        """Train the agents."""

    # ------------------------------------------------------------------ the seed's properties

    @property
    def protocol_handler(self) -> ProtocolHandler:
        """The protocol handler for the experiment."""
        return self.scenario_instance.protocol_handler

    @property
    def agent_names(self) -> list[str]:
        """The names of the agents in the scenario."""
        return list(self.protocol_handler.agent_names)

    @property
    def num_agents(self) -> int:
        """The number of agents in the scenario."""
        return len(self.protocol_handler.agent_names)

    @property
    def max_message_rounds(self) -> int:
        """The maximum number of message rounds in the protocol."""
        return self.protocol_handler.max_message_rounds

    @property
    def checkpoint_base_dir(self) -> Path:
        """The local folder this process writes checkpoints into.

        The run folder in-process; a staging folder under Ray. Where checkpoints are *kept*
        is :attr:`checkpoint_storage_uri`.
        """
        return self.backend.staging_dir

    @property
    def checkpoint_storage_uri(self) -> str:
        """Where the run's checkpoints are kept: a folder or a URI."""
        return self.backend.storage_uri

    @property
    def checkpoint_dir(self) -> Path:
        """The folder of the checkpoint at the current iteration: ``checkpoint_<n>``."""
        return self.checkpoint_base_dir / checkpoint_dir_name(self.iteration)

    @property
    def checkpoint_metadata_path(self) -> Path:
        """The path to the checkpoint metadata file (of the current iteration's checkpoint)."""
        return self.checkpoint_dir / METADATA_FILE

    @property
    def checkpoint_params_path(self) -> Path:
        """The path to the parameters file for the checkpoint."""
        return self.checkpoint_dir / PARAMS_FILE

    @property
    def checkpoint_state_path(self) -> Path:
        """The path to the checkpoint state file (its plain, JSON part)."""
        return self.checkpoint_dir / STATE_FILE

    @classmethod
    def get_checkpoint_base_dir_from_run_id(cls, run_id: str) -> Path:
        """Get the base directory for a checkpoint from a run ID.

        Resolved against the default storage root (``$RAYTRAINER_STORAGE``, else
        ``./raytrainer_runs``).

        Parameters
        ----------
        run_id : str
            The run ID.

        Returns
        -------
        checkpoint_base_dir : Path
            The path to the base directory for the checkpoint.
        """
        return default_storage_root() / run_id

    # ------------------------------------------------------------------ helpers for subclasses

    def record_metrics(
        self, metrics: Mapping[str, float | torch.Tensor] | None = None, **kw: float
    ) -> None:
        """Record the latest value of metrics; the next :meth:`save_checkpoint` reports them."""
        for name, value in {**(metrics or {}), **kw}.items():
            self.metrics[name] = float(value)

    def make_sampler(self, num_samples: int) -> ShardedBatchSampler:
        """Return a sampler of this rank's share of each global batch (``batch_size``)."""
        return ShardedBatchSampler(
            num_samples,
            self.hyper_params.batch_size,
            self.hyper_params.seed,
            self.settings.world_rank,
            self.settings.world_size,
        )

    def prepare_model(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a module to the device, wrapped for data parallelism when there are workers."""
        module = module.to(self.device)
        if self.settings.world_size > 1 and dist.is_available() and dist.is_initialized():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        return module

    @staticmethod
    def unwrap_model(module: torch.nn.Module) -> torch.nn.Module:
        """Return the module inside a DDP wrapper, so checkpoints match across runners."""
        return (
            module.module
            if isinstance(module, torch.nn.parallel.DistributedDataParallel)
            else module
        )

    # ------------------------------------------------------------------ checkpoints

    def _get_metadata(self) -> dict:
        """Get metadata relevant to the current experiment, for saving the checkpoint.

        Returns
        -------
        metadata : dict
            Package name and version, git sha (``None`` outside a checkout), creation time,
            run id, trainer class, iteration and world size.
        """
        return {
            "package": "raytrainer",
            "package_version": __version__,
            "git_sha": _git_sha(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": self.run_id,
            "trainer": f"{type(self).__module__}:{type(self).__qualname__}",
            "iteration": self.iteration,
            "world_size": self.settings.world_size,
        }

    def _full_state(self) -> dict[str, Any]:
        """The subclass's state plus the base class's: iteration, metrics, every rank's RNG."""
        state = self._state_dict()
        reserved = [key for key in state if key.startswith("_")]
        if reserved:
            raise CheckpointStateError(
                f"state keys {reserved} start with '_', which is reserved for the base class."
            )
        rng = get_rng_state()
        if self.settings.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * self.settings.world_size
            dist.all_gather_object(gathered, rng)  # every rank's stream, kept by rank 0
            rngs = dict(enumerate(gathered))
        else:
            rngs = {self.settings.world_rank: rng}
        return {
            **state,
            "_trainer": {
                "iteration": self.iteration,
                "metrics": dict(self.metrics),
                "best_score": self._best_score,
            },
            "_rng": rngs,
        }

    def _set_full_state(self, state: dict[str, Any]) -> None:
        trainer_state = state.pop("_trainer")
        rngs = state.pop("_rng")
        self.iteration = int(trainer_state["iteration"])
        self.metrics = dict(trainer_state["metrics"])
        self._best_score = trainer_state.get("best_score")
        self._load_state_dict(state)
        own = rngs.get(self.settings.world_rank)
        if own is None or len(rngs) != self.settings.world_size:
            self.logger.warning(
                "checkpoint holds RNG state for %d rank(s) but this run has %d; random streams "
                "are reseeded, so the resume is not exact.",
                len(rngs),
                self.settings.world_size,
            )
            seed_everything(self.hyper_params.seed + self.settings.world_rank + self.iteration)
        else:
            set_rng_state(own)

    def _check_loaded(self, loaded: LoadedCheckpoint, compare_params: bool) -> None:
        """Log a package-version difference and, for the active run, a hyper-parameter diff."""
        their_version = loaded.metadata.get("package_version")
        if their_version != __version__:
            self.logger.warning(
                "checkpoint %s was written by raytrainer %s; this is %s.",
                loaded.path,
                their_version,
                __version__,
            )
        if compare_params:
            theirs = type(self.hyper_params).from_saved(loaded.hyper_params)
            diff = theirs.diff(self.hyper_params)
            if diff:
                lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                self.logger.warning("hyper-parameters differ from the checkpoint's: %s", lines)

    def _load_state_dict_from_active_run_checkpoint(self) -> dict:
        """Load the experiment state from a checkpoint for the active run, if available.

        Reads from the run's own storage (the backend), newest checkpoint first; a checkpoint
        that fails verification is skipped with a warning and the previous one is tried.

        Returns
        -------
        state_dict : dict
            The state as a dictionary, loaded from the run's storage.

        Raises
        ------
        CheckPointNotFoundError
            If the run has no checkpoint that verifies.
        """
        skipped = []
        for directory in self.backend.checkpoint_candidates():
            try:
                loaded = read_checkpoint(directory, map_location=self.device)
            except CheckpointCorruptError as exc:
                self.logger.warning("skipping corrupt checkpoint: %s", exc)
                skipped.append(directory.name)
                continue
            self._check_loaded(loaded, compare_params=True)
            self.logger.info("resuming run %s from %s", self.run_id, loaded.path)
            return loaded.state
        detail = f" (corrupt: {', '.join(skipped)})" if skipped else ""
        raise CheckPointNotFoundError(
            f"run {self.run_id!r} has no usable checkpoint in "
            f"{self.checkpoint_storage_uri}{detail}."
        )

    def _load_state_dict_from_base_run_checkpoint(self, version: str = "latest") -> dict:
        """Load the experiment state from a base run checkpoint.

        The base run is ``hyper_params.base_run``: its ``run_id`` under its ``storage_path``
        (a folder or URI), or, when it names a W&B ``project`` and no storage path, its
        artifact ``entity/project/state_<run_id>:<version>``.

        Parameters
        ----------
        version : str, default="latest"
            ``"latest"``, an iteration number, a checkpoint folder name, or (from W&B) an
            alias or version such as ``"best"`` or ``"v3"``.

        Returns
        -------
        state_dict : dict
            The state as a dictionary.

        Raises
        ------
        CheckPointNotFoundError
            If the checkpoint is not found.
        """
        base = self.hyper_params.base_run
        if base is None:
            raise CheckPointNotFoundError(
                "no base run is configured; set the 'base_run' section of the hyper-parameters."
            )
        with tempfile.TemporaryDirectory(prefix="raytrainer-base-") as workdir:
            directory = fetch_base_run_checkpoint(
                base, version, self.wandb_client_cls(), Path(workdir)
            )
            loaded = read_checkpoint(directory, map_location=self.device)
        self._check_loaded(loaded, compare_params=False)
        self.logger.info("warm start of run %s from base run checkpoint %s", self.run_id, directory)
        return loaded.state

    def load_and_set_state_from_checkpoint(
        self, from_base_run: bool = False, version: str = "latest"
    ) -> None:
        """Load and set the experiment state from a checkpoint, if available.

        Parameters
        ----------
        from_base_run : bool, default=False
            Load from the base run (``hyper_params.base_run``) instead of the active run.
        version : str, default="latest"
            The checkpoint to load; must be ``"latest"`` for the active run.

        Raises
        ------
        CheckPointNotFoundError
            If the checkpoint is not found.
        """
        if from_base_run:
            state = self._load_state_dict_from_base_run_checkpoint(version)
        else:
            if version != "latest":
                raise ValueError("the active run always resumes from its 'latest' checkpoint.")
            state = self._load_state_dict_from_active_run_checkpoint()
        self._set_full_state(state)

    def save_checkpoint(self, log: bool = True) -> None:
        """Save the state of the experiment to a checkpoint.

        Runs on every rank: the RNG states are gathered, rank 0 writes the folder, and every
        rank calls the backend's ``persist`` (a barrier under Ray). Reports
        ``{"iteration", **recorded metrics}`` with the checkpoint.

        Parameters
        ----------
        log : bool, default=True
            Whether to log the checkpointing.
        """
        metric = self.settings.checkpoint_score_metric
        if metric is not None and metric not in self.metrics:
            raise MetricError(
                f"checkpoint_score_metric {metric!r} has not been recorded; call "
                f"record_metrics({metric}=...) before save_checkpoint(). "
                f"Recorded: {sorted(self.metrics) or 'none'}."
            )
        started = time.perf_counter()
        is_best = False
        if metric is not None:
            score = self.metrics[metric] * (
                1 if self.settings.checkpoint_score_order == "max" else -1
            )
            is_best = self._best_score is None or score > self._best_score
            self._best_score = score if is_best else self._best_score
        state = self._full_state()
        metrics = {"iteration": self.iteration, **self.metrics}
        directory = staged = None
        if self.settings.is_rank_zero:
            metadata = {**self._get_metadata(), "metrics": metrics}
            directory = self.checkpoint_dir
            digests = write_checkpoint(directory, state, self.hyper_params.to_saved(), metadata)[
                "files"
            ]
            expected = storage.join(self.checkpoint_storage_uri, directory.name)
            staged = self._mirror.stage(directory, expected) if self._mirror else None
        location = self.backend.persist(directory, self.iteration, metrics)
        if self._mirror is not None:
            self._mirror.log_metrics(metrics)
            self._mirror.mirror_checkpoint(
                staged, location, self.iteration, metrics, digests, is_best
            )
        if log and self.settings.is_rank_zero:
            self.logger.info(
                "saved checkpoint %s at iteration %d in %.3fs",
                location,
                self.iteration,
                time.perf_counter() - started,
            )

    def _add_file_to_wandb_artifact(
        self, artifact_name: str, artifact_type: str, file_path: Path
    ) -> None:
        """Add a file to a W&B artifact, creating the artifact if it doesn't exist.

        The new version holds the previous version's files plus this one. It is written to a
        local, versioned folder ``<checkpoint_base_dir>/artifacts/<name>/v<k>/`` with a
        ``manifest.json`` of digests. Runs on rank 0; other ranks do nothing.

        Parameters
        ----------
        artifact_name : str
            The name of the artifact to add the file to, without alias or version.
        artifact_type : str
            The type of the artifact.
        file_path : Path
            The path to the file to add to the artifact.
        """
        if not self.settings.is_rank_zero:
            return
        if ":" in artifact_name or "/" in artifact_name:
            raise ConfigError(
                f"artifact name {artifact_name!r} must not contain a version, alias or path."
            )
        file_path = Path(file_path)
        if not file_path.is_file():
            raise FileNotFoundError(f"cannot add {str(file_path)!r} to an artifact: no such file.")
        root = self.checkpoint_base_dir / _ARTIFACTS_DIR / artifact_name
        versions = sorted(
            (int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()), reverse=True
        )
        new = root / f"v{versions[0] + 1 if versions else 0}"
        tmp = root / f".tmp-{new.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        if versions:
            shutil.copytree(root / f"v{versions[0]}", tmp)
            (tmp / "manifest.json").unlink(missing_ok=True)
        else:
            tmp.mkdir(parents=True)
        shutil.copy2(file_path, tmp / file_path.name)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "name": artifact_name,
            "type": artifact_type,
            "version": new.name,
            "iteration": self.iteration,
            "files": {name: file_digest(tmp / name) for name in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        tmp.rename(new)
        if self._mirror is not None:
            self._mirror.add_file_version(artifact_name, artifact_type, new, file_path.name)

    # ------------------------------------------------------------------ progress

    def get_total_num_iterations(self) -> int:
        """Get the total number of iterations that the trainer will run for.

        This is the sum of the number of iterations declared by methods decorated with
        :func:`attach_progress_bar`.

        Returns
        -------
        total_iterations : int
            The total number of iterations.
        """
        total = 0
        for name in dir(type(self)):
            func = getattr(type(self), name, None)
            count = getattr(func, "_num_iterations_func", None)
            if count is not None:
                total += int(count(self))
        return total
