"""How long ``save_checkpoint()`` blocks a Ray run, against a bare ``torch.save`` and ``report``.

For the example's small state and a 64 MB one (``hidden_dim=2360``), with local storage and
with S3 (a moto server on loopback), runs ``raytrainer run examples/regression.yaml
--num-workers 2`` (a checkpoint every 100 iterations) with saves in the background (the default)
and with ``--sync-saves``, reading the time each save blocked rank 0 from its log (``saved
checkpoint ... in X s (training blocked Y ms)``). Baselines, for the same state: a bare
``torch.save`` to a local folder (median of 10) and a bare ``TorchTrainer`` whose 2 workers
``torch.save`` the state and call ``ray.train.report`` with it, timed around both. Prints, per
cell, the median over the saves after the first three and its ratio to the bare ``torch.save``.
Usage::

    python bench/checkpoint_stall.py [--iterations 1600] [--hidden 64 2360]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from raytrainer.checkpoint import list_checkpoints, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAVED = re.compile(
    r"saved checkpoint \S+ at iteration \d+ in ([0-9.]+)s(?: \(training blocked ([0-9.]+) ms\))?"
)
POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}  # what raytrainer gives its runs


def raytrainer_run(
    storage: str, iterations: int, hidden: int, sync: bool, env: dict
) -> list[float]:
    """One 2-worker run; the seconds each save blocked rank 0, in order."""
    command = [sys.executable, "-m", "raytrainer", "run", "examples/regression.yaml"]
    command += ["--num-workers", "2", "--no-progress", "--wandb-mode", "disabled"]
    command += ["--storage-path", storage, "--checkpoint-period", "100"]
    command += ["--set", f"num_iterations={iterations}", "--set", f"hidden_dim={hidden}"]
    command += ["--sync-saves"] if sync else []
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    found = SAVED.findall(done.stdout + done.stderr)
    return [float(blocked) / 1e3 if blocked else float(took) for took, blocked in found]


def bare_save(state: dict) -> float:
    """Median seconds of 10 ``torch.save`` calls of ``state`` to a local folder."""
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(10):
            start = time.perf_counter()
            torch.save(state, Path(folder) / f"state{i}.pt")
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_report_run(state_file: Path, storage: str, saves: int, env: dict) -> list[float]:
    """A bare TorchTrainer (2 workers): rank 0 saves the state, every rank reports it."""
    out = state_file.with_suffix(".times.json")
    command = [sys.executable, __file__, "--bare-worker", str(state_file), storage, str(saves)]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())


def _bare_worker(state_file: str, storage: str, saves: int) -> None:
    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train(config: dict) -> None:
        state = torch.load(config["state_file"], weights_only=True)
        rank = ray.train.get_context().get_world_rank()
        times = []
        for i in range(config["saves"]):
            time.sleep(1.0)  # the training between two saves
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                checkpoint = None
                if rank == 0:
                    torch.save(state, Path(folder) / "state.pt")
                    checkpoint = ray.train.Checkpoint.from_directory(folder)
                ray.train.report({"i": i}, checkpoint=checkpoint)
                times.append(time.perf_counter() - start)
        if rank == 0:
            Path(config["state_file"]).with_suffix(".times.json").write_text(json.dumps(times))

    ray.init(num_cpus=2, runtime_env={"env_vars": POLL}, logging_level="WARNING")
    from raytrainer import storage as rt_storage

    fs, path = rt_storage.resolve(storage)
    TorchTrainer(
        train,
        train_loop_config={"state_file": state_file, "saves": saves},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="bare", storage_path=path, storage_filesystem=fs),
    ).fit()
    ray.shutdown()


def moto_server() -> tuple[subprocess.Popen, dict]:
    """An S3 server on loopback with a bucket ``bench``; the AWS variables that reach it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = Path(sys.executable).parent / "moto_server"
    server = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in server.stdout:
        if "Running on" in line:
            break
    threading.Thread(target=server.stdout.read, daemon=True).start()  # keep the pipe drained
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    import pyarrow.fs as pafs

    pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        access_key="bench",
        secret_key="bench",
        region="us-east-1",
        allow_bucket_creation=True,
    ).create_dir("bench")
    return server, env


def _row(size: int, where: str, label: str, blocked: float, bare: float) -> None:
    mb = f"{size / 2**20:.1f}MB"
    print(f"{mb:>8} {where:>8} {label:>24} {blocked * 1000:>12.1f} ms {blocked / bare:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1600)
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[64, 2360], help="hidden_dim of each state"
    )
    args = parser.parse_args()
    server, s3_env = moto_server()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_TRAIN_HEALTH")}
    print(f"{'state':>8} {'storage':>8} {'save':>24} {'blocks (median)':>15} {'ratio':>6}")
    try:
        for hidden in args.hidden:
            with tempfile.TemporaryDirectory() as root:
                state_file, size, bare = Path(root) / "state.pt", 0, 0.0
                for where in ("local", "s3"):
                    env = {**base_env, **(s3_env if where == "s3" else {})}
                    storage = f"s3://bench/{hidden}" if where == "s3" else f"{root}/runs"
                    cells = {}
                    for label, sync in (
                        ("raytrainer, background", False),
                        ("raytrainer, sync", True),
                    ):
                        folder = f"{storage}/{label[12:]}"
                        cells[label] = raytrainer_run(folder, args.iterations, hidden, sync, env)
                    if not state_file.exists():  # the final state of the first local run
                        (run_dir,) = Path(f"{storage}/background").iterdir()
                        state = read_checkpoint(list_checkpoints(run_dir)[-1]).state
                        torch.save(state, state_file)
                        size, bare = state_file.stat().st_size, bare_save(state)
                    saves = len(cells["raytrainer, sync"])
                    bare_report = bare_report_run(state_file, f"{storage}/bare", saves, env)
                    cells["bare torch.save + report"] = bare_report
                    for label, times in cells.items():
                        _row(size, where, label, statistics.median(times[3:]), bare)
                _row(size, "local", "bare torch.save", bare, bare)
    finally:
        server.terminate()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-worker":
        _bare_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
