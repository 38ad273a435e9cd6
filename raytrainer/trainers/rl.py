"""What the RL trainers share: batched rollouts under the protocol, GAE, test rollouts.

An iteration of :class:`RlTrainer` reads top to bottom::

    draws = self.draws(...)                           # the iteration's random numbers
    rollout = self.collect(train pairs, draws)        # every round of a batch of episodes
    advantages, returns = gae(rewards, values, ...)   # per agent, every round
    self.update(rollout, advantages, returns, draws)  # the algorithm: PPO, REINFORCE
    record metrics; save a checkpoint every checkpoint_period iterations

Every round is a time step for every agent: an agent's policy terms count only in the rounds
it acts (``active``), its value is trained on every round of a live episode (``alive``), and
rewards reach each agent in the round they are given (a prover's when the verifier decides).
An iteration's global batch is ``rl.frames_per_batch / max_message_rounds`` episodes. Its
random numbers (which pairs, every action, the minibatch order) are drawn for the whole batch
from a generator seeded by the iteration (:class:`~raytrainer.data.GlobalDraws`); each rank
rolls out its slice, losses are divided by counts over the global batch and DDP averages the
gradients, so ``n`` Ray workers follow the curve of one process (to float tolerance). With
``pretrain_agents`` the run's first iterations are ``solo_agent`` steps.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from raytrainer.data import GlobalDraws, ShardedBatchSampler
from raytrainer.errors import ConfigError
from raytrainer.progress import attach_progress_bar
from raytrainer.protocols import CONTINUE, ProtocolEnvironment
from raytrainer.scenarios.graph_isomorphism import GraphPairs
from raytrainer.trainer import Trainer
from raytrainer.trainers.params import RlHyperParameters
from raytrainer.trainers.solo_agent import solo_step


# ALGO LOGIC: generalised advantage estimation ---------------------------------------------
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lmbda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the first (time) dimension.

    Parameters
    ----------
    rewards, values : Tensor [T, ...]
        The reward after step ``t`` and the value estimate at ``t``.
    dones : Tensor [T, ...] bool
        The episode ended at step ``t`` (nothing is bootstrapped past it).

    Returns
    -------
    advantages, returns : Tensor [T, ...]
        ``A_t = δ_t + γλ(1 - done_t) A_{t+1}``, ``δ_t = r_t + γ(1 - done_t) V_{t+1} - V_t``;
        returns are ``A_t + V_t``.
    """
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        nonterminal = 1.0 - dones[t].float()
        next_value = values[t + 1] if t + 1 < len(rewards) else torch.zeros_like(values[t])
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        lastgaelam = delta + gamma * lmbda * nonterminal * lastgaelam
        advantages[t] = lastgaelam
    return advantages, advantages + values


@dataclass
class Rollout:
    """One batch of episodes, every round. ``T`` rounds, ``A`` agents, ``B`` episodes.

    Attributes
    ----------
    pairs : GraphPairs
        The episodes' graph pairs (``B``).
    history : Tensor [T, A, B, R, C, S]
        What each agent saw before acting in round ``t``.
    nodes, logp, values, rewards : Tensor [T, A, B]
        The message each agent chose, the log-probability of its whole action, its value
        estimate, and the reward it got after the round.
    decisions : Tensor [T, B]
        The verifier's decision (2: continue).
    active : Tensor [T, A, B] bool
        The agent acted in round ``t``.
    may_decide, alive, dones : Tensor [T, B] bool
        The verifier could decide; the episode was running; it ended in round ``t``.
    """

    pairs: GraphPairs
    history: torch.Tensor
    nodes: torch.Tensor
    decisions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    active: torch.Tensor
    may_decide: torch.Tensor
    alive: torch.Tensor
    dones: torch.Tensor
    final_decision: torch.Tensor


def _sample(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Draw from ``softmax(logits)`` by the Gumbel-max trick, given uniforms of its shape."""
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-30)))
    return (logits + gumbel).argmax(-1)


def action_log_prob(
    out: dict[str, torch.Tensor],
    nodes: torch.Tensor,
    decisions: torch.Tensor,
    may_decide: torch.Tensor,
    sends: bool,
    decides: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the log-probability and entropy of an agent's action.

    The action is its message (if the protocol lets it send one) and its decision (if it is
    the verifier and may decide).
    """
    logp = torch.zeros_like(out["value"])
    entropy = torch.zeros_like(out["value"])
    if sends:
        dist = torch.distributions.Categorical(logits=out["node_logits"])
        logp = logp + dist.log_prob(nodes)
        entropy = entropy + dist.entropy()
    if decides:
        dist = torch.distributions.Categorical(logits=out["decision_logits"])
        logp = logp + dist.log_prob(decisions) * may_decide
        entropy = entropy + dist.entropy() * may_decide
    return logp, entropy


class RlTrainer(Trainer):
    """Base of the RL trainers: rollouts, advantages, metrics, checkpoints; subclasses update."""

    hyper_params_cls = RlHyperParameters
    hyper_params: RlHyperParameters

    def _build(self) -> None:
        handler = self.protocol_handler
        self.env = ProtocolEnvironment(handler, self.device, self.hyper_params.message_size)
        datasets = self.scenario_instance.datasets
        self.train_pairs: GraphPairs = datasets["train"].to(self.device)
        self.test_pairs: GraphPairs = datasets["test"].to(self.device)
        agents = self.scenario_instance.agents
        self.sends = dict(zip(agents, self.env.writes.any(1).tolist(), strict=True))
        self.decides = {name: name == handler.verifier_name for name in agents}
        # A step uses some heads only (the solo head in pretraining, the policy heads in RL).
        self.models = {
            name: self.prepare_model(agent, find_unused_parameters=True)
            for name, agent in agents.items()
        }
        self.optimizers = {
            name: torch.optim.Adam(model.parameters(), lr=self.agent_lr(name))
            for name, model in self.models.items()
        }
        self.pretrain_steps = self.hyper_params.pretrain_steps()
        if self.pretrain_steps:
            solo = self.hyper_params.solo_agent
            self.solo_sampler = ShardedBatchSampler(
                len(self.train_pairs),
                solo.batch_size,
                self.hyper_params.seed,
                self.settings.world_rank,
                self.settings.world_size,
            )
            self.solo_optimizers = {
                name: torch.optim.Adam(model.parameters(), lr=solo.learning_rate)
                for name, model in self.models.items()
            }
        rl, rounds = self.hyper_params.rl, self.env.num_rounds
        self.episodes_per_batch = rl.frames_per_batch // rounds
        if self.episodes_per_batch < self.settings.world_size:
            raise ConfigError(
                f"rl.frames_per_batch={rl.frames_per_batch} makes {self.episodes_per_batch} "
                f"episodes of {rounds} rounds per batch, fewer than the "
                f"{self.settings.world_size} workers; set it to at least "
                f"{rounds * self.settings.world_size}"
            )

    def _state_dict(self) -> dict[str, Any]:
        state = {
            "models": {n: self.unwrap_model(m).state_dict() for n, m in self.models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
        }
        if self.pretrain_steps:
            state["pretraining"] = {
                "sampler": self.solo_sampler.state_dict(),
                "optimizers": {n: o.state_dict() for n, o in self.solo_optimizers.items()},
            }
        return state

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        for name, model in self.models.items():
            self.unwrap_model(model).load_state_dict(state["models"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
        if self.pretrain_steps:
            self.solo_sampler.load_state_dict(state["pretraining"]["sampler"])
            for name, optimizer in self.solo_optimizers.items():
                optimizer.load_state_dict(state["pretraining"]["optimizers"][name])

    def agent_lr(self, name: str) -> float:
        """Agent ``name``'s learning rate: ``rl.lr`` × ``agents.<name>.agent_lr_factor``."""
        factor = self.hyper_params.agent_params(name).agent_lr_factor  # type: ignore[attr-defined]
        return self.hyper_params.rl.lr * factor

    def _apply_hyper_params(self) -> None:
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = self.agent_lr(name)

    # ---------------------------------------------------------------- rollouts

    def draws(self, stream: int, global_size: int) -> GlobalDraws:
        """Return this iteration's random numbers for a global batch (stream 0 trains, 1 tests)."""
        return GlobalDraws(
            self.hyper_params.seed,
            self.iteration,
            stream,
            global_size,
            self.settings.world_rank,
            self.settings.world_size,
            self.device,
        )

    @torch.no_grad()
    def collect(self, pairs: GraphPairs, draws: GlobalDraws) -> Rollout:
        """Roll out one episode per pair to the end, sampling every agent's actions.

        ``pairs`` are this rank's rows of the global batch ``draws`` is drawn for.
        """
        env, names = self.env, list(self.models)
        adjacency, node_mask = pairs.adjacency.float(), pairs.node_mask
        coins = (draws.uniform(3) < 0.5).T
        episodes = env.reset(pairs.y, node_mask.flatten(1), coins=coins)
        steps: dict[str, list[torch.Tensor]] = {k: [] for k in Rollout.__dataclass_fields__}
        for _ in range(env.num_rounds):
            active, may = env.active_mask(episodes).T, env.may_decide(episodes)
            alive = ~episodes.done
            history, nodes, logps, values = [], [], [], []
            decisions = torch.full_like(pairs.y, CONTINUE)
            for name in names:
                seen = env.observe(episodes, name)
                out = self.unwrap_model(self.models[name])(adjacency, node_mask, seen)
                # Every agent draws alike each round, so the ranks' generators stay in step.
                node_draw, decision_draw = draws.uniform(node_mask[0].numel()), draws.uniform(3)
                node = (
                    _sample(out["node_logits"], node_draw)
                    if self.sends[name]
                    else torch.zeros_like(pairs.y)
                )
                if self.decides[name]:
                    only_continue = torch.full_like(out["decision_logits"], float("-inf"))
                    only_continue[:, CONTINUE] = 0
                    logits = torch.where(may[:, None], out["decision_logits"], only_continue)
                    decisions = _sample(logits, decision_draw)
                logp, _ = action_log_prob(
                    out, node, decisions, may, self.sends[name], self.decides[name]
                )
                history.append(seen)
                nodes.append(node)
                logps.append(logp)
                values.append(out["value"])
            episodes, rewards = env.step(episodes, torch.stack(nodes, 1), decisions)
            for key, value in (
                ("history", torch.stack(history)),
                ("nodes", torch.stack(nodes)),
                ("decisions", decisions),
                ("logp", torch.stack(logps)),
                ("values", torch.stack(values)),
                ("rewards", rewards.T),
                ("active", active),
                ("may_decide", may),
                ("alive", alive),
                ("dones", episodes.done & alive),
            ):
                steps[key].append(value)
        return Rollout(
            pairs=pairs,
            final_decision=episodes.decision,
            **{k: torch.stack(v) for k, v in steps.items() if v},
        )

    def advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE of every agent over every round: ``[T, A, B]`` advantages and returns."""
        rl = self.hyper_params.rl
        dones = rollout.dones[:, None].expand_as(rollout.rewards)
        return gae(rollout.rewards, rollout.values, dones, rl.gamma, rl.lmbda)

    def evaluate(self, rollout: Rollout, prefix: str = "") -> dict[str, float]:
        """Episode metrics of a rollout over every rank's slice, with the original's names."""
        y = rollout.pairs.y
        correct = rollout.final_decision == y
        sums = torch.stack(
            [
                torch.tensor(float(len(rollout.pairs)), device=self.device),
                rollout.alive.sum().float(),  # frames: the episodes' rounds
                correct.sum().float(),
                (y == 1).sum().float(),
                (correct & (y == 1)).sum().float(),
                *rollout.rewards.sum((0, 2)),  # per agent
            ]
        ).double()
        episodes, frames, right, positives, right_positives, *rewards = self.all_reduce_sum(
            sums
        ).tolist()
        negatives = episodes - positives
        metrics = {
            f"{prefix}mean_episode_length": frames / episodes,
            f"{prefix}mean_accuracy": right / episodes,
            # Split by the true answer: a verifier that accepts everything scores 1 and 0.
            f"{prefix}mean_accuracy_isomorphic": right_positives / max(positives, 1),
            f"{prefix}mean_accuracy_non_isomorphic": (right - right_positives) / max(negatives, 1),
        }
        for name, reward in zip(self.models, rewards, strict=True):
            metrics[f"{prefix}{name}_mean_episode_reward"] = reward / episodes
            metrics[f"{prefix}{name}_mean_step_reward"] = reward / frames
        return metrics

    def test(self) -> dict[str, float]:
        """``test_`` metrics: the test pairs rolled out ``rl.num_test_iterations`` times.

        Each rank rolls out its slice of the test pairs; the draws come from their own stream,
        so the training's are untouched.
        """
        draws = self.draws(1, len(self.test_pairs))
        pairs = self.test_pairs[draws.start : draws.stop]
        rounds = [
            self.evaluate(self.collect(pairs, draws), "test_")
            for _ in range(self.hyper_params.rl.num_test_iterations)
        ]
        return {key: sum(r[key] for r in rounds) / len(rounds) for key in rounds[0]}

    # ---------------------------------------------------------------- the loop

    @abstractmethod
    def update(
        self,
        rollout: Rollout,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        draws: GlobalDraws,
    ) -> dict[str, float]:
        """Update every agent from one rollout (this rank's slice of ``draws``' batch).

        Returns loss metrics averaged over the ranks (see :meth:`share_of_mean`).
        """

    def minibatches(
        self, rollout: Rollout, draws: GlobalDraws
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``rl.num_epochs`` passes of minibatches of ``rl.minibatch_size`` global slots.

        A minibatch is a set of (round, episode) slots of the global batch, in an order drawn
        the same on every rank; each rank gets the slots in its slice as ``t, b`` (rounds and
        rows of ``rollout``) and ``own``, which is false only for the one slot a rank holding
        none of the minibatch runs anyway, so that it steps with the others (DDP).
        """
        rl = self.hyper_params.rl
        num_rounds, episodes = rollout.logp.shape[0], draws.global_size
        for _ in range(rl.num_epochs):
            order = draws.permutation(num_rounds * episodes)
            for start in range(0, len(order), rl.minibatch_size):
                index = order[start : start + rl.minibatch_size]
                t, b = index // episodes, index % episodes - draws.start
                own = (b >= 0) & (b < len(rollout.pairs))
                keep = own if own.any() else torch.arange(len(own), device=own.device) == 0
                yield t[keep], b[keep].clamp(0, len(rollout.pairs) - 1), own[keep]

    def global_counts(self, *masks: torch.Tensor) -> list[torch.Tensor]:
        """How many slots each mask holds over every rank's slice of the global batch."""
        counts = self.all_reduce_sum(torch.stack([m.sum() for m in masks]).double())
        return list(counts.float())

    def share_of_mean(
        self, values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        """Return this rank's share of the mean of ``values`` where ``mask`` holds, globally.

        ``count`` is the global number of such slots (:meth:`global_counts`). The share is
        this rank's sum × ``world_size`` / ``count``: DDP averages the ranks' gradients, which
        makes them the gradient of the global mean, and the average of the shares is its value.
        """
        return (values * mask).sum() * self.settings.world_size / count.clamp(min=1)

    def normalized(
        self, advantages: torch.Tensor, mask: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        """Standardise ``advantages`` by their mean and deviation where ``mask`` holds, globally."""
        mean = self.all_reduce_sum((advantages * mask).sum()) / count.clamp(min=1)
        var = self.all_reduce_sum(((advantages - mean) ** 2 * mask).sum())
        return (advantages - mean) / ((var / count.clamp(min=1)).sqrt() + 1e-8)

    def mean_over_ranks(self, stats: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """Average each metric's shares over its steps and over the ranks (one all-reduce)."""
        if not stats:
            return {}
        means = torch.stack([torch.stack(v).mean() for v in stats.values()]).double()
        means = self.all_reduce_sum(means.detach()) / self.settings.world_size
        return dict(zip(stats, means.tolist(), strict=True))

    def _step_agent(self, name: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            self.models[name].parameters(), self.hyper_params.rl.max_grad_norm
        )
        optimizer.step()

    def _policy(
        self, name: str, rollout: Rollout, t: torch.Tensor, b: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Re-run agent ``name`` on the (round, episode) slots ``t, b``, with gradients.

        Returns its outputs and the log-probability and entropy of the actions it took there.
        """
        a = list(self.models).index(name)
        pairs = rollout.pairs
        out = self.models[name](
            pairs.adjacency[b].float(), pairs.node_mask[b], rollout.history[t, a, b]
        )
        logp, entropy = action_log_prob(
            out,
            rollout.nodes[t, a, b],
            rollout.decisions[t, b],
            rollout.may_decide[t, b],
            self.sends[name],
            self.decides[name],
        )
        return out, logp, entropy

    @attach_progress_bar(lambda self: self.hyper_params.num_iterations)
    def train(self, progress) -> None:
        """Train to ``num_iterations``: pretraining steps first, then RL iterations.

        With ``pretrain_agents`` the first iterations are supervised steps; then each rolls
        out, estimates advantages and updates. Tests and checkpoints every period.
        """
        total = self.hyper_params.num_iterations
        while self.iteration < total:
            if self.iteration < self.pretrain_steps:  # supervised, as solo_agent does
                pairs = self.train_pairs[self.solo_sampler.next_batch()]
                metrics = solo_step(self.models, self.solo_optimizers, pairs)
                self.record_metrics({f"pretrain_{k}": v for k, v in metrics.items()})
            else:
                draws = self.draws(0, self.episodes_per_batch)
                pairs = self.train_pairs[draws.integers(len(self.train_pairs))]
                rollout = self.collect(pairs, draws)
                advantages, returns = self.advantages(rollout)
                losses = self.update(rollout, advantages, returns, draws)
                self.record_metrics({**self.evaluate(rollout), **losses})
            self.iteration += 1
            save = self.iteration % self.settings.checkpoint_period == 0
            if save or self.iteration == total:
                self.record_metrics(self.test())
            progress.step()
            if save or self.iteration == total:
                self.save_checkpoint()
