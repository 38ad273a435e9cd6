"""One-agent protocols: ``solo`` (a plain supervised trainer) and ``solo_verifier``."""

from __future__ import annotations

from raytrainer.protocols.base import ProtocolHandler, register_protocol


@register_protocol("solo")
class SoloProtocol(ProtocolHandler):
    """One agent and no messages: the protocol of a plain supervised trainer."""

    agent_names = ("agent",)

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the single agent for round 0; there are no other rounds."""
        self._check_round(round_id)
        return self.agent_names


@register_protocol("solo_verifier")
class SoloVerifierProtocol(ProtocolHandler):
    """The verifier alone: it sees the input, no messages, and decides in round 0.

    The baseline a prover has to beat.
    """

    agent_names = ("verifier",)

    @property
    def max_message_rounds(self) -> int:
        """One round: the verifier's decision."""
        return 1

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the verifier."""
        self._check_round(round_id)
        return self.agent_names

    def written_channels(self, agent_name: str) -> tuple[str, ...]:
        """Nothing: the verifier only decides."""
        return ()
