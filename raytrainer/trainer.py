"""The ``Trainer`` base class: the seed's API, run unchanged in-process or as Ray workers.

A subclass builds its models in ``_build``, exposes its state through ``_state_dict`` /
``_load_state_dict`` and implements ``train``. The base class decides when state is restored;
how is ``checkpoint/checkpointer.py``'s business, and where, the backend's (``settings.backend``).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from raytrainer import storage
from raytrainer.backends.base import Backend
from raytrainer.checkpoint.checkpointer import Checkpointer, run_metadata
from raytrainer.checkpoint.layout import (
    METADATA_FILE,
    PARAMS_FILE,
    STATE_FILE,
    checkpoint_dir_name,
)
from raytrainer.checkpoint.wandb_mirror import WandbClient
from raytrainer.errors import CheckPointNotFoundError, ConfigError, NodePreempted, RunStopped
from raytrainer.parallel import DataParallelMixin
from raytrainer.params import HyperParameters
from raytrainer.progress import ProgressBar, show_metrics, total_iterations
from raytrainer.protocols import ProtocolHandler
from raytrainer.registry import Registry
from raytrainer.rng import seed_everything
from raytrainer.scenario import ScenarioInstance
from raytrainer.settings import ExperimentSettings

TRAINERS: Registry[type[Trainer]] = Registry("trainer", builtins="raytrainer.trainers")
register_trainer = TRAINERS.register


class Trainer(DataParallelMixin, ABC):
    """Base class for all trainers.

    Parameters
    ----------
    hyper_params : HyperParameters
        The parameters of the experiment.
    scenario_instance : ScenarioInstance
        The components of the experiment.
    settings : ExperimentSettings
        The instance-specific settings of the experiment, like device, logging, etc. Its
        ``run_id`` and ``backend`` are set by the runner (or :func:`raytrainer.build_trainer`).

    Notes
    -----
    ``__init__`` seeds every generator from ``hyper_params.seed`` (plus the rank), calls
    :meth:`_build`, then restores the run's newest good checkpoint (unless
    ``settings.do_not_load_checkpoint``); without one it warm-starts from
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
        if settings.backend is None or settings.run_id is None:
            raise ConfigError(
                "settings.backend and settings.run_id are set by the runner; use "
                "raytrainer.build_trainer, or settings from raytrainer.build.local_settings."
            )
        self.hyper_params = hyper_params
        self.scenario_instance = scenario_instance
        self.settings = settings
        self.logger = settings.get_logger()
        self.device = torch.device(settings.device)
        self.run_id: str = settings.run_id
        self.backend: Backend = settings.backend
        self.iteration = 0
        self.metrics: dict[str, float] = {}
        self._progress_bar: ProgressBar | None = None
        self._checkpointer = Checkpointer(
            settings, hyper_params, self.backend, self.device, self.wandb_client_cls
        )
        try:
            self._restore_or_initialise()
        except BaseException:
            self._checkpointer.close(timeout=0)  # nothing to flush yet: do not wait for W&B
            raise

    def _restore_or_initialise(self) -> None:
        base_run = self.hyper_params.base_run
        seed_everything(self.hyper_params.seed + self.settings.world_rank)
        self._build()
        with contextlib.suppress(CheckPointNotFoundError):  # a run's first start has none
            if not self.settings.do_not_load_checkpoint:
                return self.load_and_set_state_from_checkpoint()
        if base_run is not None:
            self.load_and_set_state_from_checkpoint(from_base_run=True, version=base_run.version)
        else:
            self._initialise_state()

    def close(self) -> list[str]:
        """Flush the W&B mirror; return what it could not upload. Runners call it after train."""
        return self._checkpointer.close()

    # ------------------------------------------------------------------ hooks for subclasses

    def _build(self) -> None:
        """Build models, optimisers and samplers. Called once, before any state is restored."""

    def _initialise_state(self) -> None:
        """Initialise the state of the experiment (no checkpoint, no base run; after _build)."""

    def _state_dict(self) -> dict[str, Any]:
        """Return the subclass's state: module/optimiser state dicts, sampler positions, ...

        Tensors, numbers, strings, lists and dicts; an entry holding tensors is saved as
        ``<key>.pt``, the rest in ``state.json``. Keys starting with ``_`` are reserved.
        """
        return {}

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the subclass's state from what :meth:`_state_dict` returned."""

    def _apply_hyper_params(self) -> None:
        """Push ``self.hyper_params`` into built objects; called after every restore.

        A loaded optimizer state carries its saved learning rate, while after a PBT exploit the
        hyper-parameters hold the mutated one: set ``group["lr"]`` and the like here.
        """

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
        """The local folder this process writes checkpoints into (a staging folder under Ray).

        Where checkpoints are *kept* is :attr:`checkpoint_storage_uri`.
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
        """
        return storage.default_root() / run_id

    def record_metrics(
        self, metrics: Mapping[str, float | torch.Tensor] | None = None, **kw: float
    ) -> None:
        """Record the latest value of metrics; the next :meth:`save_checkpoint` reports them.

        Every ``settings.log_period`` iterations a progress step logs them to W&B and the bar.
        """
        for name, value in {**(metrics or {}), **kw}.items():
            self.metrics[name] = float(value)

    def _after_step(self, bar: ProgressBar | None) -> None:
        if self.metrics and self.iteration % self.settings.log_period == 0:
            self._checkpointer.log_metrics(self.iteration, self.metrics)
            show_metrics(bar, self.metrics)
        stop, preempted = self._interruptions()
        # At the last iteration the run's own end saves, and nothing is left to lose.
        preempted = preempted and self.iteration < self.get_total_num_iterations()
        if (stop or preempted) and self._checkpointer.last_saved_iteration != self.iteration:
            self.save_checkpoint()
        if stop:
            raise RunStopped(self.run_id, self.iteration)
        if preempted:
            raise NodePreempted(self.run_id, self.iteration)

    def _interruptions(self) -> tuple[bool, bool]:
        """Whether any rank was asked to stop, and whether any got a preemption notice.

        Every rank gets the same answers at each step, so all save at one iteration.
        """
        checks = (self.settings.stop_requested, self.settings.preempted)
        flags = [bool(check is not None and check()) for check in checks]
        if self.settings.world_size > 1 and dist.is_available() and dist.is_initialized():
            agreed = torch.tensor(flags, dtype=torch.float32, device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)  # one small all-reduce a step
            flags = [bool(flag) for flag in agreed.tolist()]
        return flags[0], flags[1]

    # ------------------------------------------------------------------ checkpoints

    def _get_metadata(self) -> dict:
        """Get metadata relevant to the current experiment, for saving the checkpoint.

        Package name and version, git sha (``None`` outside a checkout), creation time, run id,
        trainer class, iteration and world size.
        """
        return run_metadata(self.run_id, type(self), self.iteration, self.settings.world_size)

    def _load_state_dict_from_active_run_checkpoint(self) -> dict:
        """Load the experiment state from a checkpoint for the active run, if available.

        The newest checkpoint in the run's own storage that verifies; corrupt ones are skipped
        with a warning. Raises :class:`CheckPointNotFoundError` if none verifies.
        """
        return self._checkpointer.load_active_run()

    def _load_state_dict_from_base_run_checkpoint(self, version: str = "latest") -> dict:
        """Load the experiment state from a base run checkpoint (``hyper_params.base_run``).

        From the base run's storage, or its W&B artifact ``state_<run_id>:<version>`` when it
        names a ``project`` and no ``storage_path``. ``version`` is ``"latest"``, an iteration,
        a folder name, or a W&B alias/version (``"best"``, ``"v3"``). Raises
        :class:`CheckPointNotFoundError` if the checkpoint is not found.
        """
        return self._checkpointer.load_base_run(version)

    def load_and_set_state_from_checkpoint(
        self, from_base_run: bool = False, version: str = "latest"
    ) -> None:
        """Load and set the experiment state from a checkpoint, if available.

        ``from_base_run`` loads the base run's checkpoint ``version`` instead of the active
        run's newest (``version`` must then be ``"latest"``). Raises
        :class:`CheckPointNotFoundError` if the checkpoint is not found.
        """
        if from_base_run:
            state = self._load_state_dict_from_base_run_checkpoint(version)
        else:
            if version != "latest":
                raise ValueError("the active run always resumes from its 'latest' checkpoint.")
            state = self._load_state_dict_from_active_run_checkpoint()
        self._checkpointer.restore(state, self._apply_state)

    def _apply_state(self, iteration: int, metrics: dict[str, float], state: dict) -> None:
        self.iteration, self.metrics = iteration, metrics
        self._load_state_dict(state)
        self._apply_hyper_params()

    def save_checkpoint(self, log: bool = True) -> None:
        """Save the state of the experiment to a checkpoint.

        Runs on every rank: the RNG states are gathered, rank 0 writes the folder, and every
        rank calls the backend's ``persist`` (a barrier under Ray), reporting ``{"iteration",
        **recorded metrics}``; rank 0's W&B mirror uploads it later from its own thread.
        Under Ray (unless ``settings.sync_saves``) it returns once the state is copied: the
        writing and persisting happen on a background thread, one save at a time, and the
        next save, a load and the end of the run wait for it. ``log`` says whether to log the
        checkpointing.
        """
        self._checkpointer.save(
            self._state_dict(), self.iteration, self.metrics, self._get_metadata, log
        )

    def _add_file_to_wandb_artifact(
        self, artifact_name: str, artifact_type: str, file_path: Path
    ) -> None:
        """Add a file to a W&B artifact, creating the artifact if it doesn't exist.

        The new version (the previous version's files plus this one) is written to
        ``<checkpoint_base_dir>/artifacts/<name>/v<k>/`` with a ``manifest.json`` of digests and
        queued for W&B. ``artifact_name`` has no alias or version. Runs on rank 0 only.
        """
        self._checkpointer.add_artifact_file(
            artifact_name, artifact_type, file_path, self.iteration
        )

    def get_total_num_iterations(self) -> int:
        """Get the total number of iterations that the trainer will run for.

        This is the sum of the number of iterations declared by methods decorated with
        :func:`attach_progress_bar`.
        """
        return total_iterations(self)
