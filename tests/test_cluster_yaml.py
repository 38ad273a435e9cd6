from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_valid_for_the_ray_we_pin():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # with the provider defaults, as `ray up` does
    pinned = f"ray[default,train,tune]=={ray.__version__}"
    assert any(pinned in command for command in config["setup_commands"])
    assert any("constraints.txt" in command for command in config["setup_commands"])
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # training only on the GPU workers
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] == 1 and workers["min_workers"] == 0
    assert workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
