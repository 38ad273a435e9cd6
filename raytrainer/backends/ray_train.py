"""The Ray Train backend: checkpoints go to Ray Train's storage through ``ray.train.report``.

Runs in every Ray Train worker. Imported only when a run goes to Ray, so in-process runs never
import Ray; the driver's side of a Ray run is ``raytrainer.runners.ray_train``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import ray.train

from raytrainer import storage
from raytrainer.backends.base import TemporaryStagingBackend
from raytrainer.checkpoint.layout import (
    RESTORE_DIR,
    apply_retention,
    checkpoint_dir_name,
    parse_iteration,
    upload_checkpoint,
)


class RayTrainBackend(TemporaryStagingBackend):
    """Checkpoints go to Ray Train's storage via ``ray.train.report``; runs in each worker.

    Parameters
    ----------
    run_id : str
        The run id, also the ``RunConfig(name)``.
    storage_root : str
        The storage root (folder or URI); the run lives at ``<storage_root>/<run_id>``.
    num_to_keep, score_metric, score_order
        Retention, applied by rank 0 after each save to what is in storage (Ray keeps every
        checkpoint it is given: its own count would miss earlier attempts' checkpoints).
    asynchronous : bool
        Whether saves are written and reported on a background thread (the default).
    """

    def __init__(
        self,
        run_id: str,
        storage_root: str,
        num_to_keep: int | None = None,
        score_metric: str | None = None,
        score_order: Literal["max", "min"] | None = None,
        asynchronous: bool = True,
    ) -> None:
        self.run_id = run_id
        self.asynchronous = asynchronous
        self.storage_uri = storage.join(storage_root, run_id)
        self.num_to_keep = num_to_keep
        self.score_metric = score_metric
        self.score_order = score_order

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
                yield storage.download_dir(location, self.staging_dir / RESTORE_DIR / name)

    def persist(self, directory: Path | None, iteration: int, metrics: Mapping[str, Any]) -> str:
        """Report the checkpoint (every rank: a barrier); rank 0 passes the folder it wrote.

        Blocks until the folder is in storage (copied by :meth:`_upload`, inside Ray's report);
        the staging copy is then removed and rank 0 applies retention.
        """
        name = checkpoint_dir_name(iteration)
        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(
            dict(metrics),
            checkpoint=checkpoint,
            checkpoint_dir_name=name,
            checkpoint_upload_fn=self._upload,
        )
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            apply_retention(self.storage_uri, self.num_to_keep, self.score_metric, self.score_order)
        return storage.join(self.storage_uri, name)

    def _upload(self, checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        """Ray's upload step: our copy, metadata last and retried (``upload_checkpoint``)."""
        location = storage.join(self.storage_uri, name)
        upload_checkpoint(Path(checkpoint.path), location)
        filesystem, path = storage.resolve(location)
        return ray.train.Checkpoint(path, filesystem=filesystem)
