"""Cost of the W&B checkpoint mirror: training steps/s with the mirror on (offline) vs. off.

Two trainers of the regression example (a ~20 ms step, a 16 MB checkpoint) live in this
process, one with the mirror on (W&B offline) and one with it off, and take turns. A turn is
``save_checkpoint()`` followed by 100 training steps (about 2 s), timed as one, so the mirror's
background work for a checkpoint (building and logging its artifact) competes with its own
trainer's steps. Before the turn passes, the bench waits for the mirror's queue to drain
(untimed, and printed: about 0 when the mirror keeps up). Turns alternate in ABBA order every
~2 s, which cancels this machine's drift; between separate runs that drift (±10 %) is larger
than the effect measured.

Prints steps/s with the mirror on and off and their ratio (target >= 0.98), the median of the
ratios of adjacent turns, how long ``save_checkpoint()`` blocks with the mirror on and off, and
the CPU time the mirror thread spends per checkpoint with XXH128 digests (the default) and MD5.
W&B's folders go to a temporary directory.

    python bench/mirror_overhead.py [--turns 30] [--steps 100]
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
from raytrainer import ExperimentSettings, build_trainer, load_hyper_params  # noqa: E402
from raytrainer.checkpoint.wandb_mirror import WandbClient  # noqa: E402

MIRROR_CPU: list[float] = []  # the mirror thread's CPU clock after each logged artifact


class CpuClockClient(WandbClient):
    def log_artifact(self, run, artifact, aliases) -> None:
        super().log_artifact(run, artifact, aliases)
        MIRROR_CPU.append(time.thread_time())  # runs in the mirror thread


class TurnTrainer(RegressionTrainer):
    """The example trainer, driven in turns: a checkpoint, then ``steps`` training steps."""

    wandb_client_cls = CpuClockClient

    def turn(self, steps: int) -> tuple[float, float]:
        """Return the turn's seconds and how long its ``save_checkpoint()`` blocked."""
        start = time.perf_counter()
        self.save_checkpoint(log=False)
        saved = time.perf_counter()
        for _ in range(steps):
            self.training_step()
        return time.perf_counter() - start, saved - start

    def drain(self) -> float:
        """Wait until the mirror has handled every queued item; return the seconds waited."""
        start = time.perf_counter()
        while self._checkpointer.mirror is not None and self._checkpointer.mirror.pending:
            time.sleep(0.001)
        return time.perf_counter() - start


def trainer(mode: str, storage: str, digest: str = "XXH128") -> TurnTrainer:
    hp = load_hyper_params(
        {
            "trainer": f"{__name__}:TurnTrainer",
            "scenario": "examples.regression:build_regression_scenario",
            "num_iterations": 10**9,  # the bench drives the loop
            "batch_size": 256,
            "num_samples": 8192,
            "hidden_dim": 1024,
            "seed": 1 if mode == "disabled" else 2,  # two distinct run ids
        }
    )
    settings = ExperimentSettings(
        storage_path=storage,
        progress_bar_factory=None,
        wandb_mode=mode,
        wandb_digest_algorithm=digest,
    )
    return build_trainer(hp, settings)  # type: ignore[return-value]


def mirror_cpu_ms(steps: int, storage: str, digest: str, turns: int = 6) -> float:
    """Median CPU milliseconds of the mirror thread per checkpoint."""
    MIRROR_CPU.clear()
    timed = trainer("offline", storage, digest)
    for _ in range(turns):
        timed.turn(steps)
        timed.drain()
    timed.close()
    return statistics.median(b - a for a, b in itertools.pairwise(MIRROR_CPU[1:])) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=30, help="timed turns per trainer")
    parser.add_argument("--steps", type=int, default=100, help="training steps per turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            os.environ[var] = os.path.join(root, var.lower())
            os.makedirs(os.environ[var])
        os.environ["WANDB_SILENT"] = "true"
        trainers = {
            mode: trainer(mode, os.path.join(root, mode)) for mode in ("disabled", "offline")
        }
        for t in trainers.values():  # untimed: wandb.init, first checkpoints, caches
            for _ in range(2):
                t.turn(args.steps)
                t.drain()
        seconds: dict[str, list[float]] = {mode: [] for mode in trainers}
        blocked: dict[str, list[float]] = {mode: [] for mode in trainers}
        drained = 0.0
        for turn in range(args.turns):
            # ABBA order: a mode that gains from going first or second gains equally often.
            for mode in sorted(trainers, reverse=turn % 2 == 1):
                took, save = trainers[mode].turn(args.steps)
                seconds[mode].append(took)
                blocked[mode].append(save)
                drained += trainers[mode].drain()
        for t in trainers.values():
            t.close()
        cpu = {d: mirror_cpu_ms(args.steps, os.path.join(root, d), d) for d in ("XXH128", "MD5")}
    steps = args.steps * args.turns
    off, on = steps / sum(seconds["disabled"]), steps / sum(seconds["offline"])
    pairs = zip(seconds["disabled"], seconds["offline"], strict=True)
    paired = statistics.median(a / b for a, b in pairs)
    print(
        f"steps/s: mirror off {off:.1f}, mirror on (offline) {on:.1f}; ratio {on / off:.3f} "
        f"(target >= 0.98), median of adjacent-turn ratios {paired:.3f}\n"
        f"save_checkpoint() blocks (median): mirror off "
        f"{statistics.median(blocked['disabled']) * 1e3:.1f} ms, on "
        f"{statistics.median(blocked['offline']) * 1e3:.1f} ms; waited for the mirror to "
        f"drain between turns: {drained:.2f} s in all\n"
        f"mirror thread CPU per 16 MB checkpoint: {cpu['XXH128']:.1f} ms with XXH128 digests "
        f"(default), {cpu['MD5']:.1f} ms with MD5"
    )


if __name__ == "__main__":
    main()
