"""Interaction protocols: which agents exist, how many message rounds, who speaks when.

A protocol handler is built from the hyper-parameters by name (``hyper_params.protocol``)::

    handler = build_protocol_handler(hyper_params)
    handler.agent_names         # ("prover", "verifier")
    handler.active_agents(0)    # ("verifier",)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from raytrainer.params import HyperParameters
from raytrainer.registry import Registry

PROTOCOLS: Registry[type[ProtocolHandler]] = Registry("protocol")
register_protocol = PROTOCOLS.register


class ProtocolHandler(ABC):
    """Base class of interaction protocols.

    Parameters
    ----------
    hyper_params : HyperParameters
        The run's hyper-parameters; ``protocol_params`` is read from it.
    """

    agent_names: tuple[str, ...] = ()

    def __init__(self, hyper_params: HyperParameters) -> None:
        self.hyper_params = hyper_params

    @property
    def max_message_rounds(self) -> int:
        """The maximum number of message rounds in one interaction."""
        return self.hyper_params.protocol_params.max_message_rounds

    @abstractmethod
    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the agents that send a message in round ``round_id`` (0-based)."""

    def _check_round(self, round_id: int) -> None:
        if not 0 <= round_id < max(self.max_message_rounds, 1):
            raise ValueError(
                f"round {round_id} is outside 0..{self.max_message_rounds - 1} "
                f"for protocol {type(self).__name__}."
            )


@register_protocol("solo")
class SoloProtocol(ProtocolHandler):
    """One agent and no messages: the protocol of a plain supervised trainer."""

    agent_names = ("agent",)

    @property
    def max_message_rounds(self) -> int:
        """Always 0: a solo agent exchanges no messages."""
        return 0

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the single agent for round 0; there are no other rounds."""
        self._check_round(round_id)
        return self.agent_names


@register_protocol("nip")
class NipProtocol(ProtocolHandler):
    """Neural interactive proof: the verifier opens, then verifier and prover alternate."""

    agent_names = ("prover", "verifier")

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return ``("verifier",)`` in even rounds and ``("prover",)`` in odd ones."""
        self._check_round(round_id)
        return ("verifier",) if round_id % 2 == 0 else ("prover",)


@register_protocol("debate")
class DebateProtocol(ProtocolHandler):
    """Debate: two provers argue simultaneously, the verifier questions between turns."""

    agent_names = ("prover0", "prover1", "verifier")

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the verifier in even rounds and both provers in odd ones."""
        self._check_round(round_id)
        return ("verifier",) if round_id % 2 == 0 else ("prover0", "prover1")


def build_protocol_handler(hyper_params: HyperParameters) -> ProtocolHandler:
    """Build the protocol handler named by ``hyper_params.protocol``."""
    return PROTOCOLS.get(hyper_params.protocol)(hyper_params)


__all__ = [
    "PROTOCOLS",
    "DebateProtocol",
    "NipProtocol",
    "ProtocolHandler",
    "SoloProtocol",
    "build_protocol_handler",
    "register_protocol",
]
