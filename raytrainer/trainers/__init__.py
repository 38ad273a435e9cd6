"""The neural-interactive-proofs trainers, registered by name when this package is imported.

``solo_agent``: supervised training of each agent (the RL trainers' pretraining step).
"""

from raytrainer.trainers.params import (
    NipHyperParameters,
    SoloAgentHyperParameters,
    SoloAgentParameters,
)
from raytrainer.trainers.solo_agent import SoloAgentTrainer

__all__ = [
    "NipHyperParameters",
    "SoloAgentHyperParameters",
    "SoloAgentParameters",
    "SoloAgentTrainer",
]
