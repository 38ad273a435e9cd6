"""Scenario instances: what a run is about — datasets, agents and the protocol handler.

A scenario is a function registered by name that builds a :class:`ScenarioInstance` from the
hyper-parameters::

    @register_scenario("regression")
    def build(hyper_params, settings) -> ScenarioInstance: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from raytrainer.errors import ConfigError
from raytrainer.params import HyperParameters
from raytrainer.protocols import ProtocolHandler, build_protocol_handler
from raytrainer.registry import Registry
from raytrainer.settings import ExperimentSettings

ScenarioBuilder = Callable[[HyperParameters, ExperimentSettings], "ScenarioInstance"]

SCENARIOS: Registry[ScenarioBuilder] = Registry(
    "scenario", builtins="raytrainer.scenarios.graph_isomorphism"
)
register_scenario = SCENARIOS.register


@dataclass
class ScenarioInstance:
    """The components of an experiment.

    Parameters
    ----------
    protocol_handler : ProtocolHandler
        Names the agents and says who acts in which message round.
    agents : dict[str, torch.nn.Module]
        One module per agent name of the protocol handler.
    datasets : dict[str, Any]
        Named datasets ("train", "test", ...); any indexable with ``len()``.
    """

    protocol_handler: ProtocolHandler
    agents: dict[str, torch.nn.Module]
    datasets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = set(self.protocol_handler.agent_names)
        if set(self.agents) != expected:
            raise ConfigError(
                f"scenario agents {sorted(self.agents)} do not match the protocol's agents "
                f"{sorted(expected)}; build one module per protocol agent."
            )


def build_scenario_instance(
    hyper_params: HyperParameters, settings: ExperimentSettings
) -> ScenarioInstance:
    """Build the scenario named by ``hyper_params.scenario``."""
    instance = SCENARIOS.get(hyper_params.scenario)(hyper_params, settings)
    if not isinstance(instance, ScenarioInstance):
        raise ConfigError(
            f"scenario {hyper_params.scenario!r} returned {type(instance).__name__}, "
            "not a ScenarioInstance."
        )
    return instance


__all__ = [
    "SCENARIOS",
    "ScenarioInstance",
    "build_protocol_handler",
    "build_scenario_instance",
    "register_scenario",
]
