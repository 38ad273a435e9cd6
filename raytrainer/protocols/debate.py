"""Debate: two provers argue before a verifier."""

from __future__ import annotations

from raytrainer.protocols.base import ProtocolHandler, register_protocol


@register_protocol("debate")
class DebateProtocol(ProtocolHandler):
    """Debate: two provers argue simultaneously, the verifier questions between turns."""

    agent_names = ("prover0", "prover1", "verifier")

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the verifier in even rounds and both provers in odd ones."""
        self._check_round(round_id)
        return ("verifier",) if round_id % 2 == 0 else ("prover0", "prover1")
