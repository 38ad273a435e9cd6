"""Shared fixtures: temporary storage, W&B kept offline inside a temp folder, tiny configs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Config import paths ("examples.regression:...", "helpers.gated:...") resolve from these,
# in this process and in the CLI subprocesses the tests start.
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every run's files (default storage root, W&B folders) inside the test's tmp dir."""
    monkeypatch.setenv("RAYTRAINER_STORAGE", str(tmp_path / "default_storage"))
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    """A regression config small enough that a run takes well under a second."""
    return {
        "trainer": "helpers.gated:GatedRegressionTrainer",
        "scenario": "examples.regression:build_regression_scenario",
        "seed": 3,
        "num_iterations": 30,
        "batch_size": 16,
        "num_samples": 256,
        "input_dim": 4,
        "hidden_dim": 16,
        "dropout": 0.2,
        "agents": {"_default": {"learning_rate": 0.01}},
    }


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture raytrainer's log records at INFO."""
    caplog.set_level(logging.INFO, logger="raytrainer")
    return caplog
