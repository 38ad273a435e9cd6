"""The save and restore sequence of a training process, behind a few calls.

The trainer says ``checkpointer.save(...)``, ``load_active_run()``, ``load_base_run(version)``
and ``restore(state, ...)``; this module owns what happens in between — the best score, every
rank's RNG state, writing the folder (rank 0), staging it for W&B, persisting it through the
backend (every rank), mirroring it, and on the way back the search for the newest checkpoint
that verifies. Where checkpoints live is the backend's business; their layout is ``layout``'s.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from raytrainer import storage
from raytrainer._version import __version__
from raytrainer.backends.base import Backend
from raytrainer.checkpoint.artifacts import add_file_version
from raytrainer.checkpoint.layout import (
    LoadedCheckpoint,
    checkpoint_dir_name,
    read_checkpoint,
    write_checkpoint,
)
from raytrainer.checkpoint.sources import fetch_base_run_checkpoint
from raytrainer.checkpoint.wandb_mirror import WandbClient, open_mirror
from raytrainer.errors import (
    CheckpointCorruptError,
    CheckPointNotFoundError,
    CheckpointSaveError,
    CheckpointStateError,
    MetricError,
)
from raytrainer.params import HyperParameters
from raytrainer.rng import get_rng_state, seed_everything, set_rng_state
from raytrainer.settings import ExperimentSettings

TRAINER_KEY = "_trainer"
"""State entry of the base class: iteration, metrics, best score."""
RNG_KEY = "_rng"
"""State entry holding every rank's generator states, keyed by rank."""


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The commit of the checkout in the working directory, or ``None`` outside one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def snapshot(value: Any) -> Any:
    """Copy every tensor of a nested state to the CPU, so training may change the originals.

    Dicts, lists and tuples are rebuilt; other leaves (numbers, strings) are immutable.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(item) for item in value)
    return value


class RngGather:
    """Every rank's RNG state: captured now, gathered to rank 0 on the background save thread.

    The gather runs on the checkpoint's own gloo process group, whose collectives only the
    save threads issue (one save at a time, in the same order on every rank), so they never
    interleave with training's: serialising and exchanging the states costs training nothing.
    """

    def __init__(self, rng: dict[str, Any], world_size: int, group: Any) -> None:
        self._rng, self._world_size, self._group = rng, world_size, group

    def result(self) -> dict[int, dict[str, Any]]:
        """Gather to rank 0 (every rank calls this for the same save).

        Every rank's state by rank on rank 0, which writes them; nothing on the others.
        """
        rank_zero = dist.get_rank() == 0
        gathered: list[Any] | None = [None] * self._world_size if rank_zero else None
        dist.gather_object(self._rng, gathered, dst=0, group=self._group)
        return dict(enumerate(gathered)) if gathered is not None else {}


class BackgroundSave:
    """Runs one checkpoint save at a time on a thread of its own.

    :meth:`submit` first waits for the previous save; a save that failed raises
    :class:`CheckpointSaveError` at the next :meth:`submit` or :meth:`wait`, naming it.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._name = ""
        self._error: BaseException | None = None

    def submit(self, name: str, work: Callable[[], Any]) -> None:
        """Wait for the save in flight, then start ``work`` (saving checkpoint ``name``)."""
        self.wait()

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # raised on the training thread, at the next wait
                self._error = exc

        self._name = name
        self._thread = threading.Thread(target=run, name=f"raytrainer-save-{name}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight is done; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointSaveError(
                f"saving {self._name} failed in the background ({type(error).__name__}: "
                f"{error}); the previous checkpoint is intact and a restart resumes from it."
            ) from error


def derived_seed(rngs: Mapping[int, dict[str, Any]], rank: int, world_size: int) -> int:
    """A seed for ``rank`` of ``world_size`` from generator states saved by another count.

    Rank ``r`` takes saved rank ``r mod saved count``'s torch state, hashed with ``(r,
    world_size)``: deterministic, so resuming with the same counts twice gives the same streams,
    and distinct per rank.
    """
    saved = rngs[sorted(rngs)[rank % len(rngs)]]
    digest = hashlib.sha256(saved["torch"].numpy().tobytes())
    digest.update(f"{rank}/{world_size}".encode())
    return int.from_bytes(digest.digest()[:8], "little") % 2**63


def run_metadata(run_id: str, trainer_cls: type, iteration: int, world_size: int) -> dict:
    """Metadata of a checkpoint: package, version, git sha, time, run, trainer, iteration."""
    return {
        "package": "raytrainer",
        "package_version": __version__,
        "git_sha": git_sha(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        "trainer": f"{trainer_cls.__module__}:{trainer_cls.__qualname__}",
        "iteration": iteration,
        "world_size": world_size,
    }


class Checkpointer:
    """Saves and restores one training process's state; one per trainer.

    Parameters
    ----------
    settings : ExperimentSettings
        The run's settings (ranks, score metric, logger) with ``run_id`` resolved.
    hyper_params : HyperParameters
        Written into every checkpoint; compared with a resumed checkpoint's.
    backend : Backend
        Where checkpoints are persisted and found.
    device : torch.device
        Where loaded tensors go.
    wandb_client_cls : type[WandbClient]
        The seam to W&B: the mirror's calls, and fetching a base run's artifact.

    Notes
    -----
    On rank 0 with W&B on, it opens the run's W&B mirror, which uploads every persisted
    checkpoint and artifact version from its own thread; :meth:`close` flushes it.
    """

    def __init__(
        self,
        settings: ExperimentSettings,
        hyper_params: HyperParameters,
        backend: Backend,
        device: torch.device,
        wandb_client_cls: type[WandbClient] = WandbClient,
    ) -> None:
        self.settings = settings
        self.hyper_params = hyper_params
        self.backend = backend
        self.device = device
        self.wandb_client_cls = wandb_client_cls
        self.logger: logging.Logger = settings.get_logger()
        self.best_score: float | None = None
        self.restored_from: dict[str, Any] | None = None
        """The run and iteration of the checkpoint this process started from, if any."""
        self.last_saved_iteration: int | None = None  # by this process
        self._logged_iteration: int | None = None  # the last metrics row sent to W&B
        self._background = BackgroundSave()
        self._save_group: Any = None  # the background saves' process group (RngGather)
        self.mirror = open_mirror(
            settings, hyper_params.to_dict(), backend.staging_dir, wandb_client_cls
        )

    def close(self, timeout: float | None = None) -> list[str]:
        """Flush the W&B mirror, waiting at most ``timeout`` (default the flush timeout) seconds.

        Returns the names of checkpoints and artifacts that could not be mirrored (also logged
        as a warning). Closing twice is harmless. First waits for a save in progress.
        """
        self.wait_saved()
        if self.mirror is None:
            return []
        mirror, self.mirror = self.mirror, None
        return mirror.close(self.settings.wandb_flush_timeout if timeout is None else timeout)

    def add_artifact_file(
        self, artifact_name: str, artifact_type: str, file_path: Path, iteration: int
    ) -> None:
        """Write a new local version of an artifact holding ``file_path``; queue it for W&B.

        Runs on rank 0 (other ranks do nothing); see :func:`artifacts.add_file_version`.
        """
        if not self.settings.is_rank_zero:
            return
        version_dir = add_file_version(
            self.backend.staging_dir, artifact_name, artifact_type, file_path, iteration
        )
        if self.mirror is not None:
            self.mirror.add_file_version(
                artifact_name, artifact_type, version_dir, Path(file_path).name
            )

    def log_metrics(self, iteration: int, metrics: Mapping[str, float]) -> None:
        """Queue a row ``{"iteration", **metrics}`` for W&B; rank 0 only, never blocks.

        One row per iteration: a checkpoint at an iteration already logged adds none.
        """
        if self.mirror is None or iteration == self._logged_iteration:
            return
        self._logged_iteration = iteration
        self.mirror.log_metrics({"iteration": iteration, **metrics})

    # ------------------------------------------------------------------ saving

    def save(
        self,
        state: dict[str, Any],
        iteration: int,
        metrics: Mapping[str, float],
        metadata: Callable[[], dict[str, Any]],
        log: bool = True,
    ) -> str:
        """Save a checkpoint of ``state`` at ``iteration``; return where it is kept.

        Runs on every rank, on the training thread: the RNG states are gathered to rank 0,
        rank 0 writes the folder and stages it for W&B, and every rank calls the backend's
        ``persist`` (a barrier under Ray), which reports ``{"iteration", **metrics}``. The W&B
        upload happens later, on the mirror's thread.

        Parameters
        ----------
        state : dict
            The trainer's own state (``Trainer._state_dict()``).
        iteration : int
            The trainer's iteration; names the folder.
        metrics : Mapping[str, float]
            The latest recorded metrics.
        metadata : Callable[[], dict]
            Returns the checkpoint's metadata; called on rank 0 only.
        log : bool
            Whether to log the save.

        Raises
        ------
        MetricError
            If the score metric is configured but was not recorded.
        """
        settings = self.settings
        metric = settings.checkpoint_score_metric
        if metric is not None and metric not in metrics:
            raise MetricError(
                f"checkpoint_score_metric {metric!r} has not been recorded; call "
                f"record_metrics({metric}=...) before save_checkpoint(). "
                f"Recorded: {sorted(metrics) or 'none'}."
            )
        started = time.perf_counter()
        is_best = False
        if metric is not None:
            score = metrics[metric] * (1 if settings.checkpoint_score_order == "max" else -1)
            is_best = self.best_score is None or score > self.best_score
            self.best_score = score if is_best else self.best_score
        full_state = self._pack(state, iteration, metrics)
        reported = {"iteration": iteration, **metrics}
        meta = None
        if settings.is_rank_zero:
            meta = {
                **metadata(),
                "metrics": reported,
                "score_metric": metric,
                "score_order": settings.checkpoint_score_order,
                "restored_from": self.restored_from,
            }
        self.last_saved_iteration = iteration
        self.log_metrics(iteration, metrics)
        args = (iteration, reported, meta, is_best, log, started)
        if not self.backend.asynchronous:
            return self._write_and_persist(full_state, *args)
        # Training goes on while a copy is written and persisted; the next save, a load and
        # close() wait for it (at most one in flight).
        self._background.wait()
        copy = snapshot(full_state)
        blocked = time.perf_counter() - started
        self._background.submit(
            checkpoint_dir_name(iteration),
            lambda: self._write_and_persist(copy, *args, blocked),
        )
        return storage.join(self.backend.storage_uri, checkpoint_dir_name(iteration))

    def _write_and_persist(
        self,
        full_state: dict[str, Any],
        iteration: int,
        reported: dict[str, Any],
        meta: dict[str, Any] | None,
        is_best: bool,
        log: bool,
        started: float,
        blocked: float | None = None,
    ) -> str:
        """Rank 0 writes the folder and stages it for W&B; every rank persists it.

        ``started``: when the save began (``perf_counter``); ``blocked``: how long the training
        thread waited for a save made in the background.
        """
        if isinstance(full_state[RNG_KEY], RngGather):
            full_state = {**full_state, RNG_KEY: full_state[RNG_KEY].result()}
        directory = staged = digests = None
        if meta is not None:  # rank 0
            directory = self.backend.staging_dir / checkpoint_dir_name(iteration)
            written = write_checkpoint(directory, full_state, self.hyper_params.to_saved(), meta)
            digests = written["files"]
            if self.mirror is not None:
                expected = storage.join(self.backend.storage_uri, directory.name)
                staged = self.mirror.stage(directory, expected)
        location = self.backend.persist(directory, iteration, reported)
        if self.mirror is not None:
            self.mirror.mirror_checkpoint(staged, location, iteration, reported, digests, is_best)
        if log and self.settings.is_rank_zero:
            took = time.perf_counter() - started
            blocking = "" if blocked is None else f" (training blocked {blocked * 1e3:.2f} ms)"
            message = "saved checkpoint %s at iteration %d in %.3fs%s"
            self.logger.info(message, location, iteration, took, blocking)
        return location

    def wait_saved(self) -> None:
        """Wait until the checkpoint being saved in the background (if any) is in storage.

        Raises
        ------
        CheckpointSaveError
            If that save failed; it names the checkpoint.
        """
        self._background.wait()

    def _pack(
        self, state: dict[str, Any], iteration: int, metrics: Mapping[str, float]
    ) -> dict[str, Any]:
        """The trainer's state plus the base class's: iteration, metrics, every rank's RNG.

        Under an asynchronous backend the RNG entry is an :class:`RngGather`, which
        :meth:`_write_and_persist` gathers on the background thread.
        """
        reserved = [key for key in state if key.startswith("_")]
        if reserved:
            raise CheckpointStateError(
                f"state keys {reserved} start with '_', which is reserved for the base class."
            )
        rng = get_rng_state()
        world_size = self.settings.world_size
        rngs: dict[int, Any] | RngGather
        if not (world_size > 1 and dist.is_available() and dist.is_initialized()):
            rngs = {self.settings.world_rank: rng}
        elif self.backend.asynchronous:
            if self._save_group is None:  # a collective: every rank's first save, this thread
                self._save_group = dist.new_group(backend="gloo")
            rngs = RngGather(rng, world_size, self._save_group)  # every rank's, to rank 0
        else:
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, rng)  # every rank's stream, kept by rank 0
            rngs = dict(enumerate(gathered))
        return {
            **state,
            TRAINER_KEY: {
                "iteration": iteration,
                "metrics": dict(metrics),
                "best_score": self.best_score,
            },
            RNG_KEY: rngs,
        }

    # ------------------------------------------------------------------ restoring

    def restore(
        self,
        full_state: dict[str, Any],
        apply: Callable[[int, dict[str, float], dict[str, Any]], None],
    ) -> None:
        """Set a loaded state: ``apply(iteration, metrics, trainer_state)``, then this rank's RNG.

        Runs on every rank. A checkpoint saved by a different number of ranks cannot restore
        every stream: each rank's are derived from the saved ones (:func:`derived_seed`), with
        a warning.
        """
        state = dict(full_state)
        trainer_state = state.pop(TRAINER_KEY)
        rngs = state.pop(RNG_KEY)
        iteration = int(trainer_state["iteration"])
        self.best_score = trainer_state.get("best_score")
        apply(iteration, dict(trainer_state["metrics"]), state)
        settings = self.settings
        if len(rngs) == settings.world_size and settings.world_rank in rngs:
            set_rng_state(rngs[settings.world_rank])
            return
        if settings.is_rank_zero:
            self.logger.warning(
                "checkpoint holds RNG state for %d rank(s) but this run has %d: each rank's "
                "generators are derived from the saved ones (the same sequence of worker counts "
                "reproduces bitwise; it cannot equal a run that kept one count).",
                len(rngs),
                settings.world_size,
            )
        seed_everything(derived_seed(rngs, settings.world_rank, settings.world_size))

    def load_active_run(self) -> dict[str, Any]:
        """Load the newest checkpoint of this run that verifies; return its state.

        Runs on every rank. Reads from the run's own storage (the backend), newest first; a
        checkpoint that fails verification is skipped with a warning and the previous one is
        tried.

        Raises
        ------
        CheckPointNotFoundError
            If the run has no checkpoint that verifies.
        """
        self.wait_saved()
        skipped = []
        for directory in self.backend.checkpoint_candidates():
            # Named by where it is stored: on cloud storage ``directory`` is a local copy.
            where = storage.join(self.backend.storage_uri, directory.name)
            try:
                loaded = read_checkpoint(directory, map_location=self.device)
            except CheckpointCorruptError as exc:
                reason = str(exc).replace(str(directory), where)
                self.logger.warning("skipping corrupt checkpoint %s: %s", where, reason)
                skipped.append(directory.name)
                continue
            self._check_loaded(loaded, compare_params=True)
            if self.settings.is_rank_zero:
                self.logger.info("resuming run %s from %s", self.settings.run_id, where)
            return loaded.state
        detail = f" (corrupt: {', '.join(skipped)})" if skipped else ""
        raise CheckPointNotFoundError(
            f"run {self.settings.run_id!r} has no usable checkpoint in "
            f"{self.backend.storage_uri}{detail}."
        )

    def load_base_run(self, version: str = "latest") -> dict[str, Any]:
        """Load checkpoint ``version`` of the base run (``hyper_params.base_run``).

        From the base run's storage, or from its W&B artifact when it names a project and no
        storage path; the digests are checked either way.

        Raises
        ------
        CheckPointNotFoundError
            If no base run is configured or the checkpoint is not found.
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
        self.logger.info(
            "warm start of run %s from base run checkpoint %s", self.settings.run_id, directory
        )
        return loaded.state

    def _check_loaded(self, loaded: LoadedCheckpoint, compare_params: bool) -> None:
        """Note where the state came from; log version and hyper-parameter differences.

        Every later checkpoint's metadata names this one (``restored_from``): after a PBT
        exploit, that is the donor trial's run.
        """
        self.restored_from = {
            "run_id": loaded.metadata.get("run_id"),
            "iteration": loaded.metadata.get("iteration"),
            "path": str(loaded.path),
        }
        if not self.settings.is_rank_zero:  # every rank loads the same checkpoint: say it once
            return
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
                # Extending a run or a PBT exploit changes them on purpose: say what changed.
                self.logger.info("hyper-parameters changed since the checkpoint: %s", lines)
