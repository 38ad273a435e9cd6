"""What a sweep costs and saves: ASHA vs FIFO on one space, and a sweep vs sequential runs.

    .venv/bin/python bench/sweep_efficiency.py [--iterations 600]

Same space and seed throughout: the regression example, 3 learning rates x 2 batch sizes,
scored by the loss on the whole dataset at every checkpoint (``val_loss``: a per-batch loss is
too noisy to compare sweeps by). Prints

1. iterations consumed and best ``val_loss`` under ASHA vs FIFO (targets: ASHA <= 0.5x FIFO's
   iterations, best within 5 %);
2. the wall time of ``raytrainer sweep`` (FIFO, 6 trials, a local Ray instance) vs the same 6
   trials as sequential ``raytrainer run --local`` commands (target: <= 1.2x; each command
   pays Python and torch start-up, the sweep pays Ray's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.regression import RegressionTrainer  # noqa: E402

RATES = [0.0003, 0.003, 0.03]
BATCHES = [64, 256]


class EvalTrainer(RegressionTrainer):
    """The example trainer, also recording the loss on the whole dataset before each save."""

    def save_checkpoint(self, log: bool = True) -> None:
        with torch.no_grad():
            self.model.eval()
            self.record_metrics(val_loss=nn.functional.mse_loss(self.model(self.x), self.y))
            self.model.train()
        super().save_checkpoint(log)


def base_config(iterations: int) -> dict:
    config = yaml.safe_load((REPO / "examples" / "regression.yaml").read_text())
    config.update(trainer="sweep_efficiency:EvalTrainer", num_iterations=iterations, hidden_dim=256)
    return config


def sweep_file(folder: Path, name: str, iterations: int, scheduler: dict) -> Path:
    spec = {
        "name": name,
        "base": base_config(iterations),
        "metric": "val_loss",
        "mode": "min",
        "search": {
            "agents._default.learning_rate": {"grid": RATES},
            "batch_size": {"grid": BATCHES},
        },
        "scheduler": scheduler,
        "settings": {"checkpoint_period": iterations // 12, "wandb_mode": "disabled"},
        "seed": 0,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=600)
    args = parser.parse_args()
    n = args.iterations
    folder = Path(tempfile.mkdtemp(prefix="raytrainer-bench-sweep-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")]),
        "RAYTRAINER_STORAGE": str(folder / "runs"),
        "WANDB_MODE": "disabled",
    }
    cli = [sys.executable, "-m", "raytrainer"]
    asha = {"type": "asha", "max_t": n, "grace_period": n // 12, "reduction_factor": 3}
    walls = {}
    for name, scheduler in (("fifo", {"type": "fifo"}), ("asha", asha)):
        path = sweep_file(folder, name, n, scheduler)
        walls[name] = timed([*cli, "sweep", str(path)], env, REPO)
    summaries = {
        name: json.loads((folder / "runs" / name / "sweep_summary.json").read_text())
        for name in ("fifo", "asha")
    }
    used = {name: sum(r["iteration"] for r in s["trials"]) for name, s in summaries.items()}
    best = {name: s["best"]["val_loss_last"] for name, s in summaries.items()}

    config = folder / "base.yaml"
    config.write_text(yaml.safe_dump(base_config(n)))
    local = 0.0
    for rate in RATES:
        for batch in BATCHES:
            local += timed(
                [
                    *cli,
                    "run",
                    str(config),
                    "--local",
                    "--no-progress",
                    "--checkpoint-period",
                    str(n // 12),
                    "--set",
                    f"agents._default.learning_rate={rate}",
                    "--set",
                    f"batch_size={batch}",
                ],
                env,
                REPO,
            )
    print(f"space: {len(RATES)} learning rates x {len(BATCHES)} batch sizes, {n} iterations each")
    print(
        f"iterations: ASHA {used['asha']} / FIFO {used['fifo']} = "
        f"{used['asha'] / used['fifo']:.2f} (target <= 0.5)"
    )
    print(
        f"best val_loss: ASHA {best['asha']:.4f} / FIFO {best['fifo']:.4f} = "
        f"{best['asha'] / best['fifo']:.3f} (target within 5 %)"
    )
    print(
        f"wall: FIFO sweep {walls['fifo']:.1f}s, ASHA sweep {walls['asha']:.1f}s, "
        f"6 sequential --local runs {local:.1f}s; sweep/sequential = "
        f"{walls['fifo'] / local:.2f} (target <= 1.2)"
    )


if __name__ == "__main__":
    main()
