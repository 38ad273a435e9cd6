"""What a finished run reports, and the marker that makes rerunning it a no-op."""

from __future__ import annotations

from dataclasses import dataclass, field

from raytrainer import storage
from raytrainer.checkpoint.layout import COMPLETE_FILE
from raytrainer.settings import ExperimentSettings


@dataclass
class RunResult:
    """What a finished run reports."""

    run_id: str
    storage_uri: str
    iteration: int
    metrics: dict[str, float] = field(default_factory=dict)
    already_complete: bool = False
    unmirrored: list[str] = field(default_factory=list)
    """Checkpoints and artifacts the W&B mirror could not upload (they are safe in storage)."""


def already_complete(run_uri: str, settings: ExperimentSettings) -> RunResult | None:
    """The result of a run that finished before (its ``complete.json``), or ``None``.

    Runs on the driver, before Ray starts: a finished run costs nothing. A test run never is.
    """
    summary = None if settings.test_run else storage.read_json(storage.join(run_uri, COMPLETE_FILE))
    if summary is None:
        return None
    run_id = str(settings.run_id)
    settings.get_logger().info("run %s is already complete in %s; nothing to do.", run_id, run_uri)
    return RunResult(
        run_id,
        run_uri,
        summary.get("iteration", 0),
        summary.get("metrics", {}),
        already_complete=True,
    )


def mark_complete(result: RunResult, settings: ExperimentSettings) -> None:
    """Write ``complete.json`` into the run folder (not for a test run) and log the result."""
    if not settings.test_run:
        storage.write_json(
            storage.join(result.storage_uri, COMPLETE_FILE),
            {"run_id": result.run_id, "iteration": result.iteration, "metrics": result.metrics},
        )
    settings.get_logger().info(
        "run %s finished at iteration %d: %s", result.run_id, result.iteration, result.metrics
    )
