"""The example trainer plus a test gate: it can stop dead after a chosen checkpoint.

When ``RAYTRAINER_TEST_GATE`` is ``"<iteration>:<fifo path>"``, the trainer prints
``GATE <iteration>`` after saving that checkpoint and then blocks opening the FIFO, so a test
can SIGKILL it at a known point without sleeping. Without the variable it is the example.
"""

from __future__ import annotations

import os
import sys

from examples.regression import RegressionTrainer


class GatedRegressionTrainer(RegressionTrainer):
    """:class:`RegressionTrainer` that can block after one checkpoint (see module docstring)."""

    def save_checkpoint(self, log: bool = True) -> None:
        super().save_checkpoint(log)
        gate = os.environ.get("RAYTRAINER_TEST_GATE")
        if gate:
            iteration, fifo = gate.split(":", 1)
            if self.iteration == int(iteration):
                print(f"GATE {self.iteration}", flush=True)
                sys.stdout.flush()
                with open(fifo):  # blocks until the test opens the other end (it never does)
                    pass
