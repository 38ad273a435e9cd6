"""The example trainer plus a test gate: it can stop dead after a chosen checkpoint.

When ``RAYTRAINER_TEST_GATE`` is ``"<iteration>:<folder>"`` (or several, comma-separated),
rank 0 writes ``GATE <iteration> <pid>`` into the FIFO ``<folder>/out`` after saving that
checkpoint, then blocks opening the FIFO ``<folder>/hold``, which nobody opens. A test reads
the line (a blocking read, no sleep) and kills the process it names, or its driver, or its
node, at a known point.
With ``RAYTRAINER_TEST_GATE_SKIP=n`` the gate lets the first ``n`` processes pass that
iteration (a sweep's earlier trials) and stops the next one. ``RAYTRAINER_TEST_STARTS`` names a
file that gets a line ``<run id> <iteration>`` at the first training step of each process, so a
test sees where every attempt began (an attempt with nothing left to train writes none).
With ``RAYTRAINER_TEST_SIGTERM=<iteration>:<pid file>`` rank 0 sends SIGTERM, at that
iteration's step, to the process whose pid the file holds (``self``: its own), then waits until
its runner reports the stop request (``settings.stop_requested``), so the run stops exactly
there — what ``ray job stop`` or a scheduler does to the driver, at a known point.
With ``RAYTRAINER_TEST_DRAIN=<iteration>:<folder>`` rank 0 writes ``GATE <iteration> <pid>`` into
``<folder>/out`` at that iteration's step, then waits until its runner reports a preemption
notice (``settings.preempted``: the test drains the node), so the notice is seen exactly there.
With ``RAYTRAINER_TEST_SAMPLES=<folder>`` every process of the regression trainer appends a
line ``<step> <index> ...`` per step to ``<folder>/<pid>.txt``: the samples its rank read.
Without the variables this is the example trainer.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from examples.regression import RegressionTrainer
from raytrainer.trainers import SoloAgentTrainer, VanillaPpoTrainer

GATE_ENV = "RAYTRAINER_TEST_GATE"
SIGTERM_ENV = "RAYTRAINER_TEST_SIGTERM"
DRAIN_ENV = "RAYTRAINER_TEST_DRAIN"
SKIP_ENV = "RAYTRAINER_TEST_GATE_SKIP"
STARTS_ENV = "RAYTRAINER_TEST_STARTS"
SAMPLES_ENV = "RAYTRAINER_TEST_SAMPLES"


def make_gate(folder: Path, iteration: int) -> str:
    """Create the two FIFOs in ``folder``; return the value for ``RAYTRAINER_TEST_GATE``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "out")
    os.mkfifo(folder / "hold")
    return f"{iteration}:{folder}"


def read_starts(path: Path) -> dict[str, list[int]]:
    """Where each run's ``train()`` calls started, in order, from a starts file."""
    starts: dict[str, list[int]] = {}
    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        run_id, iteration = line.split()
        starts.setdefault(run_id, []).append(int(iteration))
    return starts


def wait_for_gate(folder: Path) -> tuple[int, int]:
    """Block until the trainer reaches the gate; return ``(iteration, pid)``."""
    with open(folder / "out") as fifo:
        word, iteration, pid = fifo.readline().split()
    assert word == "GATE"
    return int(iteration), int(pid)


class GateMixin:
    """Blocks rank 0 after the checkpoint the gate names (see module docstring)."""

    def _after_step(self, bar) -> None:  # noqa: ANN001
        spec = os.environ.get(SIGTERM_ENV)
        if spec and self.settings.is_rank_zero:
            iteration, target = spec.split(":", 1)
            if self.iteration == int(iteration):
                pid = os.getpid() if target == "self" else int(Path(target).read_text())
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 120
                while not self.settings.stop_requested() and time.monotonic() < deadline:
                    time.sleep(0.01)  # polls the condition; the request crosses processes
        drain = os.environ.get(DRAIN_ENV)
        if drain and self.settings.is_rank_zero:
            iteration, folder = drain.split(":", 1)
            fired = Path(folder) / "fired"
            if self.iteration == int(iteration) and not fired.exists():
                fired.touch()
                with open(Path(folder) / "out", "w") as fifo:
                    fifo.write(f"GATE {self.iteration} {os.getpid()}\n")
                deadline = time.monotonic() + 120
                while not self.settings.preempted() and time.monotonic() < deadline:
                    time.sleep(0.01)  # polls the condition: the notice comes from Ray Train
        super()._after_step(bar)

    def save_checkpoint(self, log: bool = True) -> None:
        super().save_checkpoint(log)
        gates = os.environ.get(GATE_ENV)
        if not gates or not self.settings.is_rank_zero:
            return
        if any(int(gate.split(":", 1)[0]) == self.iteration for gate in gates.split(",")):
            self._checkpointer.wait_saved()  # the gate's checkpoint is in storage when it stops
        for gate in gates.split(","):
            self._pass_gate(*gate.split(":", 1))

    def _pass_gate(self, iteration: str, folder: str) -> None:
        fired = Path(folder) / "fired"
        if self.iteration == int(iteration) and not fired.exists():
            passes = Path(folder) / "passes"
            with open(passes, "a") as out:
                out.write(".")
            if len(passes.read_text()) <= int(os.environ.get(SKIP_ENV, "0")):
                return
            fired.touch()  # once: a resumed run may pass this iteration again
            with open(Path(folder) / "out", "w") as fifo:
                fifo.write(f"GATE {self.iteration} {os.getpid()}\n")
            with open(Path(folder) / "hold"):  # blocks until killed
                pass


class GatedSoloAgentTrainer(GateMixin, SoloAgentTrainer):
    """The graph-isomorphism ``solo_agent`` trainer with the gate."""


class GatedVanillaPpoTrainer(GateMixin, VanillaPpoTrainer):
    """``vanilla_ppo`` with the gate."""


class GatedSgdPpoTrainer(GatedVanillaPpoTrainer):
    """:class:`GatedVanillaPpoTrainer` stepping with plain SGD.

    Adam turns rounding noise in near-zero gradients (a bias under a softmax) into steps of
    ``lr``, so runs that add gradients in another order part by O(lr); SGD shows whether two
    workers compute the one-process update to float tolerance.
    """

    def _build(self) -> None:
        super()._build()
        self.optimizers = {
            name: torch.optim.SGD(model.parameters(), lr=self.hyper_params.rl.lr)
            for name, model in self.models.items()
        }


class GatedRegressionTrainer(GateMixin, RegressionTrainer):
    """:class:`RegressionTrainer` that can block after one checkpoint (see module docstring)."""

    def make_sampler(self, num_samples: int):  # noqa: ANN201
        sampler = super().make_sampler(num_samples)
        folder = os.environ.get(SAMPLES_ENV)
        if folder:
            draw = sampler.next_batch

            def logged() -> torch.Tensor:
                indices = draw()
                with open(Path(folder) / f"{os.getpid()}.txt", "a") as out:
                    out.write(" ".join(map(str, [self.iteration + 1, *indices.tolist()])) + "\n")
                return indices

            sampler.next_batch = logged
        return sampler

    def training_step(self) -> None:
        starts = os.environ.get(STARTS_ENV)
        if starts and self.settings.is_rank_zero and not getattr(self, "_start_noted", False):
            self._start_noted = True  # the first step of this process: where the attempt began
            with open(starts, "a") as out:  # one short line: appends do not interleave
                out.write(f"{self.run_id} {self.iteration}\n")
        super().training_step()


class BrokenTrainer(RegressionTrainer):
    """Fails while building, as a trainer with a bad model definition would."""

    def _build(self) -> None:
        raise ValueError("the model definition is broken: hidden_dim must be even")


class NeverSavesTrainer(RegressionTrainer):
    """Trains but never saves a checkpoint: what a dry run (``--test-run``) must catch."""

    def save_checkpoint(self, log: bool = True) -> None:
        pass


class PeakScoreTrainer(RegressionTrainer):
    """Records ``score = -(iteration - 20)²`` too: a metric that is the same on every runner
    and peaks mid-run, so the best checkpoint is neither the first nor the newest."""

    def training_step(self) -> None:
        super().training_step()
        self.record_metrics(score=-float((self.iteration - 20) ** 2))
