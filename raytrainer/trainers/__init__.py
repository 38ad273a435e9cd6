"""The neural-interactive-proofs trainers, registered by name when this package is imported.

``solo_agent``: supervised training of each agent (the RL trainers' pretraining step);
``vanilla_ppo`` and ``reinforce``: the agents learn to interact under the protocol.
"""

from raytrainer.trainers.params import (
    NipHyperParameters,
    PpoParameters,
    ReinforceParameters,
    RlHyperParameters,
    RlParameters,
    SoloAgentHyperParameters,
    SoloAgentParameters,
)
from raytrainer.trainers.reinforce import ReinforceTrainer
from raytrainer.trainers.rl import RlTrainer, gae
from raytrainer.trainers.solo_agent import SoloAgentTrainer
from raytrainer.trainers.vanilla_ppo import VanillaPpoTrainer, ppo_clip_loss

__all__ = [
    "NipHyperParameters",
    "PpoParameters",
    "ReinforceParameters",
    "ReinforceTrainer",
    "RlHyperParameters",
    "RlParameters",
    "RlTrainer",
    "SoloAgentHyperParameters",
    "SoloAgentParameters",
    "SoloAgentTrainer",
    "VanillaPpoTrainer",
    "gae",
    "ppo_clip_loss",
]
