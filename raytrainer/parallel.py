"""Data parallelism for trainers: each rank's model wrapper and its share of every batch.

Mixed into :class:`raytrainer.Trainer`, so a trainer written for one process gets DDP under Ray
unchanged: ``prepare_model`` wraps, ``unwrap_model`` unwraps for checkpoints (which are then
identical across runners), ``make_sampler`` gives this rank its slice of the global batch,
``all_reduce_sum`` adds up what the ranks computed on their slices.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from raytrainer.data import ShardedBatchSampler
from raytrainer.params import HyperParameters
from raytrainer.settings import ExperimentSettings


class DataParallelMixin:
    """What a trainer uses to run on one process or many; reads rank and device from it."""

    hyper_params: HyperParameters
    settings: ExperimentSettings
    device: torch.device

    def make_sampler(self, num_samples: int) -> ShardedBatchSampler:
        """Return a sampler of this rank's share of each global batch (``batch_size``)."""
        return ShardedBatchSampler(
            num_samples,
            self.hyper_params.batch_size,
            self.hyper_params.seed,
            self.settings.world_rank,
            self.settings.world_size,
        )

    def prepare_model(self, module: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
        """Move a module to the device, wrapped for data parallelism when there are workers.

        ``ddp_kwargs`` go to ``DistributedDataParallel`` (``find_unused_parameters=True`` for
        a module whose steps each use only some of its heads).
        """
        module = module.to(self.device)
        if self.settings.world_size > 1 and dist.is_available() and dist.is_initialized():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=device_ids, **ddp_kwargs
            )
        return module

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place, and return it (as is in one process)."""
        if self.settings.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def unwrap_model(module: torch.nn.Module) -> torch.nn.Module:
        """Return the module inside a DDP wrapper, so checkpoints match across runners."""
        return (
            module.module
            if isinstance(module, torch.nn.parallel.DistributedDataParallel)
            else module
        )
