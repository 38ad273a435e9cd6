"""``vanilla_ppo``: independent PPO agents under an interaction protocol.

Each iteration (see :mod:`raytrainer.trainers.rl`) rolls out a batch of episodes, computes GAE
advantages per agent, then runs ``rl.num_epochs`` passes of minibatches over every (round,
episode) slot, each agent minimising the clipped surrogate plus ``ppo.critic_coef`` × the value
error minus ``ppo.entropy_eps`` × its policy's entropy.
"""

from __future__ import annotations

import torch

from raytrainer.data import GlobalDraws
from raytrainer.trainer import register_trainer
from raytrainer.trainers.rl import RlTrainer, Rollout


# ALGO LOGIC: the clipped surrogate ---------------------------------------------------------
def ppo_clip_loss(
    new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_epsilon: float
) -> torch.Tensor:
    """Per-sample clipped PPO loss ``-min(ρA, clip(ρ, 1-ε, 1+ε)A)``, ``ρ = π_new/π_old``.

    Outside the clip range, on the side the advantage pushes, the gradient is zero.
    """
    ratio = (new_logp - old_logp).exp()
    clipped = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon)
    return -torch.min(ratio * advantages, clipped * advantages)


@register_trainer("vanilla_ppo")
class VanillaPpoTrainer(RlTrainer):
    """PPO with the clipped objective, GAE and an entropy bonus, one optimiser per agent."""

    def update(
        self,
        rollout: Rollout,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        draws: GlobalDraws,
    ) -> dict[str, float]:
        """``rl.num_epochs`` passes of minibatches of ``rl.minibatch_size`` global slots.

        A minibatch is a set of (round, episode) slots of the global batch; each rank runs
        the ones in its slice, and every mean (advantage statistics, losses) is global.
        """
        ppo = self.hyper_params.ppo
        stats: dict[str, list[torch.Tensor]] = {}
        for t, b, own in self.minibatches(rollout, draws):
            for a, name in enumerate(self.models):
                out, new_logp, entropy = self._policy(name, rollout, t, b)
                acts, alive = rollout.active[t, a, b] & own, rollout.alive[t, b] & own
                adv = advantages[t, a, b]
                num_acts, num_alive = self.global_counts(acts, alive)
                if ppo.normalize_advantage:
                    adv = self.normalized(adv, acts, num_acts)
                clip = ppo_clip_loss(new_logp, rollout.logp[t, a, b], adv, ppo.clip_epsilon)
                policy_loss = self.share_of_mean(clip, acts, num_acts)
                value_error = (out["value"] - returns[t, a, b]) ** 2
                value_loss = self.share_of_mean(value_error, alive, num_alive)
                entropy_bonus = self.share_of_mean(entropy, acts, num_acts)
                loss = policy_loss + ppo.critic_coef * value_loss - ppo.entropy_eps * entropy_bonus
                self._step_agent(name, loss)
                for key, value in (
                    ("policy_loss", policy_loss),
                    ("value_loss", value_loss),
                    ("entropy", entropy_bonus),
                ):
                    stats.setdefault(f"{name}_{key}", []).append(value.detach())
        return self.mean_over_ranks(stats)
