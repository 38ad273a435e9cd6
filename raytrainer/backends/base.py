"""The backend seam: where a trainer's checkpoints and reports go.

The trainer never branches on how it is run. It writes a checkpoint folder into
``backend.staging_dir`` (rank 0 only) and hands it to :meth:`Backend.persist` (every rank),
and it reads its own checkpoints from :meth:`Backend.checkpoint_candidates`. The runner picks
the backend and passes it in through ``ExperimentSettings.backend``.
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


class Backend(ABC):
    """Where a run's checkpoints live, seen from one training process.

    Attributes
    ----------
    storage_uri : str
        Where the run's checkpoints are kept: a folder or a URI such as ``s3://b/p/run``.
    staging_dir : Path
        The local folder this process writes checkpoint folders into.
    asynchronous : bool
        Whether a save is written and persisted on a background thread while training goes
        on (one at a time); ``persist`` then runs on that thread.
    """

    storage_uri: str
    staging_dir: Path
    asynchronous: bool = False
    """Whether saves are written and persisted on a background thread (training goes on)."""

    @abstractmethod
    def checkpoint_candidates(self) -> Iterator[Path]:
        """Yield local folders of the run's checkpoints to resume from, newest first.

        Runs on every rank. The trainer loads the first one that verifies and falls back to
        the next when one is corrupt.
        """

    @abstractmethod
    def persist(self, directory: Path | None, iteration: int, metrics: Mapping[str, Any]) -> str:
        """Make a written checkpoint durable and report its metrics; return where it is kept.

        Runs on every rank (under Ray it is a barrier); ``directory`` is the folder rank 0
        wrote, ``None`` on the other ranks. Blocks until the checkpoint is in storage.
        """


class TemporaryStagingBackend(Backend):
    """A backend whose process writes checkpoint folders into a temporary folder of its own.

    The folder is made on first use (a driver that never saves never makes one) and removed by
    :meth:`cleanup`. Subclasses set ``run_id`` (it names the folder).
    """

    run_id: str
    _staging_dir: Path | None = None

    @property
    def staging_dir(self) -> Path:  # type: ignore[override]
        """A temporary folder of this process, made on first use."""
        if self._staging_dir is None:
            self._staging_dir = Path(tempfile.mkdtemp(prefix=f"raytrainer-{self.run_id}-"))
        return self._staging_dir

    def cleanup(self) -> None:
        """Remove this process's staging folder, if it made one."""
        if self._staging_dir is not None:
            shutil.rmtree(self._staging_dir, ignore_errors=True)
