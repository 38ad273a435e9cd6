"""Overhead of raytrainer's in-process runner vs. the same loop in plain PyTorch.

Prints, from one run of this script:
- steps/s of the regression example's training loop under ``run_local`` (checkpoint every
  100 steps) and of a hand-written PyTorch loop doing the same math and a bare ``torch.save``
  every 100 steps (start-up excluded from both);
- how long ``save_checkpoint()`` blocks vs. a bare ``torch.save`` of the same tensors.

Medians over interleaved repeats. Usage: python bench/overhead.py [--repeats 5] [--steps 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.regression import RegressionTrainer, build_regression_scenario  # noqa: E402
from raytrainer import ExperimentSettings, load_hyper_params, run_local  # noqa: E402
from raytrainer.rng import seed_everything  # noqa: E402

PERIOD = 100
SAVE_TIMES: list[float] = []
TRAIN_TIMES: list[float] = []


class TimedTrainer(RegressionTrainer):
    """The example trainer, timing how long each save_checkpoint() blocks the loop."""

    def save_checkpoint(self, log: bool = True) -> None:
        start = time.perf_counter()
        super().save_checkpoint(log)
        SAVE_TIMES.append(time.perf_counter() - start)

    def train(self) -> None:
        start = time.perf_counter()
        super().train()
        TRAIN_TIMES.append(time.perf_counter() - start)


def config(steps: int) -> dict:
    return {
        "trainer": "__main__:TimedTrainer",
        "scenario": "examples.regression:build_regression_scenario",
        "num_iterations": steps,
        "batch_size": 256,
        "num_samples": 8192,
        "input_dim": 8,
        "hidden_dim": 1024,
        "dropout": 0.1,
        "agents": {"_default": {"learning_rate": 1e-3}},
    }


def raytrainer_rate(steps: int, storage: Path) -> float:
    hp = load_hyper_params(config(steps))
    settings = ExperimentSettings(
        storage_path=str(storage), checkpoint_period=PERIOD, progress_bar_factory=None
    )
    run_local(hp, settings)
    return steps / TRAIN_TIMES[-1]  # the training loop, as for the plain loop


def plain_rate(steps: int, storage: Path) -> tuple[float, list[float]]:
    hp = load_hyper_params(config(steps))
    seed_everything(hp.seed)
    scenario = build_regression_scenario(hp, ExperimentSettings())
    model = scenario.agents["agent"]
    x, y = scenario.datasets["train"].tensors
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(hp.seed)
    perm, pos, saves = torch.randperm(len(x), generator=generator), 0, []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if pos + hp.batch_size > len(x):
            perm, pos = torch.randperm(len(x), generator=generator), 0
        idx = perm[pos : pos + hp.batch_size]
        pos += hp.batch_size
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if step % PERIOD == 0:
            t0 = time.perf_counter()
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                storage / f"plain_{step}.pt",
            )
            saves.append(time.perf_counter() - t0)
    return steps / (time.perf_counter() - start), saves


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    plain, ours, plain_saves = [], [], []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            rate, saves = plain_rate(args.steps, Path(tmp))
            plain.append(rate)
            plain_saves += saves
        with tempfile.TemporaryDirectory() as tmp:
            ours.append(raytrainer_rate(args.steps, Path(tmp)))
        print(f"repeat {repeat}: plain {plain[-1]:.1f} steps/s, raytrainer {ours[-1]:.1f} steps/s")
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"step time (plain, median): {1000 / p:.1f} ms")
    print(
        f"steps/s median: plain {p:.1f}, raytrainer {o:.1f}; ratio {o / p:.3f} "
        f"(overhead {100 * (1 - o / p):.1f}%, checkpoint every {PERIOD} steps)"
    )
    s, b = statistics.median(SAVE_TIMES), statistics.median(plain_saves)
    print(
        f"blocking save median: save_checkpoint {1000 * s:.1f} ms, bare torch.save "
        f"{1000 * b:.1f} ms; ratio {s / b:.2f}"
    )


if __name__ == "__main__":
    main()
