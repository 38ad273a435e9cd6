"""Neural interactive proofs: a prover and a verifier exchanging messages."""

from __future__ import annotations

from raytrainer.protocols.base import ProtocolHandler, register_protocol


@register_protocol("nip")
class NipProtocol(ProtocolHandler):
    """Neural interactive proof: the verifier opens, then verifier and prover alternate."""

    agent_names = ("prover", "verifier")

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return ``("verifier",)`` in even rounds and ``("prover",)`` in odd ones."""
        self._check_round(round_id)
        return ("verifier",) if round_id % 2 == 0 else ("prover",)
