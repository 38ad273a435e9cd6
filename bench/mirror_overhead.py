"""Cost of the W&B checkpoint mirror: training steps/s with the mirror on (offline) vs. off.

In-process runs of the regression example (a ~20 ms step, a 16 MB checkpoint every 100 steps:
about every 2 s), off and on alternating after one untimed warm-up run of each; prints the
ratio of the medians and the median of the ratios of adjacent pairs, which cancels the
machine's slow drifts. Also prints the CPU time the mirror thread spends per checkpoint (building
and logging the artifact), with XXH128 digests (the default) and with MD5. Steady state: the
loop is timed from step 200 (W&B's start-up, which overlaps the first steps, and the final flush are
excluded); W&B's folders go to a temporary directory.

    python bench/mirror_overhead.py [--repeats 5] [--steps 1000]
"""

from __future__ import annotations

import argparse
import itertools
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
from raytrainer.checkpoint.wandb_mirror import WandbClient  # noqa: E402

WARMUP = 200  # steps before timing: wandb.init (imports, wandb-core start) overlaps these
CHECKPOINT_PERIOD = 100
TIMED: list[float] = []  # wall seconds of the timed loop
MIRROR_CPU: list[float] = []  # the mirror thread's CPU clock after each logged artifact


class CpuClockClient(WandbClient):
    def log_artifact(self, run, artifact, aliases) -> None:
        super().log_artifact(run, artifact, aliases)
        MIRROR_CPU.append(time.thread_time())  # runs in the mirror thread


class TimedTrainer(RegressionTrainer):
    wandb_client_cls = CpuClockClient

    def record_metrics(self, metrics=None, **kw) -> None:
        super().record_metrics(metrics, **kw)
        if self.iteration == WARMUP:
            self._timed_from = time.perf_counter()
        if self.iteration == self.hyper_params.num_iterations:
            TIMED.append(time.perf_counter() - self._timed_from)


def measure(steps: int, mode: str, digest: str = "XXH128") -> float:
    """Steps/s of the timed part of one run."""
    hp = load_hyper_params(
        {
            "trainer": f"{__name__}:TimedTrainer",
            "scenario": "examples.regression:build_regression_scenario",
            "num_iterations": steps,
            "batch_size": 256,
            "num_samples": 8192,
            "hidden_dim": 1024,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = ExperimentSettings(
            storage_path=tmp,
            checkpoint_period=CHECKPOINT_PERIOD,
            progress_bar_factory=None,
            wandb_mode=mode,
            wandb_digest_algorithm=digest,
        )
        run_local(hp, settings)
    return (steps - WARMUP) / TIMED[-1]


def mirror_cpu_ms(steps: int, digest: str) -> float:
    """Median CPU milliseconds of the mirror thread per checkpoint, in one offline run."""
    MIRROR_CPU.clear()
    measure(steps, "offline", digest)
    return statistics.median(b - a for a, b in itertools.pairwise(MIRROR_CPU)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"disabled": [], "offline": []}
    with tempfile.TemporaryDirectory() as wandb_root:
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            os.environ[var] = os.path.join(wandb_root, var.lower())
            os.makedirs(os.environ[var])
        os.environ["WANDB_SILENT"] = "true"
        for mode in rates:  # untimed: imports, page cache, wandb-core's first start
            measure(WARMUP + CHECKPOINT_PERIOD, mode)
        for repeat in range(args.repeats):
            for mode in rates:
                rates[mode].append(rate := measure(args.steps, mode))
                print(f"repeat {repeat} mirror {mode:>8}: {rate:.1f} steps/s", flush=True)
        cpu = {digest: mirror_cpu_ms(args.steps, digest) for digest in ("XXH128", "MD5")}
    off, on = statistics.median(rates["disabled"]), statistics.median(rates["offline"])
    pairs = zip(rates["disabled"], rates["offline"], strict=True)
    paired = statistics.median(b / a for a, b in pairs)
    print(
        f"steps/s median: mirror off {off:.1f}, mirror on (offline) {on:.1f}; ratio of "
        f"medians {on / off:.3f}, median of paired ratios {paired:.3f} (target >= 0.98)\n"
        f"mirror thread CPU per 16 MB checkpoint: {cpu['XXH128']:.1f} ms with XXH128 digests "
        f"(default), {cpu['MD5']:.1f} ms with MD5"
    )


if __name__ == "__main__":
    main()
