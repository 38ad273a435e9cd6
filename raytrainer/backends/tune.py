"""The Ray Tune backend: a sweep trial's checkpoints go to Tune through ``tune.report``.

Runs inside a Tune trial whose trainer is a single process (the trial function itself). Every
checkpoint is reported with its metrics, so schedulers see the metric at every report and PBT
has a checkpoint to copy. A trial restores only from ``tune.get_checkpoint()``: its own newest,
or — after a PBT exploit — the donor trial's. Tune keeps checkpoints in the trial's folder
under its own names (``checkpoint_000003``, by count); the iteration is in ``metadata.json``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from raytrainer import storage
from raytrainer.backends.base import Backend
from raytrainer.errors import MetricError


class TuneBackend(Backend):
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
        self.storage_uri = tune.get_context().get_trial_dir()
        self._staging_dir: Path | None = None

    @property
    def staging_dir(self) -> Path:  # type: ignore[override]
        """A temporary folder of this trial, made on first use."""
        if self._staging_dir is None:
            self._staging_dir = Path(tempfile.mkdtemp(prefix=f"raytrainer-{self.run_id}-"))
        return self._staging_dir

    def checkpoint_candidates(self) -> Iterator[Path]:
        """Yield the checkpoint Tune hands this trial, if any: its own, or a PBT donor's."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                yield Path(directory)

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
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(directory))
        shutil.rmtree(directory, ignore_errors=True)
        return storage.join(self.storage_uri, _latest_checkpoint_name())

    def cleanup(self) -> None:
        """Remove this trial's staging folder."""
        if self._staging_dir is not None:
            shutil.rmtree(self._staging_dir, ignore_errors=True)


def _latest_checkpoint_name() -> str:
    # Tune numbers checkpoints by report count; its session knows the current one.
    from ray.train._internal.session import get_session

    return get_session().storage.checkpoint_dir_name
