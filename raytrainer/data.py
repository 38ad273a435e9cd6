"""A deterministic, resumable sampler that splits a global batch across workers."""

from __future__ import annotations

from typing import Any

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
