"""What a finished run reports, and what a (re)started run does with its folder first.

Both runners call :func:`prepare_run_folder` on the driver before anything starts and
:func:`mark_complete` at the end: a run is complete at the hyper-parameters it finished with, so
the same command is a no-op, while a larger ``num_iterations`` continues the run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from raytrainer import storage
from raytrainer.checkpoint.layout import (
    COMPLETE_FILE,
    RAY_CHECKPOINT_SNAPSHOT,
    parse_iteration,
    replaced_run_name,
)
from raytrainer.errors import CheckPointNotFoundError, ConfigError
from raytrainer.inspection import MARK_BEST, MARK_LATEST, list_run
from raytrainer.params import HyperParameters
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
    elapsed: float = 0.0
    """Seconds the run took, on the driver."""
    newest_checkpoint: str | None = None
    best_checkpoint: str | None = None
    """By the score metric; ``None`` without one."""

    def summary(self) -> str:
        """One line for people: state, iteration, metrics, checkpoints, time, where."""
        state = "already complete" if self.already_complete else "complete"
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items())) or "none"
        line = f"run {self.run_id} {state} at iteration {self.iteration}: metrics {metrics}"
        if self.newest_checkpoint:
            line += f"; newest {self.newest_checkpoint}"
        if self.best_checkpoint:
            line += f", best {self.best_checkpoint}"
        if self.elapsed:
            line += f"; {_duration(self.elapsed)}"
        return f"{line}; in {self.storage_uri}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def prepare_run_folder(
    run_uri: str, hyper_params: HyperParameters, settings: ExperimentSettings
) -> RunResult | None:
    """Decide, before the run starts, what it does with its folder; a finished run's result.

    ``settings.restart`` moves an existing folder aside (``<run id>-replaced-<time>``) and
    starts over. ``do_not_load_checkpoint`` on a run that has checkpoints is refused: starting
    over on top of them would mix two runs. A run that finished with these hyper-parameters
    returns its result (``already_complete``); one that finished with others (a larger
    ``num_iterations``, say) continues from its newest checkpoint.

    Raises
    ------
    ConfigError
        For ``do_not_load_checkpoint`` on a run with checkpoints, or storage that cannot be
        read (an unreachable endpoint, missing credentials).
    """
    try:
        return _prepare(run_uri, hyper_params, settings)
    except OSError as exc:  # an unreachable endpoint, missing credentials: before anything runs
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"cannot use the run's storage {run_uri}: {reason}. Check the endpoint and the "
            "credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for S3)."
        ) from None


def _prepare(
    run_uri: str, hyper_params: HyperParameters, settings: ExperimentSettings
) -> RunResult | None:
    logger = settings.get_logger()
    names = storage.list_dirs(run_uri)
    summary = storage.read_json(storage.join(run_uri, COMPLETE_FILE))
    if settings.restart and (names or summary is not None):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        aside = storage.join(
            str(settings.storage_path), replaced_run_name(str(settings.run_id), stamp)
        )
        storage.move_dir(run_uri, aside)
        logger.info("restart: moved the old run %s aside to %s", settings.run_id, aside)
        return None
    checkpoints = [n for n in names if parse_iteration(n) is not None]
    if settings.do_not_load_checkpoint and checkpoints:
        raise ConfigError(
            f"run {settings.run_id!r} already has checkpoints ({checkpoints[-1]} in {run_uri}); "
            "--no-load will not start over on top of them. Pass --restart to move the old run "
            "aside, or --run-id to start a new one."
        )
    # Storage is the record of a run's checkpoints. Ray Train's own list of them, from an
    # earlier attempt, may name checkpoints retention has since deleted (Ray then refuses to
    # start: "The run snapshot contains a reference to a checkpoint that does not exist").
    storage.delete_file(storage.join(run_uri, RAY_CHECKPOINT_SNAPSHOT))
    if summary is None:
        return None
    saved = summary.get("hyper_params")
    if saved is not None and saved != hyper_params.to_dict():
        before = type(hyper_params).model_validate(saved)
        changes = ", ".join(
            f"{k}: {a!r} -> {b!r}" for k, (a, b) in before.diff(hyper_params).items()
        )
        logger.info(
            "run %s finished at iteration %s with other hyper-parameters (%s); continuing it "
            "from its newest checkpoint.",
            settings.run_id,
            summary.get("iteration"),
            changes,
        )
        return None
    logger.info("run %s is already complete in %s; nothing to do.", settings.run_id, run_uri)
    return RunResult(
        str(settings.run_id),
        run_uri,
        summary.get("iteration", 0),
        summary.get("metrics", {}),
        already_complete=True,
        newest_checkpoint=summary.get("newest_checkpoint"),
        best_checkpoint=summary.get("best_checkpoint"),
    )


def mark_complete(
    result: RunResult, hyper_params: HyperParameters, settings: ExperimentSettings, started: float
) -> None:
    """Fill in the result's checkpoints and time; write ``complete.json``.

    ``complete.json`` holds the result and the hyper-parameters it is complete at.
    ``started`` is the driver's ``time.perf_counter()`` at the start.
    """
    result.elapsed = time.perf_counter() - started
    with contextlib.suppress(CheckPointNotFoundError):  # a run may save no checkpoint at all
        listing = list_run(
            result.storage_uri,
            score_metric=settings.checkpoint_score_metric,
            score_order=settings.checkpoint_score_order,
            verify=False,  # just written and verified on write; reading metadata is enough
        )
        for entry in listing.checkpoints:
            if MARK_LATEST in entry.marks:
                result.newest_checkpoint = entry.name
            if MARK_BEST in entry.marks:
                result.best_checkpoint = entry.name
    storage.write_json(
        storage.join(result.storage_uri, COMPLETE_FILE),
        {
            "run_id": result.run_id,
            "iteration": result.iteration,
            "metrics": result.metrics,
            "newest_checkpoint": result.newest_checkpoint,
            "best_checkpoint": result.best_checkpoint,
            "hyper_params": hyper_params.to_dict(),
        },
    )
