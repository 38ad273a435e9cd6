"""How long ``save_checkpoint()`` blocks a Ray run, against a bare ``torch.save`` of its state.

Runs ``raytrainer run examples/regression.yaml --num-workers 2`` (local storage, a checkpoint
every 100 iterations) for the example's small state and a ~64 MB one (``hidden_dim=2300``),
each under Ray Train's default controller poll (every 2 s) and under raytrainer's (0.1 s, what
a run gets unless ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` is set), reading the save times rank 0
logs (``saved checkpoint ... in X s``). Prints, per cell, the median over the saves after the
first three and its ratio to the median of 10 bare ``torch.save`` calls of the run's final
state to a local folder. Usage::

    python bench/checkpoint_stall.py [--iterations 1300]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from raytrainer.checkpoint import list_checkpoints, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAVED = re.compile(r"saved checkpoint \S+ at iteration \d+ in ([0-9.]+)s")


def ray_run(storage: Path, iterations: int, hidden: int, poll: str | None) -> list[float]:
    """One 2-worker run; the seconds each save blocked rank 0, in order."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}
    if poll is not None:
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = poll
    command = [sys.executable, "-m", "raytrainer", "run", "examples/regression.yaml"]
    command += ["--num-workers", "2", "--no-progress", "--wandb-mode", "disabled"]
    command += ["--storage-path", str(storage), "--checkpoint-period", "100"]
    command += ["--set", f"num_iterations={iterations}", "--set", f"hidden_dim={hidden}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return [float(s) for s in SAVED.findall(done.stdout + done.stderr)]


def bare_save(run_dir: Path) -> tuple[float, int]:
    """Median seconds of 10 ``torch.save`` calls of the run's final state; its size in bytes."""
    state = read_checkpoint(list_checkpoints(run_dir)[-1]).state
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(10):
            start = time.perf_counter()
            torch.save(state, Path(folder) / f"state{i}.pt")
            times.append(time.perf_counter() - start)
        size = (Path(folder) / "state0.pt").stat().st_size
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1300)
    args = parser.parse_args()
    print(
        f"{'state':>8} {'controller poll':>16} {'save blocks (median)':>21} {'bare save':>10} "
        f"{'ratio':>6}"
    )
    for hidden in (64, 2300):
        for label, poll in (("Ray default 2 s", "2"), ("raytrainer 0.1 s", None)):
            with tempfile.TemporaryDirectory() as root:
                saves = ray_run(Path(root), args.iterations, hidden, poll)
                (run_dir,) = Path(root).iterdir()
                bare, size = bare_save(run_dir)
            blocked = statistics.median(saves[3:])
            print(
                f"{size / 2**20:>6.1f}MB {label:>16} {blocked * 1000:>18.0f} ms "
                f"{bare * 1000:>7.1f} ms {blocked / bare:>6.1f}"
            )


if __name__ == "__main__":
    main()
