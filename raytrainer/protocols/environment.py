"""A batch of episodes stepped under an interaction protocol, as tensors on one device.

Each step the protocol's active agents send a message — one (or ``message_size``) of ``S``
message slots, e.g. the nodes of a graph pair — into their channels, and the verifier, when
it may, decides: reject (0), accept (1) or continue (2). The environment keeps every
episode's message history and hands out rewards; it never loops over episodes in Python::

    env = ProtocolEnvironment(handler, device)
    episodes = env.reset(y, valid_messages, generator)
    while not episodes.done.all():
        obs = env.observe(episodes, "verifier")     # [B, rounds, channels, S], masked
        episodes, rewards = env.step(episodes, messages, decisions)

Shapes: ``B`` episodes, ``A`` agents (the handler's order), ``C`` channels, ``R`` rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from raytrainer.errors import ConfigError
from raytrainer.protocols.base import ProtocolHandler

CONTINUE = 2


@dataclass(frozen=True)
class Episodes:
    """The state of a batch of episodes; every field is a tensor with the batch first.

    Attributes
    ----------
    y : Tensor [B] long
        The true label (1: the verifier should accept).
    round : Tensor [B] long
        The round the episode is in (``R`` once it ran out of rounds).
    done : Tensor [B] bool
        The verifier decided, or the last round passed.
    decision : Tensor [B] long
        -1 while undecided, then 0 (reject) or 1 (accept).
    message_history : Tensor [B, R, C, S] float
        1 where a message slot was sent in a round and channel.
    valid_messages : Tensor [B, S] bool
        The slots a message may use (padding excluded).
    stance : Tensor [B] long
        1 where the provers' sides are swapped (``randomize_prover_stance``).
    speaker : Tensor [B] long
        Index into ``handler.prover_names`` of the prover drawn to speak (merlin_arthur).
    channel_perm : Tensor [B, C] long
        Physical channel of each logical channel (``randomize_channel_order``).
    """

    y: torch.Tensor
    round: torch.Tensor
    done: torch.Tensor
    decision: torch.Tensor
    message_history: torch.Tensor
    valid_messages: torch.Tensor
    stance: torch.Tensor
    speaker: torch.Tensor
    channel_perm: torch.Tensor

    def to(self, device: torch.device | str) -> Episodes:
        """Return the episodes on ``device``."""
        return Episodes(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class ProtocolEnvironment:
    """Steps batches of episodes under ``handler``'s protocol.

    Parameters
    ----------
    handler : ProtocolHandler
        The protocol; it must have a verifier.
    device : torch.device or str
        Where the episodes' tensors live.
    message_size : int
        Slots per message (the original project's ``message_size``).
    """

    def __init__(
        self, handler: ProtocolHandler, device: torch.device | str = "cpu", message_size: int = 1
    ) -> None:
        if handler.verifier_name is None or handler.max_message_rounds < 1:
            raise ConfigError(
                f"protocol {type(handler).__name__} has no verifier and no rounds to step; "
                "use one of nip, adp, debate, mnip, merlin_arthur, solo_verifier."
            )
        self.handler = handler
        self.device = torch.device(device)
        self.message_size = message_size
        self.agent_names = handler.agent_names
        self.num_rounds = handler.max_message_rounds
        self.num_channels = len(handler.channel_names)
        self.verifier = handler.agent_names.index(handler.verifier_name)
        self.provers = [handler.agent_names.index(n) for n in handler.prover_names]
        self.schedule = handler.schedule().to(self.device)  # [R, A]
        self.visible = handler.channel_table().to(self.device)  # [A, C]
        self.writes = handler.channel_table(written=True).to(self.device)  # [A, C]
        self.wants = torch.tensor(  # [A]: the decision that rewards each prover (-1: verifier)
            [
                -1 if n == handler.verifier_name else handler.prover_wants(n)
                for n in self.agent_names
            ],
            device=self.device,
        )
        self.common = handler.common
        section = getattr(handler, "section", None)
        self.shuffle_channels = bool(section is not None and section.randomize_channel_order)

    def reset(
        self,
        y: torch.Tensor,
        valid_messages: torch.Tensor,
        generator: torch.Generator | None = None,
        coins: torch.Tensor | None = None,
    ) -> Episodes:
        """Start one episode per row of ``y``.

        Parameters
        ----------
        y : Tensor [B]
            Labels (1: accept is correct).
        valid_messages : Tensor [B, S] bool
            The slots each episode's messages may use.
        generator : torch.Generator, optional
            Draws the per-episode coins (stance, speaker, channel order); on the CPU, so a
            rollout is reproducible on any device.
        coins : Tensor [3, B] of 0/1, optional
            The coins themselves, drawn by the caller (then ``generator`` is not used).
        """
        batch, slots = valid_messages.shape
        if coins is None:
            coins = torch.randint(0, 2, (3, batch), generator=generator)
        coins = coins.to(self.device, torch.long)
        flip = self.common.randomize_prover_stance and self.handler.stance_can_flip
        stance = coins[0] if flip else torch.zeros_like(coins[0])
        speaker = coins[1] if self.handler.speaker_is_drawn else torch.zeros_like(coins[1])
        perm = torch.arange(self.num_channels, device=self.device).expand(batch, -1)
        if self.shuffle_channels:
            perm = torch.where(coins[2, :, None].bool(), perm.flip(1), perm)
        return Episodes(
            y=y.to(self.device, torch.long),
            round=torch.zeros(batch, dtype=torch.long, device=self.device),
            done=torch.zeros(batch, dtype=torch.bool, device=self.device),
            decision=torch.full((batch,), -1, dtype=torch.long, device=self.device),
            message_history=torch.zeros(
                batch, self.num_rounds, self.num_channels, slots, device=self.device
            ),
            valid_messages=valid_messages.to(self.device, torch.bool),
            stance=stance,
            speaker=speaker,
            channel_perm=perm.contiguous(),
        )

    # ------------------------------------------------------------------ who does what

    def active_mask(self, episodes: Episodes) -> torch.Tensor:
        """Return ``[B, A]`` bool: the agents acting this round in each unfinished episode."""
        rounds = episodes.round.clamp(max=self.num_rounds - 1)
        active = self.schedule[rounds] & ~episodes.done[:, None]
        if self.handler.speaker_is_drawn:
            drawn = torch.zeros_like(active)
            drawn[:, self.provers] = torch.nn.functional.one_hot(
                episodes.speaker, len(self.provers)
            ).bool()
            drawn[:, self.verifier] = True
            active &= drawn
        return active

    def may_decide(self, episodes: Episodes) -> torch.Tensor:
        """Return ``[B]`` bool: the verifier acts this round and may decide."""
        return self.active_mask(episodes)[:, self.verifier] & (
            episodes.round >= self.handler.min_message_rounds
        )

    def _physical(self, table: torch.Tensor, episodes: Episodes) -> torch.Tensor:
        """``[A, C]`` logical channel table → ``[B, A, C]`` in each episode's channel order."""
        batch = episodes.channel_perm.shape[0]
        out = torch.zeros(batch, *table.shape, dtype=table.dtype, device=self.device)
        index = episodes.channel_perm[:, None, :].expand(-1, table.shape[0], -1)
        return out.scatter(2, index, table.expand(batch, -1, -1))

    def observe(self, episodes: Episodes, agent_name: str) -> torch.Tensor:
        """Return the message history ``[B, R, C, S]`` that ``agent_name`` sees (others zero)."""
        agent = self.agent_names.index(agent_name)
        seen = self._physical(self.visible, episodes)[:, agent]  # [B, C]
        return episodes.message_history * seen[:, None, :, None]

    # ------------------------------------------------------------------ one step

    def step(
        self, episodes: Episodes, messages: torch.Tensor, decisions: torch.Tensor
    ) -> tuple[Episodes, torch.Tensor]:
        """Apply one round's actions; return the new episodes and ``[B, A]`` rewards.

        Parameters
        ----------
        messages : Tensor [B, A] or [B, A, message_size] long
            Each agent's chosen slot(s); read only where the agent is active.
        decisions : Tensor [B] long
            The verifier's 0 (reject), 1 (accept) or 2 (continue); read only where it may
            decide (elsewhere it continues).
        """
        if messages.dim() == 2:
            messages = messages[:, :, None]
        active = self.active_mask(episodes)  # [B, A]
        writes = self._physical(self.writes, episodes) & active[:, :, None]  # [B, A, C]
        slots = episodes.valid_messages.shape[1]
        speaking = writes.any(2)  # [B, A]
        in_range = (messages >= 0) & (messages < slots)
        sent = torch.nn.functional.one_hot(messages.clamp(0, slots - 1), slots)
        sent = (sent * in_range[..., None]).amax(2).float()  # [B, A, S]
        invalid = (sent > 0) & ~episodes.valid_messages[:, None, :] & speaking[:, :, None]
        if invalid.any() or not in_range.all(2)[speaking].all():
            raise ValueError("an active agent sent a message slot that valid_messages excludes.")
        new = torch.einsum("bac,bas->bcs", writes.float(), sent)  # [B, C, S]
        rows = torch.arange(len(episodes.round), device=self.device)
        rounds = episodes.round.clamp(max=self.num_rounds - 1)
        history = episodes.message_history.clone()
        history[rows, rounds] += new

        verifier_acts = active[:, self.verifier]
        decided = self.may_decide(episodes) & (decisions != CONTINUE)
        decision = torch.where(decided, decisions, episodes.decision)
        last = episodes.round == self.num_rounds - 1
        terminated = ~episodes.done & ~decided & last
        common = self.common

        verifier_reward = torch.where(
            decision == episodes.y,
            torch.tensor(common.verifier_reward, device=self.device),
            torch.tensor(common.verifier_incorrect_penalty, device=self.device),
        )
        r_verifier = (
            decided * verifier_reward
            + terminated * common.verifier_terminated_penalty
            + (verifier_acts & ~decided & ~terminated) * common.verifier_no_guess_reward
        )
        rewards = torch.zeros(len(rows), len(self.agent_names), device=self.device)
        rewards[:, self.verifier] = r_verifier
        if self.provers:
            wants = self.wants[self.provers][None, :].expand(len(rows), -1)
            wants = torch.where(episodes.stance[:, None].bool(), 1 - wants, wants)
            won = decided[:, None] & (decision[:, None] == wants)
            prover_rewards = won * common.prover_reward
            if common.shared_reward:
                prover_rewards = r_verifier[:, None].expand_as(prover_rewards)
            rewards[:, self.provers] = prover_rewards.float()

        done = episodes.done | decided | last
        next_round = torch.where(episodes.done, episodes.round, episodes.round + 1)
        return (
            replace(
                episodes,
                round=next_round,
                done=done,
                decision=decision,
                message_history=history,
            ),
            rewards,
        )
