"""Deterministic, resumable sampling that splits a global batch across workers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raytrainer.errors import ConfigError


class ShardedBatchSampler:
    """Draws global batches from a per-epoch permutation and gives each rank its slice.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, and the sampler's position is
    part of its state, so a resumed run draws exactly the batches an uninterrupted one would,
    and ``world_size`` workers together see the same global batch as one process.

    Parameters
    ----------
    num_samples : int
        Length of the dataset.
    global_batch_size : int
        Samples per step across all workers; must divide by ``world_size``.
    seed : int
        Seed of the permutations.
    world_rank, world_size : int
        This process's rank and the number of workers.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        seed: int,
        world_rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch_size % world_size:
            raise ConfigError(
                f"batch_size={global_batch_size} is the global batch and must divide by the "
                f"number of workers ({world_size}); change batch_size or the worker count."
            )
        if global_batch_size > num_samples:
            raise ConfigError(
                f"batch_size={global_batch_size} is larger than the dataset ({num_samples})."
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed = seed
        self.world_rank = world_rank
        self.epoch = 0
        self.position = 0
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def next_batch(self) -> torch.Tensor:
        """Return this rank's indices of the next global batch (full batches only)."""
        if self.position + self.global_batch_size > self.num_samples:
            self.epoch += 1
            self.position = 0
        if self._perm_epoch != self.epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.num_samples, generator=generator)
            self._perm_epoch = self.epoch
        start = self.position + self.world_rank * self.local_batch_size
        self.position += self.global_batch_size
        return self._perm[start : start + self.local_batch_size]

    def state_dict(self) -> dict[str, Any]:
        """Return the position: epoch and offset within it."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


class GlobalDraws:
    """Random numbers drawn for a whole global batch, of which this rank keeps its rows.

    Every rank seeds the generator alike, from ``(seed, step, stream)``, and draws for all
    ``global_size`` rows, so what a row gets does not depend on how many ranks share the batch:
    two workers roll out exactly the episodes and actions one process would. Nothing needs
    saving for an exact resume: a step's draws follow from its number.

    Parameters
    ----------
    seed, step, stream : int
        Seed the generator (``stream`` separates uses of one step, e.g. training and tests).
    global_size : int
        Rows of the global batch.
    world_rank, world_size : int
        This rank keeps rows ``[global_size * rank // size, global_size * (rank + 1) // size)``.
    device : torch.device
        Where the draws are returned (they are made on the CPU, so any device gets the same).
    """

    def __init__(
        self,
        seed: int,
        step: int,
        stream: int,
        global_size: int,
        world_rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        (state,) = np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)
        self.generator = torch.Generator().manual_seed(int(state))
        self.global_size = global_size
        self.start = global_size * world_rank // world_size
        self.stop = global_size * (world_rank + 1) // world_size
        self.device = torch.device(device)

    def integers(self, high: int) -> torch.Tensor:
        """Return this rank's rows of ``global_size`` integers in ``[0, high)``."""
        draws = torch.randint(high, (self.global_size,), generator=self.generator)
        return draws[self.start : self.stop].to(self.device)

    def uniform(self, *shape: int) -> torch.Tensor:
        """Return this rank's rows of a ``[global_size, *shape]`` uniform draw in ``[0, 1)``."""
        draws = torch.rand(self.global_size, *shape, generator=self.generator)
        return draws[self.start : self.stop].to(self.device)

    def permutation(self, n: int) -> torch.Tensor:
        """A permutation of ``range(n)``, the same on every rank (not sliced)."""
        return torch.randperm(n, generator=self.generator).to(self.device)
