"""``reinforce``: REINFORCE for every agent under an interaction protocol.

Each iteration rolls out a batch of episodes (:mod:`raytrainer.trainers.rl`), then, with the
same ``rl`` settings as PPO, runs ``rl.num_epochs`` passes of minibatches, each agent stepping
on ``-log π(a) · G``: ``G`` is the discounted return, or, with
``reinforce.use_advantage_and_critic``, the GAE advantage (and the value head is trained too),
standardised per minibatch with ``reinforce.normalize_advantage``, minus
``reinforce.entropy_eps`` × the policy's entropy (PPO's bonus term; off by default). Set
``rl.num_epochs: 1`` and ``rl.minibatch_size >= rl.frames_per_batch`` for the textbook one step
per rollout.
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
        """Minibatch steps on the policy-gradient loss (means over the global minibatch)."""
        reinforce = self.hyper_params.reinforce
        with_critic = reinforce.use_advantage_and_critic
        if not with_critic:  # the discounted return: GAE with no baseline and lambda = 1
            dones = rollout.dones[:, None].expand_as(rollout.rewards)
            advantages, _ = gae(
                rollout.rewards,
                torch.zeros_like(rollout.values),
                dones,
                self.hyper_params.rl.gamma,
                1.0,
            )
        stats: dict[str, list[torch.Tensor]] = {}
        for t, b, own in self.minibatches(rollout, draws):
            for a, name in enumerate(self.models):
                out, logp, entropy = self._policy(name, rollout, t, b)
                acts, alive = rollout.active[t, a, b] & own, rollout.alive[t, b] & own
                num_acts, num_alive = self.global_counts(acts, alive)
                adv = advantages[t, a, b]
                if reinforce.normalize_advantage:
                    adv = self.normalized(adv, acts, num_acts)
                policy_loss = self.share_of_mean(-logp * adv, acts, num_acts)
                entropy_bonus = self.share_of_mean(entropy, acts, num_acts)
                loss = policy_loss - reinforce.entropy_eps * entropy_bonus
                if with_critic:
                    value_error = (out["value"] - returns[t, a, b]) ** 2
                    value_loss = self.share_of_mean(value_error, alive, num_alive)
                    loss = loss + value_loss
                    stats.setdefault(f"{name}_value_loss", []).append(value_loss.detach())
                self._step_agent(name, loss)
                stats.setdefault(f"{name}_policy_loss", []).append(policy_loss.detach())
                stats.setdefault(f"{name}_entropy", []).append(entropy_bonus.detach())
        return self.mean_over_ranks(stats)
