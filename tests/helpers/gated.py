"""The example trainer plus a test gate: it can stop dead after a chosen checkpoint.

When ``RAYTRAINER_TEST_GATE`` is ``"<iteration>:<folder>"``, rank 0 writes
``GATE <iteration> <pid>`` into the FIFO ``<folder>/out`` after saving that checkpoint, then
blocks opening the FIFO ``<folder>/hold``, which nobody opens. A test reads the line (a
blocking read, no sleep) and kills the process it names, or its driver, at a known point.
Without the variable this is the example trainer.
"""

from __future__ import annotations

import os
from pathlib import Path

from examples.regression import RegressionTrainer

GATE_ENV = "RAYTRAINER_TEST_GATE"


def make_gate(folder: Path, iteration: int) -> str:
    """Create the two FIFOs in ``folder``; return the value for ``RAYTRAINER_TEST_GATE``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "out")
    os.mkfifo(folder / "hold")
    return f"{iteration}:{folder}"


def wait_for_gate(folder: Path) -> tuple[int, int]:
    """Block until the trainer reaches the gate; return ``(iteration, pid)``."""
    with open(folder / "out") as fifo:
        word, iteration, pid = fifo.readline().split()
    assert word == "GATE"
    return int(iteration), int(pid)


class GatedRegressionTrainer(RegressionTrainer):
    """:class:`RegressionTrainer` that can block after one checkpoint (see module docstring)."""

    def save_checkpoint(self, log: bool = True) -> None:
        super().save_checkpoint(log)
        gate = os.environ.get(GATE_ENV)
        if not gate or not self.settings.is_rank_zero:
            return
        iteration, folder = gate.split(":", 1)
        fired = Path(folder) / "fired"
        if self.iteration == int(iteration) and not fired.exists():
            fired.touch()  # once: a resumed run may pass this iteration again
            with open(Path(folder) / "out", "w") as fifo:
                fifo.write(f"GATE {self.iteration} {os.getpid()}\n")
            with open(Path(folder) / "hold"):  # blocks until killed
                pass


class BrokenTrainer(RegressionTrainer):
    """Fails while building, as a trainer with a bad model definition would."""

    def _build(self) -> None:
        raise ValueError("the model definition is broken: hidden_dim must be even")
