"""The solo protocol: one agent, no messages (a plain supervised trainer)."""

from __future__ import annotations

from raytrainer.protocols.base import ProtocolHandler, register_protocol


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
