"""Settings: everything that does not change the result of a run.

Each field is declared once, with its documentation beside it; ``raytrainer run``'s flags, their
help and the class docstring are generated from these declarations (``raytrainer.cli``), so the
command line, the environment and the Python API share one default per setting.
:class:`Scaling` (how many Ray workers, what each gets) is declared the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from raytrainer.errors import ConfigError
from raytrainer.progress import ProgressBarFactory, tqdm_progress_bar

if TYPE_CHECKING:
    from raytrainer.backends.base import Backend


def setting(
    default: Any = MISSING,
    doc: str = "",
    *,
    default_factory: Callable[[], Any] | None = None,
    default_doc: str | None = None,
    flags: tuple[str, ...] = (),
    cli: bool = True,
    per_process: bool = False,
    runner: Literal["local", "ray"] | None = None,
    sweep: bool = True,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """Declare a settings field with its documentation.

    Parameters
    ----------
    default, default_factory
        The default value, or a function that computes it when the settings are built (one
        that reads an environment variable, say).
    doc : str
        What the setting means; the CLI help and the class docstring use it.
    default_doc : str or None
        How the default reads in the help, when it is not simply ``default``.
    flags : tuple of str
        Extra command-line spellings (the flag named after the field always exists).
    cli : bool
        Whether ``raytrainer run`` has a flag for it (not for objects such as the logger).
    per_process : bool
        Set by each process for itself (device, ranks, backend); never sent to Ray workers.
    runner : {"local", "ray"} or None
        The only runner the setting applies to; the CLI refuses its flag with the other one.
    sweep : bool
        Whether a sweep (its file's ``settings`` or ``raytrainer sweep``) may set it.
    parse : Callable[[str], Any] or None
        Reads the flag's text, for a field whose type the CLI does not read by itself.
    """
    metadata = {
        "doc": doc,
        "default_doc": default_doc,
        "flags": flags,
        "cli": cli,
        "per_process": per_process,
        "runner": runner,
        "sweep": sweep and runner != "local",
        "parse": parse,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _env(name: str, default: str | None = None) -> Callable[[], str | None]:
    return lambda: os.environ.get(name) or default


def _env_tags() -> tuple[str, ...]:
    return tuple(t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip())


_WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's own spellings


def _default_wandb_mode() -> str:
    """``$WANDB_MODE`` as W&B reads it; else ``online`` when W&B has an API key, else offline.

    W&B itself defaults to online and stops a process that has no API key; a first run should
    not fail for want of a W&B account, so without a key the mirror records offline instead.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return _WANDB_MODE_ALIASES.get(mode, mode)
    return "online" if _wandb_has_api_key() else "offline"


def _wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _document(cls: type, summary: str) -> str:
    """A NumPy-style docstring whose Parameters section comes from the fields' docs."""
    lines = [summary, "", "Parameters", "----------"]
    for f in fields(cls):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        lines.append(f"{f.name} : {annotation}")
        default = f.metadata.get("default_doc") or (
            repr(f.default) if f.default is not MISSING else None
        )
        doc = f.metadata.get("doc", "") + (f" Default: {default}." if default else "")
        lines.append(f"    {doc}")
    return "\n".join(lines)


@dataclass
class ExperimentSettings:
    """The instance-specific settings of a run: device, storage, logging, checkpointing."""

    device: str = setting(
        "auto",
        "Torch device of an in-process run: auto (CUDA when available), cpu, cuda, cuda:1; "
        "Ray workers get theirs from Ray (--gpus-per-worker).",
        per_process=True,
        runner="local",
    )
    run_id: str | None = setting(
        None, "The run id.", default_doc="a stable hash of the hyper-parameters"
    )
    storage_path: str | None = setting(
        None,
        "Where the run's checkpoints are kept: a folder or a URI (s3://bucket/prefix).",
        default_doc="$RAYTRAINER_STORAGE, else ./raytrainer_runs",
    )
    data_root: str | None = setting(
        None,
        "Where scenarios cache the data they generate: a folder or a URI.",
        default_doc="the storage root",
    )
    backend: Backend | None = setting(
        None,
        "Where reports and checkpoints go; the runner sets it (build_trainer: in-process).",
        cli=False,
        per_process=True,
    )
    logger: logging.Logger | None = setting(
        None,
        "Logger for the trainer; None is the 'raytrainer' logger.",
        cli=False,
        per_process=True,
    )
    checkpoint_period: int = setting(
        100, "Iterations between checkpoints; trainers save when iteration % period == 0."
    )
    num_to_keep: int | None = setting(
        3,
        "Checkpoints kept: the newest N, or with a score metric the N best plus the newest "
        "(as Ray keeps them); none keeps all.",
    )
    checkpoint_score_metric: str | None = setting(
        None,
        "Metric that ranks checkpoints for retention and the W&B 'best' alias.",
        flags=("--score-metric",),
    )
    checkpoint_score_order: Literal["max", "min"] | None = setting(
        None,
        "Whether a higher (max) or a lower (min) score metric is better; required with one.",
        flags=("--score-order",),
    )
    progress_bar_factory: ProgressBarFactory | None = setting(
        tqdm_progress_bar,
        "Builds the progress bar; None shows none (raytrainer run --no-progress).",
        default_doc="a tqdm bar",
        cli=False,
        per_process=True,
    )
    stop_requested: Callable[[], bool] | None = setting(
        None,
        "Asked at every step; True makes the trainer save a checkpoint and stop (the runners "
        "set it: SIGTERM).",
        cli=False,
        per_process=True,
    )
    preempted: Callable[[], bool] | None = setting(
        None,
        "Asked at every step; True (a node of the run is being drained: Ray Train's preemption "
        "notice) makes the trainer save a checkpoint and raise NodePreempted (the Ray runner "
        "sets it).",
        cli=False,
        per_process=True,
    )
    sync_saves: bool = setting(
        False,
        "Under Ray, make save_checkpoint() return only once the checkpoint is in storage "
        "(by default a copy is written and persisted on a background thread while training "
        "goes on, one at a time).",
        runner="ray",
    )
    log_period: int = setting(
        50,
        "Iterations between logs of the recorded metrics to W&B and the progress bar "
        "(loops decorated with attach_progress_bar log as they step; Lightning's default).",
    )
    test_run: int = setting(
        0,
        "A dry run of N iterations (0: a real run): a throwaway run id in a temporary folder, "
        "W&B disabled, a checkpoint saved and resumed from; the real run is never touched.",
        cli=False,  # raytrainer run --test-run [N]
    )
    do_not_load_checkpoint: bool = setting(
        False,
        "Start from scratch; a run that already has checkpoints refuses (see --restart).",
        flags=("--no-load",),
        sweep=False,  # a trial restored by Tune (PBT, a restart) must load its checkpoint
    )
    restart: bool = setting(
        False,
        "Start the run over: its folder is moved aside to <run id>-replaced-<time> first.",
        sweep=False,
    )
    verbose: bool = setting(False, "Show Ray's own log lines for every report and checkpoint.")
    max_failures: int = setting(
        0,
        "Worker-group restarts allowed under Ray before the run fails (-1: unlimited).",
        runner="ray",
    )
    worker_env: Mapping[str, str] = setting(
        doc="Environment variables set in every Ray process of the run: KEY=VALUE, or KEY "
        "for the value it has here.",
        default_factory=dict,
        default_doc="none",
        runner="ray",
    )
    world_rank: int = setting(
        0, "This process's rank; set by the Ray runner.", cli=False, per_process=True
    )
    local_rank: int = setting(0, "This process's rank on its node.", cli=False, per_process=True)
    world_size: int = setting(1, "The number of training processes.", cli=False, per_process=True)
    wandb_mode: Literal["disabled", "offline", "online"] = setting(
        doc="W&B mode: online, offline or disabled.",
        default_factory=_default_wandb_mode,
        default_doc="$WANDB_MODE, else online when W&B has an API key, else offline",
    )
    wandb_project: str = setting(
        doc="W&B project.",
        default_factory=_env("WANDB_PROJECT", "raytrainer"),
        default_doc="$WANDB_PROJECT, else raytrainer",
    )
    wandb_entity: str | None = setting(
        doc="W&B entity (team or user).",
        default_factory=_env("WANDB_ENTITY"),
        default_doc="$WANDB_ENTITY, else your W&B default",
    )
    wandb_tags: tuple[str, ...] = setting(
        doc="W&B tags; repeat the flag for several.",
        default_factory=_env_tags,
        default_doc="$WANDB_TAGS (comma-separated)",
        flags=("--wandb-tag",),
    )
    wandb_group: str | None = setting(
        doc="W&B run group.",
        default_factory=_env("WANDB_RUN_GROUP"),
        default_doc="$WANDB_RUN_GROUP",
    )
    wandb_flush_timeout: float = setting(
        120.0, "Seconds the end of a run waits for the W&B mirror before naming what it missed."
    )
    wandb_digest_algorithm: Literal["XXH128", "MD5"] = setting(
        "XXH128",
        "How W&B fingerprints mirrored files; MD5 for a self-hosted server without XXH128.",
        flags=("--wandb-digest",),
    )

    def __post_init__(self) -> None:
        _check(self.checkpoint_period >= 1, "checkpoint_period", self.checkpoint_period, ">= 1")
        _check(
            self.num_to_keep is None or self.num_to_keep >= 1,
            "num_to_keep",
            self.num_to_keep,
            ">= 1, or None to keep all ('none' on the command line)",
        )
        _check(
            self.checkpoint_score_order in ("max", "min", None),
            "checkpoint_score_order",
            self.checkpoint_score_order,
            "'max' or 'min'",
        )
        _check(
            self.checkpoint_score_metric is None or self.checkpoint_score_order is not None,
            "checkpoint_score_order",
            None,
            f"'min' or 'max' with checkpoint_score_metric={self.checkpoint_score_metric!r}: "
            "say whether a lower or a higher value is better (--score-order min|max)",
        )
        _check(self.log_period >= 1, "log_period", self.log_period, ">= 1")
        _check(self.test_run >= 0 and self.test_run != 1, "test_run", self.test_run, "0 or >= 2")
        _check(
            self.wandb_mode in ("disabled", "offline", "online"),
            "wandb_mode",
            self.wandb_mode,
            "'disabled', 'offline' or 'online' (also read from $WANDB_MODE)",
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

        Leaves out what each process sets for itself (device, ranks, backend, progress bar)
        and what cannot cross processes (the logger).
        """
        return {
            f.name: getattr(self, f.name) for f in fields(self) if not f.metadata["per_process"]
        }

    def get_logger(self) -> logging.Logger:
        """Return the configured logger, or the ``raytrainer`` logger."""
        return self.logger or logging.getLogger("raytrainer")


ExperimentSettings.__doc__ = _document(ExperimentSettings, ExperimentSettings.__doc__ or "")


def sweep_settings() -> set[str]:
    """The settings a sweep may set: in its file's ``settings`` or as ``raytrainer sweep`` flags.

    Not the device (a trial gets its own from Ray) nor ``restart``/``do_not_load_checkpoint``
    (a trial Tune restores must load the checkpoint it is handed).
    """
    return {f.name for f in fields(ExperimentSettings) if f.metadata["cli"] and f.metadata["sweep"]}


def parse_worker_count(text: str) -> int | tuple[int, int]:
    """Read ``--num-workers``: ``N``, or ``MIN-MAX`` for an elastic run."""
    low, dash, high = text.partition("-")
    try:
        return (int(low), int(high)) if dash else int(low)
    except ValueError:
        raise ConfigError(
            f"--num-workers {text!r} is invalid: give a count (2) or a range (1-4)."
        ) from None


@dataclass(frozen=True)
class Scaling:
    """How many Ray Train workers a run (or each sweep trial) uses, and what each gets."""

    num_workers: int | tuple[int, int] = setting(
        1,
        "Ray Train workers (DDP ranks); batch_size is divided among them. MIN-MAX makes the "
        "run elastic: Ray Train runs as many as the cluster has room for in that range and "
        "resizes the group as nodes come and go, resuming from the last checkpoint.",
        runner="ray",
        parse=parse_worker_count,
    )
    gpus_per_worker: float = setting(0, "GPUs per worker; 0 trains on CPU with gloo.", runner="ray")
    cpus_per_worker: float = setting(1, "CPUs reserved per worker.", runner="ray")

    def __post_init__(self) -> None:
        if isinstance(self.num_workers, list):  # a range from YAML or JSON
            object.__setattr__(self, "num_workers", tuple(self.num_workers))
        counts = self.num_workers if isinstance(self.num_workers, tuple) else (self.num_workers,)
        if not (
            len(counts) in (1, 2)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts)
            and counts[0] <= counts[-1]
        ):
            raise ConfigError(
                f"scaling num_workers={self.num_workers!r} is invalid: it must be a positive "
                "count, or a range MIN-MAX with 1 <= MIN <= MAX."
            )
        for name, value, ok in (
            ("gpus_per_worker", self.gpus_per_worker, self.gpus_per_worker >= 0),
            ("cpus_per_worker", self.cpus_per_worker, self.cpus_per_worker > 0),
        ):
            if not ok:
                raise ConfigError(f"scaling {name}={value!r} is invalid: it must be positive.")

    @property
    def worker_counts(self) -> range:
        """Every worker count the run may have: one, or the elastic range."""
        if isinstance(self.num_workers, tuple):
            return range(self.num_workers[0], self.num_workers[1] + 1)
        return range(self.num_workers, self.num_workers + 1)

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse a global ``batch_size`` that some worker count of the run cannot share.

        Raises
        ------
        ConfigError
            Naming the first count that does not divide it.
        """
        for count in self.worker_counts:  # an elastic run may get any count of its range
            if batch_size % count:
                raise ConfigError(
                    f"batch_size={batch_size} is the global batch and must divide by every "
                    f"worker count the run may have, and not by {count}; change batch_size or "
                    "--num-workers."
                )


Scaling.__doc__ = _document(Scaling, Scaling.__doc__ or "")


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"setting {name}={value!r} is invalid: expected {expected}.")
