"""Plot metrics of finished runs against iterations, from their checkpoints' metadata.

Every checkpoint records the metrics of its iteration, so a run kept with ``--num-to-keep
none`` is its own learning curve. Usage::

    python bench/plot_runs.py OUT.png RUN_FOLDER[=LABEL] ... --metric test_mean_accuracy \\
        --metric prover_mean_episode_reward
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from raytrainer.checkpoint import list_checkpoints  # noqa: E402
from raytrainer.checkpoint.layout import METADATA_FILE  # noqa: E402


def curve(run_dir: Path, metric: str) -> tuple[list[int], list[float]]:
    """``(iterations, values)`` of ``metric`` over the run's checkpoints that record it."""
    points = []
    for checkpoint in list_checkpoints(run_dir):
        metadata = json.loads((checkpoint / METADATA_FILE).read_text())
        if metric in metadata.get("metrics", {}):
            points.append((metadata["iteration"], metadata["metrics"][metric]))
    return [p[0] for p in points], [p[1] for p in points]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+", help="run folder, optionally =label")
    parser.add_argument("--metric", action="append", required=True)
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(args.metric), figsize=(5 * len(args.metric), 3.6))
    for ax, metric in zip([axes] if len(args.metric) == 1 else axes, args.metric, strict=True):
        for index, run in enumerate(args.runs):  # one colour per run in every panel
            folder, _, label = run.partition("=")
            xs, ys = curve(Path(folder), metric)
            if xs:
                ax.plot(xs, ys, color=f"C{index}", label=label or Path(folder).name)
        ax.set_xlabel("iteration")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
