"""Interaction protocols: which agents exist, how many message rounds, who speaks when.

A protocol handler is built from the hyper-parameters by name (``hyper_params.protocol``)::

    handler = build_protocol_handler(hyper_params)
    handler.agent_names         # ("prover", "verifier")
    handler.active_agents(0)    # ("verifier",)

``base`` holds the handler base class and the registry; each other module is one protocol
family, registered when this package is imported.
"""

from raytrainer.protocols.base import (
    PROTOCOLS,
    ProtocolHandler,
    build_protocol_handler,
    register_protocol,
)
from raytrainer.protocols.debate import DebateProtocol
from raytrainer.protocols.nip import NipProtocol
from raytrainer.protocols.solo import SoloProtocol

__all__ = [
    "PROTOCOLS",
    "DebateProtocol",
    "NipProtocol",
    "ProtocolHandler",
    "SoloProtocol",
    "build_protocol_handler",
    "register_protocol",
]
