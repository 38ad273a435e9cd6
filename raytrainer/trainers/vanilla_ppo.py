"""``vanilla_ppo``: independent PPO agents under an interaction protocol.

Each iteration (see :mod:`raytrainer.trainers.rl`) rolls out a batch of episodes, computes GAE
advantages per agent, then runs ``rl.num_epochs`` passes of minibatches over every (round,
episode) slot, each agent minimising the clipped surrogate plus ``ppo.critic_coef`` × the value
error minus ``ppo.entropy_eps`` × its policy's entropy.
"""

from __future__ import annotations

import torch

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


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` holds (0 where it never does)."""
    mask = mask.float()
    return (values * mask).sum() / mask.sum().clamp(min=1)


@register_trainer("vanilla_ppo")
class VanillaPpoTrainer(RlTrainer):
    """PPO with the clipped objective, GAE and an entropy bonus, one optimiser per agent."""

    def update(
        self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor
    ) -> dict[str, float]:
        """``rl.num_epochs`` passes of minibatches of ``rl.minibatch_size`` slots (global)."""
        rl, ppo = self.hyper_params.rl, self.hyper_params.ppo
        num_rounds, _, num_episodes = rollout.logp.shape
        slots = num_rounds * num_episodes
        minibatch = max(rl.minibatch_size // self.settings.world_size, 1)
        stats: dict[str, list[float]] = {}
        for _ in range(rl.num_epochs):
            order = torch.randperm(slots, device=self.device)
            for start in range(0, slots, minibatch):
                index = order[start : start + minibatch]
                t, b = index // num_episodes, index % num_episodes
                for a, name in enumerate(self.models):
                    out, new_logp, entropy = self._policy(name, rollout, t, b)
                    acts, alive = rollout.active[t, a, b], rollout.alive[t, b]
                    adv = advantages[t, a, b]
                    if ppo.normalize_advantage:
                        mean = masked_mean(adv, acts)
                        std = masked_mean((adv - mean) ** 2, acts).sqrt()
                        adv = (adv - mean) / (std + 1e-8)
                    policy_loss = masked_mean(
                        ppo_clip_loss(new_logp, rollout.logp[t, a, b], adv, ppo.clip_epsilon),
                        acts,
                    )
                    value_loss = masked_mean((out["value"] - returns[t, a, b]) ** 2, alive)
                    entropy_bonus = masked_mean(entropy, acts)
                    loss = (
                        policy_loss + ppo.critic_coef * value_loss - ppo.entropy_eps * entropy_bonus
                    )
                    self._step_agent(name, loss)
                    for key, value in (
                        ("policy_loss", policy_loss),
                        ("value_loss", value_loss),
                        ("entropy", entropy_bonus),
                    ):
                        stats.setdefault(f"{name}_{key}", []).append(value.item())
        return {key: sum(v) / len(v) for key, v in stats.items()}
