"""Two provers and a verifier: ``debate`` (all channels public) and ``mnip`` (private)."""

from __future__ import annotations

from raytrainer.params import DebateProtocolParameters
from raytrainer.protocols.base import ACCEPT, REJECT, ProtocolHandler, register_protocol


@register_protocol("debate")
class DebateProtocol(ProtocolHandler):
    """Debate: prover0 argues for reject, prover1 for accept, each on its own channel.

    Provers speak together between the verifier's rounds, or in turn when
    ``debate_protocol.sequential`` (prover0 first unless ``prover0_first`` is false). The
    verifier's messages go to both channels; every agent sees every channel.
    """

    agent_names = ("prover0", "prover1", "verifier")
    channel_names = ("prover0_channel", "prover1_channel")
    stance_can_flip = True

    @property
    def section(self) -> DebateProtocolParameters:
        """Return the protocol's section of the hyper-parameters."""
        return self.hyper_params.debate_protocol

    @property
    def max_message_rounds(self) -> int:
        """``<section>.max_message_rounds``."""
        return self.section.max_message_rounds

    @property
    def min_message_rounds(self) -> int:
        """``<section>.min_message_rounds``."""
        return self.section.min_message_rounds

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return who speaks: the turn cycle is the verifier's round, then the provers'."""
        self._check_round(round_id)
        provers = ("prover0", "prover1") if self.section.prover0_first else ("prover1", "prover0")
        turns = [provers[0:1], provers[1:2]] if self.section.sequential else [provers]
        cycle = [("verifier",), *turns] if self.common.verifier_first else [*turns, ("verifier",)]
        return tuple(sorted(cycle[round_id % len(cycle)], key=self.agent_names.index))

    def written_channels(self, agent_name: str) -> tuple[str, ...]:
        """A prover writes its own channel; the verifier writes both."""
        return self.channel_names if agent_name == "verifier" else (f"{agent_name}_channel",)

    def prover_wants(self, agent_name: str) -> int:
        """prover0 is rewarded on reject, prover1 on accept."""
        return REJECT if agent_name == "prover0" else ACCEPT


@register_protocol("mnip")
class MnipProtocol(DebateProtocol):
    """Multi-prover NIP: debate's turns, but each prover sees only its own channel.

    The verifier sees both channels, and both provers are rewarded when it accepts.
    """

    stance_can_flip = False

    @property
    def section(self) -> DebateProtocolParameters:
        """``mnip_protocol``."""
        return self.hyper_params.mnip_protocol

    def visible_channels(self, agent_name: str) -> tuple[str, ...]:
        """The verifier sees both channels; a prover only its own."""
        return self.channel_names if agent_name == "verifier" else (f"{agent_name}_channel",)

    def written_channels(self, agent_name: str) -> tuple[str, ...]:
        """As in debate."""
        return DebateProtocol.written_channels(self, agent_name)

    def prover_wants(self, agent_name: str) -> int:
        """Both provers want the verifier to accept."""
        return ACCEPT


@register_protocol("merlin_arthur")
class MerlinArthurProtocol(ProtocolHandler):
    """Merlin-Arthur: one prover drawn per episode sends one message, then the verifier decides.

    prover0 (Morgana) is rewarded on reject, prover1 (Merlin) on accept; the verifier does not
    know which one spoke (one shared channel).
    """

    agent_names = ("prover0", "prover1", "verifier")
    stance_can_flip = True

    @property
    def max_message_rounds(self) -> int:
        """Two rounds: a prover's message, the verifier's decision."""
        return 2

    @property
    def min_message_rounds(self) -> int:
        """The verifier decides in round 1."""
        return 1

    @property
    def speaker_is_drawn(self) -> bool:
        """One of the two provers speaks, drawn per episode."""
        return True

    def active_agents(self, round_id: int) -> tuple[str, ...]:
        """Return both provers for round 0 (one is drawn per episode), the verifier for 1."""
        self._check_round(round_id)
        return ("prover0", "prover1") if round_id == 0 else ("verifier",)

    def written_channels(self, agent_name: str) -> tuple[str, ...]:
        """Provers write the channel; the verifier only decides."""
        return () if agent_name == "verifier" else self.channel_names

    def prover_wants(self, agent_name: str) -> int:
        """prover0 is rewarded on reject, prover1 on accept."""
        return REJECT if agent_name == "prover0" else ACCEPT
