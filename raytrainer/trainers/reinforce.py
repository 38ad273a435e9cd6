"""``reinforce``: REINFORCE for every agent under an interaction protocol.

Each iteration rolls out a batch of episodes (:mod:`raytrainer.trainers.rl`) and takes one
gradient step per agent on ``-log π(a) · G``: ``G`` is the discounted return, or, with
``reinforce.use_advantage_and_critic``, the GAE advantage (and the value head is trained too).
"""

from __future__ import annotations

import torch

from raytrainer.trainer import register_trainer
from raytrainer.trainers.rl import RlTrainer, Rollout, gae
from raytrainer.trainers.vanilla_ppo import masked_mean


@register_trainer("reinforce")
class ReinforceTrainer(RlTrainer):
    """REINFORCE with an optional learned baseline, one optimiser per agent."""

    def update(
        self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor
    ) -> dict[str, float]:
        """One step per agent on the whole rollout."""
        with_critic = self.hyper_params.reinforce.use_advantage_and_critic
        if not with_critic:  # the discounted return: GAE with no baseline and lambda = 1
            dones = rollout.dones[:, None].expand_as(rollout.rewards)
            advantages, _ = gae(
                rollout.rewards,
                torch.zeros_like(rollout.values),
                dones,
                self.hyper_params.rl.gamma,
                1.0,
            )
        num_rounds, _, num_episodes = rollout.logp.shape
        t = torch.arange(num_rounds, device=self.device).repeat_interleave(num_episodes)
        b = torch.arange(num_episodes, device=self.device).repeat(num_rounds)
        metrics = {}
        for a, name in enumerate(self.models):
            out, logp, _ = self._policy(name, rollout, t, b)
            policy_loss = masked_mean(-logp * advantages[t, a, b], rollout.active[t, a, b])
            loss = policy_loss
            if with_critic:
                value_loss = masked_mean(
                    (out["value"] - returns[t, a, b]) ** 2, rollout.alive[t, b]
                )
                loss = loss + value_loss
                metrics[f"{name}_value_loss"] = value_loss.item()
            self._step_agent(name, loss)
            metrics[f"{name}_policy_loss"] = policy_loss.item()
        return metrics
