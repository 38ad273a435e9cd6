from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from raytrainer import ConfigError, HyperParameters, load_hyper_params, register_conversion
from raytrainer.errors import CheckpointVersionError
from raytrainer.params import AgentHyperParameters, apply_overrides

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regression.yaml"


def test_example_config_loads_as_the_trainers_class():
    hp = load_hyper_params(EXAMPLE)
    assert type(hp).__name__ == "RegressionParams"
    assert hp.num_iterations == 2000
    assert hp.agent_params("agent").learning_rate == pytest.approx(3e-3)


def test_overrides_parse_values_and_reach_nested_fields():
    hp = load_hyper_params(
        EXAMPLE,
        [
            "num_iterations=7",
            "agents.agent.learning_rate=5e-4",
            "nip_protocol.max_message_rounds=2",
        ],
    )
    assert hp.num_iterations == 7
    assert hp.agent_params("agent").learning_rate == pytest.approx(5e-4)
    # the per-agent section fills its gaps from _default
    assert hp.agent_params("agent").weight_decay == hp.agents["_default"].weight_decay
    assert hp.nip_protocol.max_message_rounds == 2


def test_overrides_do_not_touch_the_input():
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2", "a.c=[1, 2]"]) == {"a": {"b": 2, "c": [1, 2]}}
    assert data == {"a": {"b": 1}}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("hiden_dim=3", "hiden_dim: unknown field"),
        ("agents._default.lr=0.1", "agents._default.lr: unknown field"),
        ("batch_size=many", "batch_size: Input should be a valid integer"),
        ("batch_size=0", "batch_size: Input should be greater than 0"),
        ("dropout=1.5", "dropout: Input should be less than 1"),
        ("agents.prover.learning_rate=0.1", "agents.prover: protocol 'solo' has agents ['agent']"),
        ("interaction_protocol=telepathy", "unknown protocol 'telepathy'"),
        ("protocol=nip", "protocol: renamed to interaction_protocol"),
        ("scenario=nowhere", "unknown scenario 'nowhere'"),
        ("trainer=no_such_module:X", "cannot import module 'no_such_module'"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as info:
        load_hyper_params(EXAMPLE, [override])
    assert needle in str(info.value)


def test_override_through_a_leaf_is_an_error():
    with pytest.raises(ConfigError, match="field 'seed' is not a section"):
        load_hyper_params(EXAMPLE, ["seed.x=1"])


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_hyper_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_hyper_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_hyper_params(listy)
    with pytest.raises(ConfigError, match="trainer: required field is missing"):
        load_hyper_params({"scenario": "x"})


def test_saved_form_round_trips_with_versions(tmp_path):
    hp = load_hyper_params(EXAMPLE, ["seed=5"])
    saved = hp.to_saved()
    assert saved["schema_version"] == 2 and saved["package"] == "raytrainer"
    path = tmp_path / "hyper_params.json"
    path.write_text(json.dumps(saved))
    again = load_hyper_params(path)
    assert again == hp
    assert again.default_run_id() == hp.default_run_id()
    # Schema 1 named the protocol `protocol` and kept its rounds in `protocol_params`.
    old = json.loads(json.dumps(saved))
    old["schema_version"] = 1
    params = old["params"]
    for key in ("protocol_common", "nip_protocol", "debate_protocol", "mnip_protocol"):
        del params[key]
    params["protocol"] = params.pop("interaction_protocol")
    params["protocol_params"] = {"max_message_rounds": 8}
    path.write_text(json.dumps(old))
    assert load_hyper_params(path) == hp
    params.update(protocol="debate", protocol_params={"max_message_rounds": 4})
    path.write_text(json.dumps(old))
    converted = load_hyper_params(path)
    assert converted.interaction_protocol == "debate"
    assert converted.debate_protocol.max_message_rounds == 4


def test_run_id_is_stable_and_follows_the_values():
    a = load_hyper_params(EXAMPLE)
    b = load_hyper_params(yaml.safe_load(EXAMPLE.read_text()))
    assert a.default_run_id() == b.default_run_id()
    assert a.default_run_id().startswith("regressiontrainer-")
    assert load_hyper_params(EXAMPLE, ["seed=1"]).default_run_id() != a.default_run_id()
    # A longer run is the same run, extended.
    assert load_hyper_params(EXAMPLE, ["num_iterations=9"]).default_run_id() == a.default_run_id()


def test_diff_lists_changed_leaves():
    a = load_hyper_params(EXAMPLE)
    b = load_hyper_params(EXAMPLE, ["seed=9", "agents._default.learning_rate=0.5"])
    assert a.diff(b) == {
        "seed": (0, 9),
        "agents._default.learning_rate": (0.003, 0.5),
    }


class _AgentV2(AgentHyperParameters):
    temperature: float = Field(1.0, gt=0)


class _ParamsV2(HyperParameters):
    schema_version = 2
    agents: dict[str, _AgentV2] = Field(default_factory=lambda: {"_default": _AgentV2()})
    width: int = 4


@register_conversion(_ParamsV2, from_version=1)
def _v1_to_v2(params: dict) -> dict:
    params["width"] = params.pop("hidden", 4)
    return params


def test_version_conversion_and_typed_agent_sections():
    v1 = {"trainer": "t", "scenario": "s", "num_iterations": 1, "hidden": 9}
    converted = _ParamsV2.from_saved({"schema_version": 1, "params": v1})
    assert converted.width == 9
    assert isinstance(converted.agent_params("anyone"), _AgentV2)
    with pytest.raises(CheckpointVersionError, match="schema version 3.*up to version 2"):
        _ParamsV2.from_saved({"schema_version": 3, "params": v1})


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (
            "num_iteration=10",
            "num_iteration: unknown field (from --set num_iteration=10); "
            "did you mean 'num_iterations'?",
        ),
        (
            "nip_protocol.max_rounds=2",
            "nip_protocol.max_rounds: unknown field (from --set nip_protocol.max_rounds=2)"
            "; did you mean 'max_message_rounds'?",
        ),
        (
            "learning_rate=0.1",
            "learning_rate: unknown field (from --set learning_rate=0.1); it belongs elsewhere: "
            "did you mean 'agents._default.learning_rate'?",
        ),
        (
            "agents._default.zzz=1",
            "agents._default.zzz: unknown field (from --set agents._default.zzz=1); "
            "fields here: learning_rate, weight_decay",
        ),
        ("batch_size=many", "(got 'many'; from --set batch_size=many)"),
    ],
)
def test_unknown_keys_name_their_source_and_the_nearest_field(override, needle):
    with pytest.raises(ConfigError) as info:
        load_hyper_params(EXAMPLE, [override])
    message = str(info.value)
    assert message.startswith(f"invalid hyper-parameters in {EXAMPLE} or its --set overrides:")
    assert needle in message


def test_an_unknown_key_in_the_file_is_blamed_on_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(EXAMPLE.read_text() + "hiden_dim: 3\n")
    with pytest.raises(ConfigError) as info:
        load_hyper_params(config, ["seed=1"])
    assert f"hiden_dim: unknown field (from {config}); did you mean 'hidden_dim'?" in str(
        info.value
    )
    with pytest.raises(ConfigError) as info:
        load_hyper_params(config)
    assert str(info.value) == (
        f"invalid hyper-parameters in {config}:\n"
        "  hiden_dim: unknown field; did you mean 'hidden_dim'?"
    )


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("start: 2026-01-01", "start: 2026-01-01 reads as a YAML date"),
        ("extra: {when: 2026-01-01 10:00:00}", "extra.when: 2026-01-01 10:00:00 reads as a YAML"),
        ("tags: [a, 2026-01-01]", "tags.1: 2026-01-01 reads as a YAML date"),
        ("tags: !!set {a, b}", "tags: a YAML set (!!set)"),
        ("blob: !!binary aGVsbG8=", "blob: binary data (!!binary)"),
    ],
)
def test_values_json_cannot_hold_name_the_field(tmp_path, yaml_text, needle):
    config = tmp_path / "c.yaml"
    config.write_text(EXAMPLE.read_text() + yaml_text + "\n")
    with pytest.raises(ConfigError) as info:
        load_hyper_params(config)
    assert str(info.value).startswith(f"config file {str(config)!r}: ")
    assert needle in str(info.value)
    if "date" in needle:
        assert "quote it" in str(info.value)


def test_a_date_from_an_override_says_how_to_quote_it():
    with pytest.raises(ConfigError) as info:
        load_hyper_params(EXAMPLE, ["base_run.version=2026-01-01"])
    assert str(info.value) == (
        "--set base_run.version=2026-01-01: base_run.version: 2026-01-01 reads as a YAML date, "
        "which a config cannot hold; quote it (--set 'base_run.version=\"2026-01-01\"') to keep "
        "it as text."
    )
    with pytest.raises(ConfigError, match=r"^config: when: 2026-01-01 reads as a YAML date"):
        load_hyper_params(
            {**yaml.safe_load(EXAMPLE.read_text()), "when": yaml.safe_load("2026-01-01")}
        )
    quoted = load_hyper_params(EXAMPLE, ['base_run={run_id: r, version: "2026-01-01"}'])
    assert quoted.base_run.version == "2026-01-01"


def test_nearest_is_shared_with_its_hint():
    from raytrainer.params import did_you_mean, nearest

    assert nearest("num_iteration", ["num_iterations", "seed"]) == "num_iterations"
    assert nearest("xyz", ["num_iterations", "seed"]) is None
    assert did_you_mean("sed", ["seed"]) == "; did you mean 'seed'?"
    assert did_you_mean("xyz", ["seed"]) == ""


def test_agent_sections_fill_from_default_after_a_round_trip():
    # What a Ray worker or a checkpoint reads back: the saved form, validated again.
    hp = load_hyper_params(
        EXAMPLE,
        ["agents._default.learning_rate=0.5", "agents.agent.weight_decay=0.25"],
    )
    again = load_hyper_params(hp.to_saved()["params"])
    assert again.agent_params("agent").learning_rate == 0.5
    assert again.agent_params("agent").weight_decay == 0.25
    assert again.default_run_id() == hp.default_run_id()
