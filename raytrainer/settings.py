"""Experiment settings: everything that does not change the result of a run."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from raytrainer.errors import ConfigError
from raytrainer.storage import is_uri

if TYPE_CHECKING:
    from raytrainer.backends import Backend

STORAGE_ENV_VAR = "RAYTRAINER_STORAGE"
"""Environment variable that sets the default storage root (default ``./raytrainer_runs``)."""


def default_storage_location() -> str:
    """Return the default storage root: ``$RAYTRAINER_STORAGE`` or ``./raytrainer_runs``.

    A URI (``s3://bucket/runs``) is returned as it is, a folder as an absolute path.
    """
    location = os.environ.get(STORAGE_ENV_VAR) or "raytrainer_runs"
    return location if is_uri(location) else str(Path(location).absolute())


def default_storage_root() -> Path:
    """Return the default storage root as a local folder.

    Raises
    ------
    ConfigError
        If ``$RAYTRAINER_STORAGE`` is a URI, which a local ``Path`` cannot hold.
    """
    location = default_storage_location()
    if is_uri(location):
        raise ConfigError(
            f"{STORAGE_ENV_VAR}={location!r} is a URI; this needs a local folder. "
            "Pass the URI as storage_path instead."
        )
    return Path(location)


class ProgressBar(Protocol):
    """What a progress-bar factory returns (``tqdm`` fits)."""

    def update(self, n: int = 1) -> Any:
        """Advance by ``n`` iterations."""

    def close(self) -> Any:
        """Finish the bar."""


ProgressBarFactory = Callable[..., ProgressBar]
"""Called as ``factory(total=..., initial=..., desc=...)``."""


def tqdm_progress_bar(total: int, initial: int = 0, desc: str = "") -> ProgressBar:
    """Default progress-bar factory: a ``tqdm`` bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


@dataclass
class ExperimentSettings:
    """The instance-specific settings of a run: device, storage, logging, checkpointing.

    Parameters
    ----------
    device : str
        Torch device the trainer puts its models on ("cpu", "cuda", "cuda:1").
    run_id : str or None
        The run id. ``None`` derives a stable id from the hyper-parameters.
    storage_path : str or None
        Where the run's checkpoints are kept: a folder or a URI. ``None`` is the default
        storage root (``$RAYTRAINER_STORAGE``, else ``./raytrainer_runs``).
    backend : Backend or None
        Where reports and checkpoints go. The runner sets it; ``None`` means an in-process
        local backend built from ``storage_path`` and ``run_id``.
    logger : logging.Logger or None
        Logger for the trainer; ``None`` is the ``raytrainer`` logger.
    checkpoint_period : int
        Iterations between checkpoints; trainers save when ``iteration % period == 0``.
    num_to_keep : int or None
        Newest (or best, with ``checkpoint_score_metric``) checkpoints kept; ``None`` keeps all.
    checkpoint_score_metric, checkpoint_score_order : str or None, {"max", "min"}
        Metric that ranks checkpoints for retention and the W&B ``best`` alias.
    progress_bar_factory : callable or None
        Builds the progress bar; ``None`` shows none.
    test_run : bool
        A quick check run: never loads a checkpoint.
    do_not_load_checkpoint : bool
        Start from scratch even if the run has checkpoints.
    max_failures : int
        Worker-group restarts allowed under Ray before the run fails (-1: unlimited).
    worker_env : Mapping[str, str]
        Environment variables set in every Ray worker (not in an in-process run).
    world_rank, local_rank, world_size : int
        This process's place among the workers; set by the Ray runner.
    wandb_mode : {"disabled", "offline", "online"}
        W&B mode; the project, entity, tags and group follow it.
    wandb_flush_timeout : float
        Seconds the end of a run waits for the W&B mirror before reporting what it missed.
    wandb_digest_algorithm : {"XXH128", "MD5"}
        How W&B fingerprints mirrored files. XXH128 hashes a checkpoint ~20x faster than MD5;
        choose MD5 for a self-hosted W&B server that does not know XXH128 artifacts.
    """

    device: str = "cpu"
    run_id: str | None = None
    storage_path: str | None = None
    backend: Backend | None = None
    logger: logging.Logger | None = None
    checkpoint_period: int = 100
    num_to_keep: int | None = 3
    checkpoint_score_metric: str | None = None
    checkpoint_score_order: Literal["max", "min"] = "max"
    progress_bar_factory: ProgressBarFactory | None = tqdm_progress_bar
    test_run: bool = False
    do_not_load_checkpoint: bool = False
    max_failures: int = 0
    worker_env: Mapping[str, str] = field(default_factory=dict)
    world_rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    wandb_mode: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_tags: tuple[str, ...] = field(default_factory=tuple)
    wandb_group: str | None = None
    wandb_flush_timeout: float = 120.0
    wandb_digest_algorithm: Literal["XXH128", "MD5"] = "XXH128"

    def __post_init__(self) -> None:
        _check(self.checkpoint_period >= 1, "checkpoint_period", self.checkpoint_period, ">= 1")
        _check(
            self.num_to_keep is None or self.num_to_keep >= 1,
            "num_to_keep",
            self.num_to_keep,
            ">= 1 or None",
        )
        _check(
            self.checkpoint_score_order in ("max", "min"),
            "checkpoint_score_order",
            self.checkpoint_score_order,
            "'max' or 'min'",
        )
        _check(
            self.wandb_mode in ("disabled", "offline", "online"),
            "wandb_mode",
            self.wandb_mode,
            "'disabled', 'offline' or 'online'",
        )
        _check(
            self.wandb_digest_algorithm in ("XXH128", "MD5"),
            "wandb_digest_algorithm",
            self.wandb_digest_algorithm,
            "'XXH128' or 'MD5'",
        )
        _check(self.max_failures >= -1, "max_failures", self.max_failures, ">= -1")
        _check(self.world_size >= 1, "world_size", self.world_size, ">= 1")
        _check(
            0 <= self.world_rank < self.world_size,
            "world_rank",
            self.world_rank,
            f"in 0..{self.world_size - 1}",
        )
        if self.run_id is not None:
            _check(
                bool(self.run_id) and "/" not in self.run_id and not self.run_id.startswith("."),
                "run_id",
                self.run_id,
                "a non-empty name without '/' that does not start with '.'",
            )
        self.wandb_tags = tuple(self.wandb_tags)

    @property
    def is_rank_zero(self) -> bool:
        """Whether this process is world rank 0 (the one that writes checkpoints)."""
        return self.world_rank == 0

    def to_worker_config(self) -> dict[str, Any]:
        """The plain fields a Ray worker rebuilds its settings from.

        Leaves out what each worker sets for itself (device, ranks, backend, progress bar) and
        what cannot cross processes (the logger).
        """
        own = {
            "device",
            "world_rank",
            "local_rank",
            "world_size",
            "backend",
            "logger",
            "progress_bar_factory",
        }
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in own}

    def get_logger(self) -> logging.Logger:
        """Return the configured logger, or the ``raytrainer`` logger."""
        return self.logger or logging.getLogger("raytrainer")


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"setting {name}={value!r} is invalid: expected {expected}.")
