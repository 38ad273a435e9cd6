"""The protocol seam: the ``ProtocolHandler`` base class and the registry of protocols."""

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


def build_protocol_handler(hyper_params: HyperParameters) -> ProtocolHandler:
    """Build the protocol handler named by ``hyper_params.protocol``."""
    return PROTOCOLS.get(hyper_params.protocol)(hyper_params)
