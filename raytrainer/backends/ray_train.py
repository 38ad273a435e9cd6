"""The Ray Train backend: worker loop, checkpoints via ``ray.train.report``, driver progress.

Process map: :func:`worker_loop` and :class:`RayTrainBackend` run in every Ray Train worker;
:class:`RunStatusActor` is a small actor; :class:`DriverProgress` runs a thread in the driver.
This module is imported only when a run goes to Ray, so in-process runs never import Ray.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch

from raytrainer import storage
from raytrainer.backends.base import Backend
from raytrainer.checkpoint.layout import checkpoint_dir_name, parse_iteration
from raytrainer.settings import ExperimentSettings, ProgressBar, ProgressBarFactory


class RayTrainBackend(Backend):
    """Checkpoints go to Ray Train's storage via ``ray.train.report``; runs in each worker.

    Parameters
    ----------
    run_id : str
        The run id, also the ``RunConfig(name)``.
    storage_root : str
        The storage root (folder or URI); the run lives at ``<storage_root>/<run_id>``.
    """

    def __init__(self, run_id: str, storage_root: str) -> None:
        self.run_id = run_id
        self.storage_uri = storage.join(storage_root, run_id)
        self._staging_dir: Path | None = None

    @property
    def staging_dir(self) -> Path:  # type: ignore[override]
        """A temporary folder of this worker, made on first use (the driver never needs one)."""
        if self._staging_dir is None:
            self._staging_dir = Path(tempfile.mkdtemp(prefix=f"raytrainer-{self.run_id}-"))
        return self._staging_dir

    def checkpoint_candidates(self) -> Iterator[Path]:
        """Yield the run's checkpoints in storage, newest first, as local folders.

        ``ray.train.get_checkpoint()`` names the newest checkpoint the controller registered,
        but a worker killed right after ``report`` returned may have left a newer one fully in
        storage that the controller has not yet seen; digests make it safe to use, so the
        newest that verifies wins and no finished work is redone.
        """
        names = [n for n in storage.list_dirs(self.storage_uri) if parse_iteration(n) is not None]
        registered = ray.train.get_checkpoint()
        if registered is not None and Path(registered.path).name not in names:
            names.append(Path(registered.path).name)
        for name in sorted(names, key=parse_iteration, reverse=True):
            location = storage.join(self.storage_uri, name)
            if not storage.is_uri(location):
                yield Path(location)
            elif registered is not None and Path(registered.path).name == name:
                with registered.as_directory() as directory:
                    yield Path(directory)
            else:
                yield storage.download_dir(location, self.staging_dir / "restore" / name)

    def persist(self, directory: Path | None, iteration: int, metrics: Mapping[str, Any]) -> str:
        """Report the checkpoint (every rank: a barrier); rank 0 passes the folder it wrote.

        Blocks until Ray has copied the folder to storage; the staging copy is then removed.
        """
        name = checkpoint_dir_name(iteration)
        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(dict(metrics), checkpoint=checkpoint, checkpoint_dir_name=name)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        return storage.join(self.storage_uri, name)


@ray.remote(num_cpus=0)
class RunStatusActor:
    """What rank 0 tells the driver: progress as it goes, and what W&B missed at the end."""

    def __init__(self) -> None:
        self.total = 0
        self.initial = 0
        self.n = 0
        self.unmirrored: list[str] = []

    def set_unmirrored(self, names: list[str]) -> None:
        """Record the checkpoints and artifacts the W&B mirror could not upload."""
        self.unmirrored = list(names)

    def get_unmirrored(self) -> list[str]:
        """Return what :meth:`set_unmirrored` recorded."""
        return self.unmirrored

    def start(self, total: int, initial: int) -> None:
        """Set the total and the starting position (a resumed run starts where it was)."""
        self.total, self.initial, self.n = total, initial, initial

    def update(self, n: int) -> None:
        """Advance by ``n``."""
        self.n += n

    def get(self) -> tuple[int, int, int]:
        """Return ``(total, initial, n)``."""
        return self.total, self.initial, self.n


class _RemoteBar:
    """What rank 0's progress-bar factory returns: updates go to the actor, unawaited."""

    def __init__(self, actor: Any, total: int, initial: int) -> None:
        self._actor = actor
        actor.start.remote(total, initial)

    def update(self, n: int = 1) -> None:
        self._actor.update.remote(n)

    def close(self) -> None:
        pass


def _remote_bar_factory(actor: Any) -> ProgressBarFactory:
    def factory(total: int, initial: int = 0, desc: str = "") -> ProgressBar:
        return _RemoteBar(actor, total, initial)

    return factory


class DriverProgress:
    """A driver thread that draws one bar from the :class:`RunStatusActor`.

    Parameters
    ----------
    actor : ActorHandle
        The run's status actor.
    factory : ProgressBarFactory or None
        Builds the driver's bar; ``None`` draws nothing.
    desc : str
        The bar's label.
    interval : float
        Seconds between reads of the actor.
    """

    def __init__(
        self, actor: Any, factory: ProgressBarFactory | None, desc: str, interval: float = 0.5
    ) -> None:
        self._actor = actor
        self._factory = factory
        self._desc = desc
        self._interval = interval
        self._stop = threading.Event()
        self._bar: ProgressBar | None = None
        self._shown = 0
        self._thread = threading.Thread(target=self._loop, name="raytrainer-progress", daemon=True)

    def __enter__(self) -> DriverProgress:
        if self._factory is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._factory is None:
            return
        self._stop.set()
        self._thread.join()
        self._refresh()  # the last counts, after the run
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._refresh()

    def _refresh(self) -> None:
        try:
            total, initial, n = ray.get(self._actor.get.remote(), timeout=10)
        except (ray.exceptions.RayError, TimeoutError):
            return
        if total == 0:
            return
        if self._bar is None:
            self._bar = self._factory(total=total, initial=initial, desc=self._desc)
            self._shown = initial
        if n != self._shown:
            self._bar.update(n - self._shown)
            self._shown = n


def worker_loop(config: dict[str, Any]) -> None:
    """The per-worker training function: build the scenario and the trainer, call ``train()``.

    Runs in every Ray Train worker. ``config`` holds the saved hyper-parameters, the plain
    settings, the storage root and the status actor's name.
    """
    from raytrainer.runner import build_trainer, load_hyper_params

    context = ray.train.get_context()
    rank = context.get_world_rank()
    hyper_params = load_hyper_params(config["hyper_params"])
    status = ray.get_actor(config["status_actor"]) if rank == 0 else None
    progress = _remote_bar_factory(status) if status is not None else None
    settings = ExperimentSettings(
        **config["settings"],
        device=str(ray.train.torch.get_device()),
        world_rank=rank,
        local_rank=context.get_local_rank(),
        world_size=context.get_world_size(),
        backend=RayTrainBackend(config["settings"]["run_id"], config["storage_root"]),
        progress_bar_factory=progress,
    )
    trainer = build_trainer(hyper_params, settings)
    try:
        trainer.train()
        unmirrored = trainer.close()
        if status is not None:
            ray.get(status.set_unmirrored.remote(unmirrored))
    finally:
        trainer.close()
        shutil.rmtree(trainer.backend.staging_dir, ignore_errors=True)
