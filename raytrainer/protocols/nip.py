"""One prover and a verifier: ``nip`` (alternating rounds) and ``adp`` (one prover message)."""

from __future__ import annotations

from raytrainer.protocols.base import ProtocolHandler, register_protocol


@register_protocol("nip")
class NipProtocol(ProtocolHandler):
    """Neural interactive proof: prover and verifier alternate on one channel.

    The verifier opens when ``protocol_common.verifier_first``. Rounds come from
    ``nip_protocol``; the verifier may decide on its rounds from ``min_message_rounds`` on.
    The prover is rewarded when the verifier accepts.
    """

    agent_names = ("prover", "verifier")

    @property
    def max_message_rounds(self) -> int:
        """``nip_protocol.max_message_rounds``."""
        return self.hyper_params.nip_protocol.max_message_rounds

    @property
    def min_message_rounds(self) -> int:
        """``nip_protocol.min_message_rounds``."""
        return self.hyper_params.nip_protocol.min_message_rounds

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the verifier in its rounds (even when it opens) and the prover in the rest."""
        self._check_round(round_id)
        verifier_round = (round_id % 2 == 0) == self.common.verifier_first
        return ("verifier",) if verifier_round else ("prover",)


@register_protocol("adp")
class AdpProtocol(ProtocolHandler):
    """Abstract decision problem: the prover sends one message, then the verifier decides."""

    agent_names = ("prover", "verifier")

    @property
    def max_message_rounds(self) -> int:
        """Two rounds: the prover's message, the verifier's decision."""
        return 2

    @property
    def min_message_rounds(self) -> int:
        """The verifier decides in round 1."""
        return 1

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return the prover in round 0 and the verifier in round 1."""
        self._check_round(round_id)
        return ("prover",) if round_id == 0 else ("verifier",)

    def written_channels(self, agent_name: str) -> tuple[str, ...]:
        """Only the prover writes; the verifier only decides."""
        return self.channel_names if agent_name == "prover" else ()
