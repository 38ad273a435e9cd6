"""What every backend must do, as one function that runs wherever the backend runs.

The local backend runs it in the test process; the Ray Train backend inside a Ray Train
worker (:func:`ray_train_worker`), which writes what it saw to a JSON file for the test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from raytrainer import load_hyper_params, storage
from raytrainer.backends import Backend
from raytrainer.checkpoint.checkpointer import Checkpointer, run_metadata
from raytrainer.checkpoint.layout import verify_checkpoint
from raytrainer.settings import ExperimentSettings

ITERATIONS = (10, 20, 30)


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def exercise(backend: Backend, settings: ExperimentSettings, config: dict) -> dict[str, Any]:
    """Persist three checkpoints, list them, corrupt the newest in storage, restore.

    Returns what happened, for the test to assert on: the locations ``persist`` returned,
    the candidates' names in order, whether each persisted folder verifies in storage, the
    iteration restored after the newest was truncated, and the warnings logged.
    """
    hyper_params = load_hyper_params(config)
    warnings = _Warnings()
    logger = logging.getLogger(f"contract-{id(backend)}")
    logger.addHandler(warnings)
    settings = dataclasses.replace(settings, backend=backend, logger=logger)
    checkpointer = Checkpointer(settings, hyper_params, backend, torch.device("cpu"))
    locations = []
    for iteration in ITERATIONS:
        state = {"weights": torch.full((4,), float(iteration)), "step": iteration}
        locations.append(
            checkpointer.save(
                state,
                iteration,
                {"loss": 1.0 / iteration},
                lambda iteration=iteration: run_metadata("contract", Trainerless, iteration, 1),
                log=False,
            )
        )
    checkpointer.wait_saved()  # an asynchronous backend's last save may still be in flight
    candidates = [p.name for p in backend.checkpoint_candidates()]
    verified = [verify_checkpoint(Path(loc))["iteration"] for loc in locations]  # local storage
    newest = Path(storage.join(backend.storage_uri, candidates[0])) / "weights.pt"
    newest.write_bytes(newest.read_bytes()[:10])  # truncated, as by a full disk

    restored: dict[str, Any] = {}

    def apply(iteration: int, metrics: dict, state: dict) -> None:
        restored.update(iteration=iteration, metrics=metrics, step=state["step"])
        restored["weights"] = state["weights"].tolist()

    checkpointer.restore(checkpointer.load_active_run(), apply)
    return {
        "storage_uri": backend.storage_uri,
        "locations": locations,
        "candidates": candidates,
        "verified": verified,
        "restored": restored,
        "warnings": warnings.messages,
    }


class Trainerless:
    """Stands in for a trainer class in the checkpoints' metadata."""


def ray_train_worker(config: dict[str, Any]) -> None:
    """Run :func:`exercise` against the Ray Train backend inside a Ray Train worker."""
    from raytrainer.backends.ray_train import RayTrainBackend

    settings = ExperimentSettings(
        run_id=config["run_id"],
        storage_path=config["storage_path"],
        num_to_keep=None,
        wandb_mode="disabled",
    )
    backend = RayTrainBackend(config["run_id"], config["storage_path"])
    result = exercise(backend, settings, config["hyper_params"])
    Path(config["out"]).write_text(json.dumps(result))


def tune_trial(config: dict[str, Any]) -> None:
    """Run :func:`exercise` against the Tune backend inside a Tune trial."""
    from raytrainer.backends.tune import TuneBackend

    settings = ExperimentSettings(run_id="contract", num_to_keep=None, wandb_mode="disabled")
    backend = TuneBackend("contract", "loss")
    result = exercise(backend, settings, config["hyper_params"])
    Path(config["out"]).write_text(json.dumps(result))
