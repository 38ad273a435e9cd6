"""The in-process backend: checkpoints in a run folder on local disk."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from raytrainer.backends.base import Backend
from raytrainer.checkpoint.layout import apply_retention, list_checkpoints


class LocalBackend(Backend):
    """Checkpoints live in ``run_dir/checkpoint_<n>``; retention is applied after each save.

    Parameters
    ----------
    run_dir : Path
        The run folder, ``<storage root>/<run id>``.
    num_to_keep : int or None
        Checkpoints kept after each save (the newest N, or the N best plus the newest);
        ``None`` keeps all.
    score_metric, score_order : str or None, {"max", "min"}
        Rank checkpoints by this metric instead of by age.
    logger : logging.Logger or None
        Where retention is logged.
    """

    def __init__(
        self,
        run_dir: Path,
        num_to_keep: int | None = None,
        score_metric: str | None = None,
        score_order: Literal["max", "min"] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.storage_uri = str(self.run_dir)
        self.staging_dir = self.run_dir  # written in place: the layout's rename is atomic
        self.num_to_keep = num_to_keep
        self.score_metric = score_metric
        self.score_order = score_order
        self.logger = logger or logging.getLogger("raytrainer")

    def checkpoint_candidates(self) -> Iterator[Path]:
        """Yield the run folder's checkpoints, newest first."""
        yield from reversed(list_checkpoints(self.run_dir))

    def persist(self, directory: Path | None, iteration: int, metrics: Mapping[str, Any]) -> str:
        """Apply retention; the folder is already in place, so nothing is copied."""
        if directory is None:
            raise ValueError("the local backend runs one process, which must pass its folder.")
        for name in apply_retention(
            self.run_dir, self.num_to_keep, self.score_metric, self.score_order
        ):
            self.logger.debug("retention removed %s", self.run_dir / name)
        return str(directory)
