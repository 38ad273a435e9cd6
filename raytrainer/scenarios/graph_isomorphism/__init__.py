"""The ``graph_isomorphism`` scenario: is a pair of graphs isomorphic.

``data`` generates and caches the graph pairs, ``agents`` holds the agents' networks; this
module registers the scenario builder.
"""

from __future__ import annotations

from typing import Any

import torch

from raytrainer import storage
from raytrainer.errors import ConfigError
from raytrainer.params import HyperParameters
from raytrainer.protocols import build_protocol_handler
from raytrainer.scenario import ScenarioInstance, register_scenario
from raytrainer.scenarios.graph_isomorphism.agents import (
    GraphIsomorphismAgent,
    GraphIsomorphismAgentParameters,
    SoloClassifier,
)
from raytrainer.scenarios.graph_isomorphism.data import (
    NAMED_DATASETS,
    DatasetOptions,
    GraphPairs,
    load_or_generate,
    wl_score,
)
from raytrainer.settings import ExperimentSettings

_NEEDS = ("dataset", "dataset_options", "test_size", "d_representation", "message_size")


@register_scenario("graph_isomorphism")
def build_graph_isomorphism_scenario(
    hyper_params: HyperParameters, settings: ExperimentSettings
) -> ScenarioInstance:
    """Build the protocol handler, the train/test graph pairs and one agent per protocol agent.

    The pairs come from the dataset cache under ``settings.data_root`` (default: the run's
    storage root), generated on first use; the split is drawn from the dataset's seed, so
    every run sees the same test set. Each agent's initial weights are drawn from ``seed`` and
    its position in the protocol.
    """
    missing = [name for name in _NEEDS if not hasattr(hyper_params, name)]
    if missing:
        raise ConfigError(
            f"scenario graph_isomorphism needs the hyper-parameters {missing}: use a trainer "
            "whose hyper_params_cls is raytrainer.trainers.NipHyperParameters (or a subclass)."
        )
    params: Any = hyper_params
    handler = build_protocol_handler(hyper_params)
    root = settings.data_root or storage.root_of(settings.storage_path)
    pairs = load_or_generate(params.dataset, params.dataset_options, root)
    train, test = pairs.split(params.test_size, params.dataset_options.seed)
    history_features = handler.max_message_rounds * len(handler.channel_names)
    agents = {}
    for index, name in enumerate(handler.agent_names):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hyper_params.seed * 1_000 + index)
            agents[name] = GraphIsomorphismAgent(
                hyper_params.agent_params(name),  # type: ignore[arg-type]
                history_features,
                params.d_representation,
                is_verifier=name == handler.verifier_name,
            )
    return ScenarioInstance(handler, agents, {"train": train, "test": test})


__all__ = [
    "NAMED_DATASETS",
    "DatasetOptions",
    "GraphIsomorphismAgent",
    "GraphIsomorphismAgentParameters",
    "GraphPairs",
    "SoloClassifier",
    "build_graph_isomorphism_scenario",
    "load_or_generate",
    "wl_score",
]
