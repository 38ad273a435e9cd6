"""The W&B side of checkpoints: one client seam, and a mirror that never blocks training.

Storage (a run folder or Ray's ``storage_path``) is the source of truth. Rank 0 mirrors every
persisted checkpoint to a new version of the artifact ``state_<run_id>`` (type
``checkpoint``; aliases ``latest``, ``iter-<n>`` and ``best``) from a background thread. The
training thread only hard-links the checkpoint's files into the mirror's staging folder and
enqueues them; W&B being slow, down or misconfigured costs retries and a warning, never a
checkpoint.

The mirror is cheap for the CPU that training shares with it: W&B reads the staged hard links
in place (``policy="immutable"``) instead of copying each file, and fingerprints them with
XXH128 (about 1 ms for 16 MB) rather than MD5 (about 23 ms). Online, a staged folder is removed
once W&B has stored its files; offline, it moves beside the offline run, where ``wandb sync``
reads it. Every call that reaches W&B goes through :class:`WandbClient`, which a trainer can
swap (``Trainer.wandb_client_cls``) — tests do, to stand in for a server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytrainer._version import __version__
from raytrainer.checkpoint.layout import (
    WANDB_OFFLINE_STAGING_DIR,
    WANDB_STAGING_DIR,
    recorded_digest,
)
from raytrainer.settings import ExperimentSettings
from raytrainer.storage import is_uri


class WandbClient:
    """Every call raytrainer makes to W&B. Subclass and set ``Trainer.wandb_client_cls``.

    All methods may block on the network; the mirror calls them off the training thread.
    """

    def init(self, **kwargs: Any) -> Any:
        """Open (or resume) a W&B run: ``wandb.init(**kwargs)``."""
        import wandb

        return wandb.init(**kwargs)

    def log(self, run: Any, metrics: Mapping[str, Any]) -> None:
        """Log metrics to the run."""
        run.log(dict(metrics))

    def log_artifact(self, run: Any, artifact: Any, aliases: list[str]) -> None:
        """Log an artifact version with aliases; online, wait until W&B has stored its files."""
        logged = run.log_artifact(artifact, aliases=aliases)
        if not run.offline:
            logged.wait()

    def finish(self, run: Any) -> None:
        """Close the run, uploading what is left."""
        run.finish()

    def use_artifact(self, run: Any, path: str) -> Any:
        """Declare ``entity/project/name:version`` an input of the run and return it."""
        return run.use_artifact(path)

    def artifact_exists(self, path: str) -> bool:
        """Whether ``entity/project/name:version`` exists (needs a W&B server)."""
        import wandb

        return wandb.Api().artifact_exists(path)

    def download_artifact(self, path: str, root: Path) -> Path:
        """Download ``entity/project/name:version`` into ``root`` (needs a W&B server)."""
        import wandb

        return Path(wandb.Api().artifact(path).download(root=str(root)))


@dataclass
class _Job:
    name: str  # what the warnings call it: "checkpoint_000020" or "artifact rollouts:v1"
    action: Callable[[Any], None]  # called with the W&B run
    cleanup: Callable[[], None] = field(default=lambda: None)
    # Checkpoints and artifacts are retried and, if they fail, named at the end; a metrics
    # row is tried once and dropped (the next one is a few iterations away).
    tracked: bool = True


class CheckpointMirror:
    """Mirrors checkpoints and files to W&B from a background thread (rank 0 only).

    Parameters
    ----------
    client : WandbClient
        The seam to W&B.
    init_kwargs : dict
        Arguments of ``wandb.init`` (id, project, mode, config, ...).
    staging_dir : Path
        Folder for hard links to the files waiting for upload.
    logger : logging.Logger
        Where warnings go.
    max_attempts : int
        Attempts per item before it is reported as not mirrored.
    backoff : float
        First retry delay in seconds; doubles per attempt, at most 30 s.
    digest_algorithm : {"XXH128", "MD5"}
        How W&B fingerprints the files it mirrors.
    """

    def __init__(
        self,
        client: WandbClient,
        init_kwargs: dict[str, Any],
        staging_dir: Path,
        logger: logging.Logger,
        max_attempts: int = 5,
        backoff: float = 1.0,
        digest_algorithm: str = "XXH128",
    ) -> None:
        self._client = client
        self._init_kwargs = init_kwargs
        self._digest_algorithm = digest_algorithm
        self._staging = staging_dir
        self._logger = logger
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.pending: list[str] = []
        self.failed: list[str] = []
        self.mirrored: list[str] = []
        self._run: Any = None
        self._thread = threading.Thread(target=self._work, name="raytrainer-wandb", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- training thread side

    def stage(self, directory: Path, storage_uri: str) -> Path | None:
        """Hard-link a written checkpoint's files for upload, before the backend persists it.

        Returns ``None`` for a checkpoint kept on cloud storage: it is added by reference.
        Hard links make retention (or Ray's staging clean-up) harmless to a queued upload.
        """
        if is_uri(storage_uri):
            return None
        return _link_tree(directory, self._staging / f"{directory.name}-{time.monotonic_ns()}")

    def mirror_checkpoint(
        self,
        staged: Path | None,
        storage_uri: str,
        iteration: int,
        metrics: Mapping[str, Any],
        digests: Mapping[str, Any],
        is_best: bool,
    ) -> None:
        """Queue a persisted checkpoint as a new version of ``state_<run_id>``; returns at once."""
        name = storage_uri.rstrip("/").rsplit("/", 1)[-1]
        artifact_name = f"state_{self._init_kwargs['id']}"
        metadata = {
            "iteration": iteration,
            "metrics": dict(metrics),
            "storage_uri": storage_uri,
            "package_version": __version__,
            "digests": {k: recorded_digest(v) for k, v in digests.items()},
        }
        aliases = ["latest", f"iter-{iteration}", *(["best"] if is_best else [])]

        def action(run: Any) -> None:
            artifact = self._new_artifact(artifact_name, "checkpoint", metadata)
            if staged is not None:
                self._add_staged_files(run, artifact, staged)
            else:
                artifact.add_reference(storage_uri)
            self._client.log_artifact(run, artifact, aliases)

        cleanup = (lambda: shutil.rmtree(staged, ignore_errors=True)) if staged else _noop
        self._submit(_Job(name, action, cleanup))

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Queue a row of metrics, logged against its ``iteration``; never blocks."""
        row = dict(metrics)
        self._submit(
            _Job(
                f"metrics at iteration {row.get('iteration')}",
                lambda run: self._client.log(run, row),
                tracked=False,
            )
        )

    def add_file_version(
        self, name: str, artifact_type: str, version_dir: Path, file_name: str
    ) -> None:
        """Queue a new version of artifact ``name`` with ``file_name`` added.

        Online, when W&B already has the artifact (``artifact_exists``), the file is added to
        its latest version; otherwise the local version folder, which holds the previous local
        versions' files and the new one, is logged.
        """
        staged = _link_tree(version_dir, self._staging / f"{name}-{time.monotonic_ns()}")

        def action(run: Any) -> None:
            path = f"{run.entity}/{run.project}/{name}:latest"
            if not run.offline and self._client.artifact_exists(path):
                artifact = self._client.use_artifact(run, path).new_draft()
                self._add_staged_files(run, artifact, staged, only=file_name)
            else:
                artifact = self._new_artifact(name, artifact_type)
                self._add_staged_files(run, artifact, staged)
            self._client.log_artifact(run, artifact, ["latest"])

        self._submit(
            _Job(
                f"artifact {name}:{version_dir.name}",
                action,
                lambda: shutil.rmtree(staged, ignore_errors=True),
            )
        )

    def close(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the queue to drain; return what was not mirrored.

        Warns naming each item that was not mirrored. Never raises.
        """
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()  # the thread may be stuck in a W&B call: leave it (daemon)
        with self._lock:
            missing = self.failed + self.pending
        if missing:
            self._logger.warning(
                "W&B mirror: not mirrored after %.0fs: %s. They are safe in storage; "
                "rerun with W&B reachable to mirror new checkpoints.",
                timeout,
                ", ".join(missing),
            )
        return missing

    def _submit(self, job: _Job) -> None:
        if job.tracked:
            with self._lock:
                self.pending.append(job.name)
        self._queue.put(job)

    # ---------------------------------------------------------------- background thread side

    def _attempt(
        self, what: str, call: Callable[[], Any], max_attempts: int | None = None
    ) -> tuple[bool, Any]:
        delay = self._backoff
        max_attempts = max_attempts or self._max_attempts
        for attempt in range(1, max_attempts + 1):
            try:
                return True, call()
            except Exception as exc:  # noqa: BLE001 - any W&B failure must not stop training
                self._logger.warning(
                    "W&B mirror: %s failed (attempt %d/%d): %s: %s",
                    what,
                    attempt,
                    max_attempts,
                    type(exc).__name__,
                    exc,
                )
                if attempt < max_attempts and self._stop.wait(delay):
                    break
                delay = min(delay * 2, 30.0)
        return False, None

    def _work(self) -> None:
        # Yield the CPU to training: a lower priority for this thread, inherited by the
        # wandb-core process that wandb.init starts from it (Linux: threads are tasks).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        ok, self._run = self._attempt("wandb.init", lambda: self._client.init(**self._init_kwargs))
        if ok:
            ok, _ = self._attempt("define_metric", self._define_metrics)
        while True:
            job = self._queue.get()
            if job is None:
                break
            attempts = None if job.tracked else 1
            call = lambda job=job: job.action(self._run)  # noqa: E731
            done = ok and self._attempt(job.name, call, attempts)[0]
            job.cleanup()
            if not job.tracked:
                continue
            with self._lock:
                self.pending.remove(job.name)
                (self.mirrored if done else self.failed).append(job.name)
        if ok:
            self._attempt("wandb finish", lambda: self._client.finish(self._run))

    def _new_artifact(
        self, name: str, artifact_type: str, metadata: dict[str, Any] | None = None
    ) -> Any:
        import wandb

        with _quiet_wandb_warnings():
            return wandb.Artifact(
                name, type=artifact_type, metadata=metadata, digest_algorithm=self._digest_algorithm
            )

    def _add_staged_files(
        self, run: Any, artifact: Any, staged: Path, only: str | None = None
    ) -> None:
        """Add staged files without copying them: W&B reads our hard links in place.

        Online they stay until :meth:`WandbClient.log_artifact` has waited for the upload
        (then the job's clean-up removes them). Offline nothing is uploaded before ``wandb
        sync``, so they are linked beside the offline run first, where they stay.
        """
        folder = staged
        if run.offline:  # decided by the run, as in WandbClient.log_artifact
            folder = Path(run.dir).parent / WANDB_OFFLINE_STAGING_DIR / staged.name
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            _link_tree(staged, folder)
        for path in sorted(folder.iterdir()):
            if only is None or path.name == only:
                artifact.add_file(str(path), name=path.name, policy="immutable", overwrite=True)

    def _define_metrics(self) -> None:
        # Steps are iterations, so a resumed run never logs a step W&B has already passed.
        self._run.define_metric("iteration")
        self._run.define_metric("*", step_metric="iteration")


def open_mirror(
    settings: ExperimentSettings,
    config: dict[str, Any],
    base_dir: Path,
    client_cls: type[WandbClient] = WandbClient,
) -> CheckpointMirror | None:
    """Open the run's mirror on rank 0 when W&B is enabled; ``None`` otherwise.

    Returns at once: ``wandb.init`` runs on the mirror's thread (it can hang). The W&B run's id
    and name are the run id, with ``resume="allow"``, so a resumed run continues it.

    Parameters
    ----------
    settings : ExperimentSettings
        The run's settings, with ``run_id`` resolved.
    config : dict
        The W&B run's config: the hyper-parameters as plain values.
    base_dir : Path
        The local folder this process writes checkpoints into; staging goes under it.
    client_cls : type[WandbClient]
        The seam to W&B.
    """
    if settings.wandb_mode == "disabled" or not settings.is_rank_zero:
        return None
    init_kwargs = {
        "id": settings.run_id,
        "name": settings.run_id,
        "resume": "allow",
        # A reused Tune actor can start a trial while the previous trial's run still flushes;
        # W&B's default would hand the new trial that run instead of its own.
        "reinit": "create_new",
        "project": settings.wandb_project,
        "entity": settings.wandb_entity,
        "mode": settings.wandb_mode,
        "group": settings.wandb_group,
        "tags": list(settings.wandb_tags) or None,
        "config": config,
        "dir": os.environ.get("WANDB_DIR"),  # read now: wandb keeps a process's first
        # W&B's own banner and end-of-run summary only with --verbose: the run prints its own.
        "settings": {"console": "off", "silent": not settings.verbose},
    }
    return CheckpointMirror(
        client_cls(),
        init_kwargs,
        base_dir / WANDB_STAGING_DIR,
        settings.get_logger(),
        digest_algorithm=settings.wandb_digest_algorithm,
    )


def _noop() -> None:
    pass


@contextlib.contextmanager
def _quiet_wandb_warnings() -> Iterator[None]:
    # wandb warns on *every* XXH128 artifact that wandb < 0.29 cannot verify it; raytrainer
    # needs wandb >= 0.31, so that line per checkpoint would be noise. wandb keeps the switch
    # in a module global; if a release renames it, the warning simply comes back.
    from wandb.errors import term

    shown = getattr(term, "_show_warnings", None)
    if shown is None:
        yield
        return
    term._show_warnings = False
    try:
        yield
    finally:
        term._show_warnings = shown


def _link_tree(source: Path, destination: Path) -> Path:
    """Hard-link (or copy, across filesystems) every file of ``source`` into ``destination``."""
    destination.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            try:
                os.link(path, destination / path.name)
            except OSError:
                shutil.copy2(path, destination / path.name)
    return destination
