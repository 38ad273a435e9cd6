"""The graph-isomorphism scenario and ``solo_agent``: data, cache, agents, kill and resume."""

from __future__ import annotations

import io
import signal
import subprocess
from collections import Counter
from dataclasses import fields
from pathlib import Path

import networkx as nx
import pytest
import torch
import yaml
from helpers.gated import GATE_ENV, make_gate, wait_for_gate
from test_local_runs import _cli, _run_cli

from raytrainer import ConfigError, ExperimentSettings, Scaling, load_hyper_params, run, run_local
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.scenario import build_scenario_instance
from raytrainer.scenarios.graph_isomorphism import (
    DatasetOptions,
    GraphIsomorphismAgent,
    GraphIsomorphismAgentParameters,
    SoloClassifier,
    load_or_generate,
)
from raytrainer.scenarios.graph_isomorphism.data import cache_location, generate, wl_score

REPO = Path(__file__).resolve().parents[1]

TINY_AGENT = {
    "num_gnn_layers": 2,
    "d_gnn": 8,
    "d_gin_mlp": 16,
    "num_transformer_layers": 1,
    "num_heads": 2,
    "d_transformer": 8,
    "d_transformer_mlp": 16,
    "d_decider": 8,
}


def tiny_gi_config(**extra) -> dict:
    """solo_agent on 120 pairs: 90 to train, batch 16 → 5 steps an epoch, 4 epochs."""
    return {
        "trainer": "helpers.gated:GatedSoloAgentTrainer",
        "scenario": "graph_isomorphism",
        "interaction_protocol": "nip",
        "dataset": "tiny",
        "dataset_options": {"num_pairs": 120, "seed": 1},
        "test_size": 0.25,
        "d_representation": 8,
        "agents": {"_default": TINY_AGENT, "prover": {"num_gnn_layers": 3}},
        "solo_agent": {"num_epochs": 4, "batch_size": 16, "learning_rate": 0.003},
        **extra,
    }


def _bytes(pairs) -> bytes:
    buffer = io.BytesIO()
    torch.save({f.name: getattr(pairs, f.name) for f in fields(pairs)}, buffer)
    return buffer.getvalue()


def _reference_wl_score(a: nx.Graph, b: nx.Graph, rounds: int) -> int:
    """Textbook 1-WL colour refinement on the disjoint union, with explicit signatures."""
    union = nx.disjoint_union(a, b)
    colors = dict.fromkeys(union, 0)
    for round_id in range(1, rounds + 1):
        signatures = {v: (colors[v], tuple(sorted(colors[u] for u in union[v]))) for v in union}
        palette = {s: k for k, s in enumerate(sorted(set(signatures.values())))}
        colors = {v: palette[signatures[v]] for v in union}
        left = sorted(colors[v] for v in range(len(a)))
        right = sorted(colors[v] for v in range(len(a), len(union)))
        if left != right:
            return round_id
    return 0


def _graphs(pairs, i):
    return [
        nx.from_numpy_array(pairs.adjacency[i, g, :n, :n].numpy())
        for g, n in enumerate(pairs.num_nodes[i].tolist())
    ]


def test_generator_is_seeded_and_gives_the_requested_difficulty():
    options = DatasetOptions(num_pairs=400, seed=7)
    pairs = generate(options)
    assert _bytes(pairs) == _bytes(generate(options))  # same seed, same bytes
    assert _bytes(pairs) != _bytes(generate(options.model_copy(update={"seed": 8})))
    assert pairs.y.sum() == 200 and torch.equal(pairs.y == 1, pairs.wl_score == 0)
    scores = Counter(pairs.wl_score[pairs.y == 0].tolist())
    assert abs(scores[1] / 200 - 0.1) <= 0.02 and abs(scores[2] / 200 - 0.2) <= 0.02
    assert sum(scores.values()) == 200 and max(scores) <= 5
    assert set(pairs.num_nodes.flatten().tolist()) == set(range(7, 12))
    for i in range(0, 400, 5):  # a sample, against networkx and a textbook WL
        a, b = _graphs(pairs, i)
        assert nx.is_isomorphic(a, b) == bool(pairs.y[i]), i
        assert _reference_wl_score(a, b, 5) == pairs.wl_score[i], i


def test_wl_marks_individualise_one_node_in_each_graph():
    # A path 0-1-2 and the same path relabelled (its middle node is 0): the graphs agree, and
    # so do they with matching nodes marked, but an end marked against the middle does not.
    path = nx.to_numpy_array(nx.path_graph(3), dtype=int)
    relabelled = path[[1, 0, 2]][:, [1, 0, 2]]
    assert wl_score(path, relabelled, 2) == 0
    assert wl_score(path, relabelled, 2, marks=(1, 0)) == 0  # middle, middle
    assert wl_score(path, relabelled, 2, marks=(0, 2)) == 0  # end, end
    assert wl_score(path, relabelled, 2, marks=(0, 0)) == 1  # end, middle: told apart in round 1


def test_dataset_cache_is_reused_rebuilt_on_change_and_never_trusted_partial(tmp_path, caplog):
    options = DatasetOptions(num_pairs=60, seed=2)
    first = load_or_generate("small", options, str(tmp_path))
    folder = Path(cache_location(str(tmp_path), "small", options))
    data = folder / "data.pt"
    stamp = data.stat().st_mtime_ns
    assert _bytes(load_or_generate("small", options, str(tmp_path))) == _bytes(first)
    assert data.stat().st_mtime_ns == stamp  # read back, not generated again
    # Another option is another dataset, in another folder.
    other = options.model_copy(update={"isomorphic_share": 0.25})
    assert load_or_generate("small", other, str(tmp_path)).y.sum() == 15
    assert Path(cache_location(str(tmp_path), "small", other)) != folder
    # A damaged data file is detected by its digest and generated again.
    data.write_bytes(data.read_bytes()[:-10])
    assert _bytes(load_or_generate("small", options, str(tmp_path))) == _bytes(first)
    assert "does not match its digest" in caplog.text
    # A folder whose meta.json (written last) is missing is a partial write: never used.
    (folder / "meta.json").unlink()
    data.write_bytes(b"partial")
    assert _bytes(load_or_generate("small", options, str(tmp_path))) == _bytes(first)
    with pytest.raises(ConfigError, match="dataset='mine' is not one of"):
        load_or_generate("mine", DatasetOptions(), str(tmp_path))


def test_agents_see_graphs_up_to_isomorphism_and_pick_real_nodes():
    torch.manual_seed(0)
    params = GraphIsomorphismAgentParameters(**TINY_AGENT)
    agent = GraphIsomorphismAgent(
        params, history_features=8 * 1, d_representation=8, is_verifier=True
    )
    pairs = generate(DatasetOptions(num_pairs=20, seed=4))
    adjacency, mask = pairs.adjacency.float(), pairs.node_mask
    history = torch.zeros(20, 8, 1, 22)
    out = agent(adjacency, mask, history)
    assert out["node_logits"].shape == (20, 22) and out["decision_logits"].shape == (20, 3)
    # Reject / accept are the solo head's logits: solo pretraining trains the decisions too.
    assert torch.equal(out["decision_logits"][:, :2], out["solo_logits"])
    assert torch.isinf(out["node_logits"][~mask.flatten(1)]).all()
    assert torch.isfinite(out["node_logits"][mask.flatten(1)]).all()
    # Relabelling the real nodes of both graphs changes nothing but the nodes' order.
    permuted = adjacency[0].clone()
    for g in range(2):
        n = int(pairs.num_nodes[0, g])
        order = torch.cat([torch.randperm(n), torch.arange(n, 11)])  # padding stays at the end
        permuted[g] = adjacency[0, g][order][:, order]
    again = agent(permuted[None], mask[:1], history[:1])
    assert torch.allclose(again["solo_logits"], out["solo_logits"][:1], atol=1e-5)
    assert torch.allclose(again["value"], out["value"][:1], atol=1e-5)


def test_node_selector_favours_the_image_of_the_other_graphs_message():
    torch.manual_seed(0)
    agent = GraphIsomorphismAgent(
        GraphIsomorphismAgentParameters(**TINY_AGENT, node_match_weight=3.0),
        history_features=2,
        d_representation=8,
        is_verifier=False,
    )
    pairs = generate(DatasetOptions(num_pairs=4, seed=4))
    n = int(pairs.num_nodes[0, 0])
    order = torch.cat([torch.randperm(n), torch.arange(n, 11)])
    adjacency = pairs.adjacency[:1].float().clone()
    adjacency[0, 1] = adjacency[0, 0][order][:, order]  # graph 1: graph 0 relabelled
    mask = pairs.node_mask[:1].clone()
    mask[0, 1] = mask[0, 0]
    u = 2
    history = torch.zeros(1, 2, 1, 22)
    history[0, 0, 0, u] = 1  # round 0: node u of graph 0 was sent
    _, _, match = agent.body(adjacency, mask, history)
    image = int((order == u).nonzero()) + 11  # u's node in graph 1
    assert match[0, image] == 1  # same embedding whatever the weights
    assert (match[0, :11] == 0).all()  # graph 1 holds no message to match
    assert (match[0, 11 + n :] == 0).all()  # padding
    # The match score enters the node logits with the agent's learned weight.
    logits = agent(adjacency, mask, history)["node_logits"]
    with torch.no_grad():
        agent.match_weight.zero_()
    without = agent(adjacency, mask, history)["node_logits"]
    real = mask.flatten(1)
    assert torch.allclose((logits - without)[real], 3.0 * match[real], atol=1e-5)
    # Without messages (solo training) nothing is matched.
    assert (agent.body(adjacency, mask, None)[2] == 0).all()


def test_a_config_of_the_original_project_loads_unchanged():
    hp = load_hyper_params(
        {
            "trainer": "solo_agent",
            "scenario": "graph_isomorphism",
            "interaction_protocol": "nip",
            "dataset": "eru10000",
            "seed": 6,
            "agents": {
                "_default": {"d_gnn": 16},
                "prover": {"num_gnn_layers": 5},
                "verifier": {"num_gnn_layers": 2, "num_transformer_layers": 1},
            },
            "solo_agent": {"num_epochs": 10, "batch_size": 256, "learning_rate": 0.001},
        }
    )
    assert hp.agent_params("verifier").num_gnn_layers == 2
    assert hp.agent_params("verifier").d_transformer == 16
    assert hp.num_iterations == 10 * (8000 // 256) and hp.batch_size == 256
    assert load_hyper_params(hp.to_saved()["params"]) == hp  # saved with the derived length
    with pytest.raises(ConfigError, match="batch_size=32 differs from solo_agent.batch_size"):
        load_hyper_params({**hp.to_dict(), "batch_size": 32})
    with pytest.raises(ConfigError, match="agents.judge: protocol 'nip' has agents"):
        load_hyper_params({**hp.to_dict(), "agents": {"judge": {}}})


def _final_models(run_dir: Path) -> dict:
    return read_checkpoint(list_checkpoints(run_dir)[-1]).state["models"]


def test_solo_agent_killed_mid_epoch_resumes_bitwise(tmp_path):
    config = tmp_path / "gi.yaml"
    config.write_text(yaml.safe_dump(tiny_gi_config()))
    args = ["run", config, "--local", "--checkpoint-period", "3", "--no-progress"]
    code, _, err = _run_cli([*args, "--storage-path", tmp_path / "straight"], tmp_path)
    assert code == 0, err

    storage = tmp_path / "killed"
    gate = make_gate(tmp_path / "gate", 9)  # epochs are 5 steps: 9 is mid-epoch
    env = {GATE_ENV: gate, "RAYTRAINER_STORAGE": str(tmp_path / "straight")}  # shared dataset
    proc = _cli(
        [*args, "--storage-path", storage],
        tmp_path,
        env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_for_gate(tmp_path / "gate") == (9, proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (run_dir,) = [p for p in storage.iterdir() if p.name != "datasets"]
    code, _, err = _run_cli([*args, "--storage-path", storage], tmp_path)
    assert code == 0, err
    assert f"resuming run {run_dir.name} from {run_dir / 'checkpoint_000009'}" in err
    straight, resumed = _final_models(tmp_path / "straight" / run_dir.name), _final_models(run_dir)
    for agent in ("prover", "verifier"):
        for key, value in straight[agent].items():
            assert torch.equal(value, resumed[agent][key]), (agent, key)
    final = read_checkpoint(list_checkpoints(run_dir)[-1])
    assert final.iteration == 20 and final.metadata["metrics"]["epoch"] == 4
    assert {"prover_test_accuracy", "verifier_test_accuracy_wl1"} <= set(final.metadata["metrics"])


def test_solo_agent_learns_in_process(tmp_path):
    hp = load_hyper_params(
        tiny_gi_config(
            trainer="solo_agent",
            dataset_options={
                "num_pairs": 400,
                "seed": 1,
                "wl_round1_share": 1.0,
                "wl_round2_share": 0.0,
            },
            solo_agent={"num_epochs": 15, "batch_size": 32, "learning_rate": 0.003},
        )
    )
    result = run_local(hp, ExperimentSettings(storage_path=str(tmp_path), checkpoint_period=1000))
    # Pairs told apart by their degrees alone: even a tiny agent gets most of them.
    assert result.metrics["prover_test_accuracy"] >= 0.75, result.metrics


@pytest.mark.timeout(600)
def test_solo_agent_on_two_ray_workers_matches_in_process(ray_cluster, tmp_path):
    hp = load_hyper_params(tiny_gi_config(trainer="solo_agent"))
    ray_result = run(hp, _gi_settings(tmp_path / "ray"), Scaling(num_workers=2))
    local_result = run_local(hp, _gi_settings(tmp_path / "local"))
    assert ray_result.iteration == local_result.iteration == 20
    final = read_checkpoint(list_checkpoints(tmp_path / "ray" / ray_result.run_id)[-1])
    assert final.metadata["world_size"] == 2 and final.metadata["metrics"]["epoch"] == 4
    on_ray = final.state["models"]
    in_process = _final_models(tmp_path / "local" / local_result.run_id)
    # The same global batches: equal up to all-reduce order. Compared by what the agents
    # compute: Adam turns the zero gradients of attention's key biases into noise-driven steps.
    instance = build_scenario_instance(hp, _gi_settings(tmp_path / "local"))
    test = instance.datasets["test"]
    for name, agent in instance.agents.items():
        outputs = []
        for state in (in_process[name], on_ray[name]):
            model = SoloClassifier(agent)
            model.load_state_dict(state)
            with torch.no_grad():
                outputs.append(model.eval()(test.adjacency.float(), test.node_mask))
        assert torch.allclose(*outputs, atol=1e-3), name
    for name in ("prover_test_accuracy", "verifier_test_accuracy"):
        assert ray_result.metrics[name] == pytest.approx(local_result.metrics[name], abs=0.02)


def _gi_settings(storage: Path) -> ExperimentSettings:
    return ExperimentSettings(storage_path=str(storage), checkpoint_period=10)


def test_a_dry_run_reuses_the_real_data_cache_and_leaves_no_run(tmp_path):
    hp = load_hyper_params(tiny_gi_config(trainer="solo_agent"))
    settings = ExperimentSettings(storage_path=str(tmp_path), test_run=4)
    result = run_local(hp, settings)
    assert result.iteration == 4
    assert [p.name for p in tmp_path.iterdir()] == ["datasets"]  # the run itself is gone
    (cache,) = (tmp_path / "datasets" / "graph_isomorphism").iterdir()
    assert cache.name.startswith("tiny-") and (cache / "meta.json").is_file()


def test_dataset_cache_on_s3(s3_server):
    options = DatasetOptions(num_pairs=40, seed=5)
    root = "s3://raytrainer/gi-cache"
    first = load_or_generate("s3pairs", options, root)
    folder = cache_location(root, "s3pairs", options).removeprefix("s3://")
    assert s3_server.get_file_info(f"{folder}/meta.json").size > 0
    written = s3_server.get_file_info(f"{folder}/data.pt").mtime
    assert _bytes(load_or_generate("s3pairs", options, root)) == _bytes(first)
    assert s3_server.get_file_info(f"{folder}/data.pt").mtime == written  # read, not rewritten
