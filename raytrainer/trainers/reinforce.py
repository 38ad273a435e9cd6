"""``reinforce``: REINFORCE for every agent under an interaction protocol.

Each iteration rolls out a batch of episodes (:mod:`raytrainer.trainers.rl`) and takes one
gradient step per agent on ``-log π(a) · G``: ``G`` is the discounted return, or, with
``reinforce.use_advantage_and_critic``, the GAE advantage (and the value head is trained too).
"""

from __future__ import annotations

import torch

from raytrainer.data import GlobalDraws
from raytrainer.trainer import register_trainer
from raytrainer.trainers.rl import RlTrainer, Rollout, gae


@register_trainer("reinforce")
class ReinforceTrainer(RlTrainer):
    """REINFORCE with an optional learned baseline, one optimiser per agent."""

    def update(
        self,
        rollout: Rollout,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        draws: GlobalDraws,
    ) -> dict[str, float]:
        """One step per agent on the whole rollout (means over the global batch)."""
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
        stats: dict[str, list[torch.Tensor]] = {}
        for a, name in enumerate(self.models):
            out, logp, _ = self._policy(name, rollout, t, b)
            acts, alive = rollout.active[t, a, b], rollout.alive[t, b]
            num_acts, num_alive = self.global_counts(acts, alive)
            policy_loss = self.share_of_mean(-logp * advantages[t, a, b], acts, num_acts)
            loss = policy_loss
            if with_critic:
                value_error = (out["value"] - returns[t, a, b]) ** 2
                value_loss = self.share_of_mean(value_error, alive, num_alive)
                loss = loss + value_loss
                stats[f"{name}_value_loss"] = [value_loss.detach()]
            self._step_agent(name, loss)
            stats[f"{name}_policy_loss"] = [policy_loss.detach()]
        return self.mean_over_ranks(stats)
