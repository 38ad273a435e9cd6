"""Exception classes raised by raytrainer.

Every error says what went wrong and what to do next. They live in one module so that
callers can catch them without importing the parts that raise them.
"""

from __future__ import annotations


class RayTrainerError(Exception):
    """Base class for all raytrainer errors."""


class ConfigError(RayTrainerError, ValueError):
    """A hyper-parameter file, override or setting is wrong.

    Raised before any Ray resource is taken. The message names the field.
    """


class RunFailedError(RayTrainerError, RuntimeError):
    """A run's workers failed more often than ``max_failures`` allows."""


class RunStopped(RayTrainerError):
    """The run was asked to stop (SIGTERM, ``ray job stop``) and saved a checkpoint first.

    Not a failure: running the same command again resumes from that checkpoint.
    """

    def __init__(self, run_id: str, iteration: int, reason: str = "SIGTERM") -> None:
        super().__init__(
            f"run {run_id} stopped at iteration {iteration} ({reason}) after saving a "
            "checkpoint there; run the same command again to resume."
        )
        self.run_id = run_id
        self.iteration = iteration


class NodePreempted(RayTrainerError):
    """A node of the run is being drained (a preemption notice); a checkpoint was saved first.

    Raised on every rank at the same step. The Ray runner waits for Ray Train to restart the
    workers on other nodes, which resume from that checkpoint.
    """

    def __init__(self, run_id: str, iteration: int) -> None:
        super().__init__(
            f"run {run_id}: a node of the run is being preempted; saved a checkpoint at "
            f"iteration {iteration}, where the restarted workers resume."
        )
        self.run_id = run_id
        self.iteration = iteration


class RegistryError(ConfigError, LookupError):
    """A trainer, scenario or protocol name is not registered and cannot be imported."""


class CheckPointNotFoundError(RayTrainerError, FileNotFoundError):
    """No (usable) checkpoint exists where one was asked for."""


class CheckpointCorruptError(RayTrainerError):
    """A checkpoint is incomplete or its files do not match the recorded digests."""


class CheckpointSaveError(RayTrainerError):
    """A checkpoint saved in the background (Ray runs) could not be written or persisted."""


class CheckpointVersionError(RayTrainerError):
    """A checkpoint was written with a schema version this code cannot read."""


class CheckpointStateError(RayTrainerError, TypeError):
    """A trainer's state holds a value that cannot be saved without pickling arbitrary objects."""


class MetricError(RayTrainerError, KeyError):
    """A configured score metric was not recorded before a checkpoint was saved."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the message as written.
        return str(self.args[0]) if self.args else ""
