"""Every config and sweep file in examples/ validates as written (no Ray, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raytrainer import load_hyper_params
from raytrainer.sweep_config import load_sweep

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    if "search" in yaml.safe_load(path.read_text()):
        sweep = load_sweep(path)
        assert sweep.config.search
    else:
        assert load_hyper_params(path).num_iterations > 0


def test_the_domain_examples_are_the_originals_names():
    names = {p.name for p in EXAMPLES}
    assert {
        "gi_solo.yaml",
        "gi_ppo_nip.yaml",
        "gi_ppo_debate.yaml",
        "gi_solo_verifier.yaml",
    } <= names
    ppo = load_hyper_params(EXAMPLES[0].parent / "gi_ppo_nip.yaml")
    assert ppo.trainer == "vanilla_ppo" and ppo.agent_params("verifier").num_gnn_layers == 2
