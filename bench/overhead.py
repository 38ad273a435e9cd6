"""Overhead of raytrainer's in-process runner vs. the same loop in plain PyTorch.

Prints, from one run of this script:
- steps/s of the regression example's training loop under ``run_local`` (checkpoint every
  100 steps) and of a hand-written PyTorch loop doing the same math and a bare ``torch.save``
  every 100 steps (start-up excluded from both);
- how long ``save_checkpoint()`` blocks vs. a bare ``torch.save`` of the same tensors;
- checkpoint digest throughput, SHA-256 (schema 1) vs. XXH3-128 (schema 2), on the same bytes:
  hashing an in-memory buffer in the 1 MiB blocks the checkpoint code uses, and ``file_digest``
  of a page-cached file holding those bytes.

Medians over interleaved repeats. Usage:
python bench/overhead.py [--repeats 5] [--steps 1000] [--digest-mib 512] [--digest-only]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import xxhash
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.regression import RegressionTrainer, build_regression_scenario  # noqa: E402
from raytrainer import ExperimentSettings, load_hyper_params, run_local  # noqa: E402
from raytrainer.checkpoint.layout import file_digest  # noqa: E402
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


DIGESTS = {"SHA-256": ("sha256", hashlib.sha256), "XXH3-128": ("xxh3_128", xxhash.xxh3_128)}
BLOCK = 1 << 20  # file_digest's read size


def digest_seconds(mib: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds to digest ``mib`` MiB per algorithm: in memory, and through file_digest."""
    data = os.urandom(mib << 20)
    view = memoryview(data)
    times: dict[str, dict[str, list[float]]] = {
        where: {name: [] for name in DIGESTS} for where in ("memory", "file")
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digest.bin"
        path.write_bytes(data)
        file_digest(path)  # into the page cache, so both algorithms read it from memory
        for _ in range(repeats):
            for name, (algorithm, new_hash) in DIGESTS.items():
                start = time.perf_counter()
                digest = new_hash()
                for offset in range(0, len(view), BLOCK):
                    digest.update(view[offset : offset + BLOCK])
                digest.hexdigest()
                times["memory"][name].append(time.perf_counter() - start)
                start = time.perf_counter()
                file_digest(path, algorithm)
                times["file"][name].append(time.perf_counter() - start)
    return {w: {n: statistics.median(t) for n, t in per.items()} for w, per in times.items()}


def print_digests(mib: int, repeats: int) -> None:
    gib = mib / 1024
    for where, seconds in digest_seconds(mib, repeats).items():
        label = "in memory" if where == "memory" else "file_digest, page-cached file"
        rates = {name: gib / s for name, s in seconds.items()}
        parts = [f"{name} {rate:.2f} GiB/s ({1 / rate:.3f} s/GiB)" for name, rate in rates.items()]
        print(
            f"digest {mib} MiB, {label}, median of {repeats}: {', '.join(parts)}; "
            f"XXH3-128 / SHA-256 {rates['XXH3-128'] / rates['SHA-256']:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    # 1000 steps (about 20 s per run here): W&B's one-off start-up beside a 2-core loop no longer
    # dominates, as it does in a 5 s run.
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--digest-mib", type=int, default=512, help="bytes hashed per digest")
    parser.add_argument("--digest-only", action="store_true", help="only the digest benchmark")
    args = parser.parse_args()
    if args.digest_only:
        print_digests(args.digest_mib, args.repeats)
        return
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
    print_digests(args.digest_mib, args.repeats)


if __name__ == "__main__":
    main()
