"""Interaction protocols: which agents exist, how many message rounds, who speaks when.

A protocol handler is built from the hyper-parameters by name
(``hyper_params.interaction_protocol``)::

    handler = build_protocol_handler(hyper_params)
    handler.agent_names         # ("prover", "verifier")
    handler.active_agents(0)    # ("verifier",)

``base`` holds the handler base class and the registry, ``environment`` steps batches of
episodes under any handler; each other module is one protocol family, registered when this
package is imported. The names are the original project's.
"""

from raytrainer.protocols.base import (
    ACCEPT,
    PROTOCOLS,
    REJECT,
    ProtocolHandler,
    build_protocol_handler,
    register_protocol,
)
from raytrainer.protocols.debate import DebateProtocol, MerlinArthurProtocol, MnipProtocol
from raytrainer.protocols.environment import CONTINUE, Episodes, ProtocolEnvironment
from raytrainer.protocols.nip import AdpProtocol, NipProtocol
from raytrainer.protocols.solo import SoloProtocol, SoloVerifierProtocol

__all__ = [
    "ACCEPT",
    "CONTINUE",
    "PROTOCOLS",
    "REJECT",
    "AdpProtocol",
    "DebateProtocol",
    "Episodes",
    "MerlinArthurProtocol",
    "MnipProtocol",
    "NipProtocol",
    "ProtocolEnvironment",
    "ProtocolHandler",
    "SoloProtocol",
    "SoloVerifierProtocol",
    "build_protocol_handler",
    "register_protocol",
]
