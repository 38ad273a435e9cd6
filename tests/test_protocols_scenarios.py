from __future__ import annotations

import pytest
from torch import nn

from raytrainer import ConfigError, ExperimentSettings, ScenarioInstance, load_hyper_params
from raytrainer.protocols import PROTOCOLS, build_protocol_handler
from raytrainer.registry import Registry
from raytrainer.scenario import build_scenario_instance


def _hp(tiny_config, protocol, **extra):
    return load_hyper_params({**tiny_config, "interaction_protocol": protocol, **extra})


def test_solo_has_one_agent_and_no_messages(tiny_config):
    handler = build_protocol_handler(_hp(tiny_config, "solo"))
    assert handler.agent_names == ("agent",) and handler.max_message_rounds == 0
    assert handler.active_agents(0) == ("agent",) and handler.verifier_name is None
    assert set(PROTOCOLS.names()) >= {"solo", "nip", "debate"}


def test_per_agent_sections_follow_the_protocol(tiny_config):
    hp = _hp(
        tiny_config,
        "nip",
        agents={"_default": {"learning_rate": 0.1}, "verifier": {"weight_decay": 0.5}},
    )
    assert hp.agent_params("verifier").learning_rate == 0.1
    assert hp.agent_params("verifier").weight_decay == 0.5
    assert hp.agent_params("prover").weight_decay == 0.0


def test_scenario_agents_must_match_the_protocol(tiny_config):
    hp = _hp(tiny_config, "nip")
    with pytest.raises(ConfigError, match=r"scenario agents \['agent'\] do not match"):
        build_scenario_instance(hp, ExperimentSettings())
    instance = ScenarioInstance(
        build_protocol_handler(hp), {"prover": nn.Linear(1, 1), "verifier": nn.Linear(1, 1)}
    )
    assert instance.datasets == {}


def test_registry_names_and_import_paths():
    registry: Registry[object] = Registry("widget")
    marker = object()
    registry.register("w")(marker)
    assert registry.get("w") is marker and "w" in registry
    assert registry.get("raytrainer.protocols:NipProtocol").__name__ == "NipProtocol"
    with pytest.raises(ConfigError, match="unknown widget 'x'. Registered: w"):
        registry.get("x")
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        registry.get("raytrainer.protocols:Nope")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("w")(object())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"checkpoint_period": 0}, "checkpoint_period=0"),
        ({"num_to_keep": 0}, "num_to_keep=0"),
        ({"wandb_mode": "sometimes"}, "wandb_mode='sometimes'"),
        ({"world_rank": 2, "world_size": 2}, "world_rank=2"),
        ({"run_id": "../escape"}, "run_id='../escape'"),
    ],
)
def test_settings_are_validated(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        ExperimentSettings(**kwargs)
