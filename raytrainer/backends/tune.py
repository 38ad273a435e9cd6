"""The Ray Tune backend: a sweep trial's checkpoints go to Tune through ``tune.report``.

Runs inside a Tune trial whose trainer is a single process (the trial function itself). Every
checkpoint is reported with its metrics, so schedulers see the metric at every report and PBT
has a checkpoint to copy. A trial restores from ``tune.get_checkpoint()``: its own newest,
or — after a PBT exploit — the donor trial's. Only when Tune hands it none (a first start, or a
sweep driver killed before it recorded the trial's newest checkpoint) does it look in its own
trial folder. Tune keeps checkpoints there under its own names (``checkpoint_000003``, by
count); the iteration is in ``metadata.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune
from ray.train._internal.session import get_session  # the trial's storage (Ray 2.60)

from raytrainer import storage
from raytrainer.backends.base import TemporaryStagingBackend
from raytrainer.checkpoint.layout import METADATA_FILE, RESTORE_DIR
from raytrainer.errors import MetricError


def _dirs(fs: pafs.FileSystem, path: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


class TuneBackend(TemporaryStagingBackend):
    """Checkpoints go to Ray Tune via ``tune.report``; runs in the trial function.

    Parameters
    ----------
    run_id : str
        The trial's run id, ``<sweep name>-<trial id>``.
    metric : str
        The sweep's metric: every report must carry it.
    """

    def __init__(self, run_id: str, metric: str) -> None:
        self.run_id = run_id
        self.metric = metric
        self.reports = 0
        """How many checkpoints this process has reported to Tune."""
        # Where Tune persists this trial: its storage filesystem and the trial's path on it.
        trial_storage = get_session().storage
        self._fs = trial_storage.storage_filesystem
        self._trial_path = trial_storage.trial_fs_path
        scheme = self._fs.type_name
        self.storage_uri = (
            self._trial_path if scheme == "local" else f"{scheme}://{self._trial_path}"
        )

    def checkpoint_candidates(self) -> Iterator[Path]:
        """Yield the checkpoint Tune hands this trial (its own, or a PBT donor's), then older ones.

        After Tune's own checkpoint come this trial's checkpoints already in the sweep folder,
        newest first — but only when Tune's is this trial's (a donor's older line is never ours
        to resume). A restored sweep may have given the trial a new folder, so every folder of
        this trial id is searched; a trial whose newest checkpoint Tune had not recorded before
        its driver died resumes from it.
        """
        checkpoint = tune.get_checkpoint()
        own = self._own_checkpoints()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                yield Path(directory)
            given = checkpoint.path.rstrip("/")
            if not any(loc.split("://", 1)[-1] == given for loc in own):
                return  # a PBT donor's checkpoint: nothing of ours comes after it
            own = own[[loc.split("://", 1)[-1] for loc in own].index(given) + 1 :]
        for location in own:
            if not storage.is_uri(location):
                yield Path(location)
            else:
                name = location.rsplit("/", 1)[-1]
                yield storage.download_dir(location, self.staging_dir / RESTORE_DIR / name)

    def _own_checkpoints(self) -> list[str]:
        experiment, _, trial_dir = self._trial_path.rpartition("/")
        trial_id = get_session().trial_id
        found = []
        for folder in _dirs(self._fs, experiment):
            if f"_{trial_id}_" not in f"_{folder}_":
                continue
            for name in _dirs(self._fs, f"{experiment}/{folder}"):
                meta = f"{experiment}/{folder}/{name}/{METADATA_FILE}"
                try:
                    with self._fs.open_input_stream(meta) as stream:
                        iteration = int(json.loads(stream.read())["iteration"])
                except (OSError, ValueError, KeyError):
                    continue  # not ours, or incomplete: never a candidate
                found.append((iteration, folder == trial_dir, f"{folder}/{name}"))
        root = self.storage_uri.rpartition("/")[0]
        return [storage.join(root, path) for *_, path in sorted(found, reverse=True)]

    def persist(self, directory: Path | None, iteration: int, metrics: Mapping[str, Any]) -> str:
        """Report the metrics and the checkpoint to Tune; return where Tune keeps it.

        Blocks until Tune has copied the folder into the trial's storage (and, when the
        scheduler says so, does not return: Tune stops or restarts the trial here).

        Raises
        ------
        MetricError
            If the sweep's metric is not among the recorded metrics.
        """
        if self.metric not in metrics:
            raise MetricError(
                f"the sweep's metric {self.metric!r} was not recorded before save_checkpoint(); "
                f"record it with record_metrics({self.metric}=...). Recorded: {sorted(metrics)}."
            )
        if directory is None:
            raise ValueError("a Tune trial runs one process, which must pass its folder.")
        self.reports += 1
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(directory))
        shutil.rmtree(directory, ignore_errors=True)
        return storage.join(self.storage_uri, get_session().storage.checkpoint_dir_name)
