"""Cost of the W&B checkpoint mirror: training steps/s with the mirror on (offline) vs. off.

In-process runs of the regression example (a ~20 ms step, a 12 MB checkpoint every 100 steps:
about every 2 s), off and on alternating; prints the ratio of the medians and the median of the
ratios of adjacent pairs, which cancels the machine's slow drifts. Steady state: the loop is
timed from step 100 (W&B's start-up, which overlaps the first steps, and the final flush are
excluded); W&B's folders go to a temporary directory.

    python bench/mirror_overhead.py [--repeats 5] [--steps 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.regression import RegressionTrainer  # noqa: E402
from raytrainer import ExperimentSettings, load_hyper_params, run_local  # noqa: E402

WARMUP = 100  # steps before timing: wandb.init (imports, wandb-core start) overlaps these
TRAIN_TIMES: list[float] = []


class TimedTrainer(RegressionTrainer):
    def record_metrics(self, metrics=None, **kw) -> None:
        super().record_metrics(metrics, **kw)
        if self.iteration == WARMUP:
            self._timed_from = time.perf_counter()
        if self.iteration == self.hyper_params.num_iterations:
            TRAIN_TIMES.append(time.perf_counter() - self._timed_from)


def rate(steps: int, mode: str, tmp: Path) -> float:
    hp = load_hyper_params(
        {
            "trainer": "__main__:TimedTrainer",
            "scenario": "examples.regression:build_regression_scenario",
            "num_iterations": steps,
            "batch_size": 256,
            "num_samples": 8192,
            "hidden_dim": 1024,
        }
    )
    settings = ExperimentSettings(
        storage_path=str(tmp / "runs"),
        checkpoint_period=100,
        progress_bar_factory=None,
        wandb_mode=mode,
    )
    run_local(hp, settings)
    return (steps - WARMUP) / TRAIN_TIMES[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"disabled": [], "offline": []}
    with tempfile.TemporaryDirectory() as wandb_root:
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            os.environ[var] = os.path.join(wandb_root, var.lower())
            os.makedirs(os.environ[var])
        os.environ["WANDB_SILENT"] = "true"
        for repeat in range(args.repeats):
            for mode in results:
                with tempfile.TemporaryDirectory() as tmp:
                    results[mode].append(rate(args.steps, mode, Path(tmp)))
                print(
                    f"repeat {repeat} mirror {mode:>8}: {results[mode][-1]:.1f} steps/s", flush=True
                )
    off, on = statistics.median(results["disabled"]), statistics.median(results["offline"])
    pairs = zip(results["disabled"], results["offline"], strict=True)
    paired = statistics.median(b / a for a, b in pairs)
    print(
        f"steps/s median: mirror off {off:.1f}, mirror on (offline) {on:.1f}; ratio of "
        f"medians {on / off:.3f}, median of paired ratios {paired:.3f} (target >= 0.98)"
    )


if __name__ == "__main__":
    main()
