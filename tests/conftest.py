"""Shared fixtures: temporary storage, W&B kept offline inside a temp folder, tiny configs."""

from __future__ import annotations

import logging
import os
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


WANDB_FOLDERS = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every run's files (default storage root, W&B folders) inside the test's tmp dir."""
    monkeypatch.setenv("RAYTRAINER_STORAGE", str(tmp_path / "default_storage"))
    for var in WANDB_FOLDERS:
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B tests switch it on themselves


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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback, with a bucket ``raytrainer``.

    Sets the AWS variables in this process before Ray starts, so Ray workers inherit them as
    they would on a cluster with credentials in the environment.
    """
    import subprocess
    import threading

    import pyarrow.fs as pafs

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in server.stdout:  # blocks until the server says it is listening
        if "Running on" in line:
            break
    else:
        raise RuntimeError("moto_server exited before listening")
    # moto logs every request: keep reading, or the full pipe stalls the server mid-request.
    threading.Thread(target=server.stdout.read, name="moto-log", daemon=True).start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    os.environ.update(env)
    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir("raytrainer")
    yield fs
    server.terminate()
    server.wait(timeout=30)
    for key in env:
        os.environ.pop(key, None)


@pytest.fixture(scope="session")
def ray_cluster(s3_server, tmp_path_factory):
    """One local Ray instance for the whole session, with the dashboard for ``ray job``.

    Returns the GCS and dashboard addresses and the session folder (its ``logs``). Its temp dir
    is short: Ray rejects socket paths over 107 bytes. Stopped with ``ray.shutdown()``, which
    stops only this instance.

    Every Ray process the tests start (workers, trials, ``ray job`` entrypoints) inherits the
    head's environment, and a session fixture is set up before the per-test one: so the head
    gets its own explicit environment here, W&B disabled and every default folder in a
    temporary one, rather than whatever this process had.
    """
    import tempfile

    import ray

    session_env = tmp_path_factory.mktemp("ray_head_env")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")  # the same for this head and `ray job` clients
        env.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        # Jobs' entrypoints (`raytrainer ...`) run with the head's PATH: put this venv first.
        env.setenv("PATH", str(Path(sys.executable).parent), prepend=os.pathsep)
        env.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))
        env.setenv("RAYTRAINER_STORAGE", str(session_env / "default_storage"))
        for var in WANDB_FOLDERS:
            env.setenv(var, str(session_env / "wandb" / var.lower()))
        env.setenv("WANDB_MODE", "disabled")  # tests that want W&B pass wandb_mode themselves
        env.delenv("WANDB_API_KEY", raising=False)  # never a real key in any Ray process
        dashboard_port = free_port()
        temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
        context = ray.init(
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            _temp_dir=temp_dir,
            logging_level="WARNING",
        )
        yield {
            "gcs": context.address_info["gcs_address"],
            "dashboard": f"http://127.0.0.1:{dashboard_port}",
            "session_dir": context.address_info["session_dir"],
        }
        ray.shutdown()
