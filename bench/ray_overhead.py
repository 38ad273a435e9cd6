"""Ray overhead: raytrainer on 1 Ray worker vs. a bare TorchTrainer vs. in-process.

For each, the time from the run call to the first finished training step, and the
steady-state steps/s (from step 50 to the end, checkpoints every 100 steps included). Runs are
interleaved and the medians of ``--repeats`` runs are printed with their ratios. Ray is started
once for the whole script; run from the repository root:

    python bench/ray_overhead.py [--repeats 5] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # Ray workers import `bench` and `examples` from the driver's directory

from examples.regression import RegressionTrainer, build_regression_scenario  # noqa: E402
from raytrainer import ExperimentSettings, Scaling, load_hyper_params, run, run_local  # noqa: E402

OUT_ENV = "RAYTRAINER_BENCH_OUT"
PERIOD = 100
WARMUP = 50


def config(steps: int) -> dict:
    return {
        "trainer": "bench.ray_overhead:StampedTrainer",
        "scenario": "examples.regression:build_regression_scenario",
        "num_iterations": steps,
        "batch_size": 256,
        "num_samples": 8192,
        "hidden_dim": 1024,
        "dropout": 0.1,
    }


class Stamps:
    """Wall-clock times of step 1, step WARMUP and the last step, written to a JSON file."""

    def __init__(self, path: str | None) -> None:
        self.path, self.times = path, {}

    def step(self, step: int, last: int) -> None:
        if step in (1, WARMUP, last):
            self.times[str(step)] = time.time()
        if step == last and self.path:
            Path(self.path).write_text(json.dumps(self.times))


class StampedTrainer(RegressionTrainer):
    """The example trainer, stamping the times of its steps (rank 0)."""

    def _build(self) -> None:
        super()._build()
        self._stamps = Stamps(os.environ.get(OUT_ENV) if self.settings.is_rank_zero else None)

    def record_metrics(self, metrics=None, **kw) -> None:
        super().record_metrics(metrics, **kw)
        self._stamps.step(self.iteration, self.hyper_params.num_iterations)


def bare_loop(cfg: dict) -> None:
    """The same math as a bare Ray Train loop: DDP, sharded batches, a checkpoint per 100 steps."""
    import ray.train
    import ray.train.torch

    hp = load_hyper_params(cfg["config"])
    torch.manual_seed(hp.seed)
    scenario = build_regression_scenario(hp, ExperimentSettings())
    model = ray.train.torch.prepare_model(scenario.agents["agent"])
    x, y = scenario.datasets["train"].tensors
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    context = ray.train.get_context()
    stamps = Stamps(cfg["out"] if context.get_world_rank() == 0 else None)
    generator = torch.Generator().manual_seed(hp.seed)
    perm, pos = torch.randperm(len(x), generator=generator), 0
    for step in range(1, hp.num_iterations + 1):
        if pos + hp.batch_size > len(x):
            perm, pos = torch.randperm(len(x), generator=generator), 0
        idx = perm[pos : pos + hp.batch_size]
        pos += hp.batch_size
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.step(step, hp.num_iterations)
        if step % PERIOD == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                    Path(tmp) / "state.pt",
                )
                ray.train.report(
                    {"loss": loss.item(), "step": step},
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                )


def measure(kind: str, steps: int, tmp: Path) -> tuple[float, float]:
    """Return (seconds to first step, steady-state steps/s) of one run."""
    out = tmp / "stamps.json"
    hp = load_hyper_params(config(steps))
    settings = ExperimentSettings(
        storage_path=str(tmp / "runs"),
        checkpoint_period=PERIOD,
        progress_bar_factory=None,
        worker_env={OUT_ENV: str(out)},
    )
    start = time.time()
    if kind == "local":
        os.environ[OUT_ENV] = str(out)
        run_local(hp, settings)
    elif kind == "raytrainer":
        run(hp, settings, Scaling(num_workers=1))
    else:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        TorchTrainer(
            bare_loop,
            train_loop_config={"config": config(steps), "out": str(out)},
            scaling_config=ScalingConfig(num_workers=1),
            run_config=RunConfig(name="bare", storage_path=str(tmp / "bare")),
        ).fit()
    stamps = json.loads(out.read_text())
    first = stamps["1"] - start
    rate = (steps - WARMUP) / (stamps[str(steps)] - stamps[str(WARMUP)])
    return first, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(logging_level="ERROR", log_to_driver=False)
    kinds = ("bare", "raytrainer", "local")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        for kind in kinds:
            with tempfile.TemporaryDirectory() as tmp:
                results[kind].append(measure(kind, args.steps, Path(tmp)))
            first, rate = results[kind][-1]
            print(
                f"repeat {repeat} {kind:>10}: first step {first:6.2f} s, {rate:6.1f} steps/s",
                flush=True,
            )
    ray.shutdown()
    med = {
        k: (statistics.median(f for f, _ in v), statistics.median(r for _, r in v))
        for k, v in results.items()
    }
    for kind, (first, rate) in med.items():
        print(f"median {kind:>10}: first step {first:6.2f} s, {rate:6.1f} steps/s")
    (bare_first, bare_rate), (ours_first, ours_rate) = med["bare"], med["raytrainer"]
    print(
        f"steady-state ratio raytrainer/bare TorchTrainer: {ours_rate / bare_rate:.3f} "
        "(target >= 0.97)"
    )
    print(
        f"start-up ratio raytrainer/bare TorchTrainer: {ours_first / bare_first:.3f} "
        "(target <= 1.10)"
    )
    print(
        f"raytrainer on Ray vs --local: steady-state {ours_rate / med['local'][1]:.3f}, "
        f"start-up {ours_first:.1f} s vs {med['local'][0]:.1f} s"
    )


if __name__ == "__main__":
    main()
