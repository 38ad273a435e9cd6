"""The protocol seam: the ``ProtocolHandler`` base class and the registry of protocols.

A handler describes a protocol as a few small tables — who speaks in which round, which
channels each agent sees and writes, which way each prover argues — and
:class:`raytrainer.protocols.environment.ProtocolEnvironment` steps batches of episodes from
them, so a new protocol is a subclass that fills in the tables, not a new environment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from raytrainer.params import HyperParameters
from raytrainer.registry import Registry

PROTOCOLS: Registry[type[ProtocolHandler]] = Registry("protocol")
register_protocol = PROTOCOLS.register

ACCEPT, REJECT = 1, 0


class ProtocolHandler(ABC):
    """Base class of interaction protocols.

    Parameters
    ----------
    hyper_params : HyperParameters
        The run's hyper-parameters; ``protocol_common`` and the protocol's own section
        (``nip_protocol``, ``debate_protocol``, ...) are read from it.

    Attributes
    ----------
    agent_names : tuple[str, ...]
        The protocol's agents; the verifier, when there is one, is named ``"verifier"``.
    channel_names : tuple[str, ...]
        The message channels. Each (round, channel) carries at most one agent's message.
    stance_can_flip : bool
        Whether ``protocol_common.randomize_prover_stance`` swaps the provers' sides.
    """

    agent_names: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ("main",)
    stance_can_flip: bool = False

    def __init__(self, hyper_params: HyperParameters) -> None:
        self.hyper_params = hyper_params
        self.common = hyper_params.protocol_common

    @property
    def max_message_rounds(self) -> int:
        """The number of rounds in one episode."""
        return 0

    @property
    def min_message_rounds(self) -> int:
        """The first round (0-based) in which the verifier may decide."""
        return 0

    @property
    def verifier_name(self) -> str | None:
        """The agent that decides (``"verifier"``), or ``None`` for a protocol without one."""
        return "verifier" if "verifier" in self.agent_names else None

    @property
    def prover_names(self) -> tuple[str, ...]:
        """Every agent but the verifier."""
        return tuple(name for name in self.agent_names if name != self.verifier_name)

    @abstractmethod
    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the agents that may act in round ``round_id`` (0-based).

        In ``merlin_arthur`` both provers are returned for round 0: the environment picks one
        per episode.
        """

    def visible_channels(self, agent_name: str) -> tuple[str, ...]:
        """Return the channels ``agent_name`` sees; every channel unless a protocol says so."""
        return self.channel_names

    def written_channels(self, agent_name: str) -> tuple[str, ...]:
        """Return the channels ``agent_name``'s message goes into when it speaks."""
        return self.visible_channels(agent_name)

    def prover_wants(self, agent_name: str) -> int:
        """Return the decision (:data:`ACCEPT` or :data:`REJECT`) that rewards a prover."""
        return ACCEPT

    @property
    def speaker_is_drawn(self) -> bool:
        """Whether one of the round's active provers is drawn per episode (merlin_arthur)."""
        return False

    def _check_round(self, round_id: int) -> None:
        if not 0 <= round_id < max(self.max_message_rounds, 1):
            raise ValueError(
                f"round {round_id} is outside 0..{self.max_message_rounds - 1} "
                f"for protocol {type(self).__name__}."
            )

    # -------------------------------------------------------------------- tensor tables

    def schedule(self) -> torch.Tensor:
        """Return ``[rounds, agents]`` bool: who may act in each round."""
        table = torch.zeros(self.max_message_rounds, len(self.agent_names), dtype=torch.bool)
        for round_id in range(self.max_message_rounds):
            for name in self.active_agents(round_id):
                table[round_id, self.agent_names.index(name)] = True
        return table

    def channel_table(self, written: bool = False) -> torch.Tensor:
        """Return ``[agents, channels]`` bool: the channels each agent sees (or writes)."""
        table = torch.zeros(len(self.agent_names), len(self.channel_names), dtype=torch.bool)
        for a, name in enumerate(self.agent_names):
            channels = self.written_channels(name) if written else self.visible_channels(name)
            for channel in channels:
                table[a, self.channel_names.index(channel)] = True
        return table


def build_protocol_handler(hyper_params: HyperParameters) -> ProtocolHandler:
    """Build the protocol handler named by ``hyper_params.interaction_protocol``."""
    return PROTOCOLS.get(hyper_params.interaction_protocol)(hyper_params)
