"""The RL trainers: GAE and the clipped loss by hand, rewards into returns, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest
import torch
import yaml
from helpers.gated import GATE_ENV, make_gate, wait_for_gate
from test_graph_isomorphism import TINY_AGENT, _final_models
from test_local_runs import _cli, _run_cli

from raytrainer import ConfigError, ExperimentSettings, Scaling, load_hyper_params, run, run_local
from raytrainer.build import build_trainer
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.protocols import CONTINUE, ProtocolEnvironment, build_protocol_handler
from raytrainer.scenario import build_scenario_instance
from raytrainer.trainers import gae, ppo_clip_loss


def tiny_rl_config(**extra) -> dict:
    """PPO under nip (4 rounds) on 120 pairs: 64 frames an iteration, 10 iterations."""
    return {
        "trainer": "helpers.gated:GatedVanillaPpoTrainer",
        "scenario": "graph_isomorphism",
        "interaction_protocol": "nip",
        "dataset": "tiny",
        "dataset_options": {"num_pairs": 120, "seed": 1},
        "test_size": 0.25,
        "d_representation": 8,
        "agents": {"_default": TINY_AGENT},
        "nip_protocol": {"max_message_rounds": 4},
        "rl": {
            "frames_per_batch": 64,
            "num_iterations": 10,
            "num_epochs": 2,
            "minibatch_size": 32,
            "num_test_iterations": 1,
        },
        **extra,
    }


def test_gae_matches_a_hand_worked_episode():
    # Three steps, the episode ends at the third; gamma 0.9, lambda 0.5.
    rewards = torch.tensor([0.0, 0.5, 1.0])
    values = torch.tensor([0.2, 0.4, 0.6])
    dones = torch.tensor([False, False, True])
    advantages, returns = gae(rewards, values, dones, gamma=0.9, lmbda=0.5)
    d2 = 1.0 - 0.6  # no bootstrap past the end
    d1 = 0.5 + 0.9 * 0.6 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.2
    a2, a1 = d2, d1 + 0.45 * d2
    a0 = d0 + 0.45 * a1
    assert advantages.tolist() == pytest.approx([a0, a1, a2])
    assert returns.tolist() == pytest.approx([a0 + 0.2, a1 + 0.4, a2 + 0.6])
    # A second episode starting after a done does not leak into the first.
    two = gae(torch.tensor([1.0, 5.0]), torch.zeros(2), torch.tensor([True, True]), 0.9, 0.5)[0]
    assert two.tolist() == [1.0, 5.0]


def test_clipped_loss_has_no_gradient_outside_the_clip_range():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5])).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, 1.0, 1.0])
    ppo_clip_loss(new, old, advantages, clip_epsilon=0.2).sum().backward()
    grad = new.grad.tolist()
    assert grad[0] == 0 and grad[1] == 0  # ratio past 1+ε with A>0, below 1-ε with A<0
    assert grad[2] == pytest.approx(-1.1)  # inside the range: -ρA
    assert grad[3] == pytest.approx(-0.5)  # below 1-ε but A>0: the unclipped term is smaller


@pytest.mark.parametrize(
    ("protocol", "decision", "prover_returns"),
    [
        ("adp", 1, [0.9, 1.0]),  # accepted: the prover's reward reaches its message, discounted
        ("adp", 0, [0.0, 0.0]),
        ("merlin_arthur", 0, None),  # rejected: the drawn prover0 gains, prover1 does not
    ],
)
def test_rewards_flow_into_the_right_agents_returns(protocol, decision, prover_returns):
    hp = load_hyper_params({**tiny_rl_config(), "interaction_protocol": protocol})
    env = ProtocolEnvironment(build_protocol_handler(hp))
    episodes = env.reset(torch.tensor([1]), torch.ones(1, 4, dtype=torch.bool))
    rewards = []
    for decide in (CONTINUE, decision):
        episodes, reward = env.step(
            episodes,
            torch.zeros(1, len(env.agent_names), dtype=torch.long),
            torch.tensor([decide]),
        )
        rewards.append(reward[0])
    rewards = torch.stack(rewards)  # [T, A]
    dones = torch.tensor([[False], [True]]).expand_as(rewards)
    _, returns = gae(rewards, torch.zeros_like(rewards), dones, gamma=0.9, lmbda=1.0)
    verifier = env.agent_names.index("verifier")
    assert returns[:, verifier].tolist() == pytest.approx(
        [0.9 * (2 * decision - 1), 2 * decision - 1]
    )
    if prover_returns is not None:
        assert returns[:, 0].tolist() == pytest.approx(prover_returns)
    else:
        speaker = int(episodes.speaker)
        assert returns[0, 0] == pytest.approx(0.9) and returns[0, 1] == 0
        assert speaker in (0, 1)  # whoever spoke, the reward follows the decision's side


def test_ppo_killed_mid_run_resumes_bitwise(tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text(yaml.safe_dump(tiny_rl_config()))
    args = ["run", config, "--local", "--checkpoint-period", "3", "--no-progress"]
    args += ["--data-root", tmp_path / "data"]  # one dataset cache for every run
    code, _, err = _run_cli([*args, "--storage-path", tmp_path / "straight"], tmp_path)
    assert code == 0, err

    storage = tmp_path / "killed"
    gate = make_gate(tmp_path / "gate", 6)
    proc = _cli(
        [*args, "--storage-path", storage],
        tmp_path,
        {GATE_ENV: gate},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_for_gate(tmp_path / "gate") == (6, proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (run_dir,) = storage.iterdir()
    code, _, err = _run_cli([*args, "--storage-path", storage], tmp_path)
    assert code == 0, err
    assert f"resuming run {run_dir.name} from {run_dir / 'checkpoint_000006'}" in err
    straight = _final_models(tmp_path / "straight" / run_dir.name)
    resumed = _final_models(run_dir)
    for agent in ("prover", "verifier"):
        for key, value in straight[agent].items():
            assert torch.equal(value, resumed[agent][key]), (agent, key)
    final = read_checkpoint(list_checkpoints(run_dir)[-1])
    assert final.iteration == 10
    metrics = final.metadata["metrics"]
    assert {"mean_accuracy", "test_mean_accuracy", "prover_mean_episode_reward"} <= set(metrics)
    # The accuracy split by the true answer recombines into the whole.
    settings = ExperimentSettings(
        storage_path=str(tmp_path / "x"), data_root=str(tmp_path / "data")
    )
    test_y = build_scenario_instance(load_hyper_params(config), settings).datasets["test"].y
    share = test_y.float().mean().item()
    assert 0 < share < 1
    assert metrics["test_mean_accuracy"] == pytest.approx(
        share * metrics["test_mean_accuracy_isomorphic"]
        + (1 - share) * metrics["test_mean_accuracy_non_isomorphic"]
    )


def test_reinforce_runs_every_protocol_of_the_original(tmp_path):
    # 32 frames of 4 rounds: 8 episodes, 32 (round, episode) slots; minibatches of 16 and 2
    # epochs make 4 steps per agent an iteration, as PPO's loop does.
    for protocol in ("nip", "adp", "debate", "mnip", "merlin_arthur", "solo_verifier"):
        hp = load_hyper_params(
            tiny_rl_config(
                trainer="reinforce",
                interaction_protocol=protocol,
                debate_protocol={"max_message_rounds": 4},
                mnip_protocol={"max_message_rounds": 4},
                rl={
                    "frames_per_batch": 32,
                    "num_iterations": 2,
                    "num_epochs": 2,
                    "minibatch_size": 16,
                    "num_test_iterations": 1,
                },
                reinforce={
                    "use_advantage_and_critic": protocol == "nip",
                    "normalize_advantage": protocol in ("nip", "debate"),
                },
            )
        )
        settings = ExperimentSettings(storage_path=str(tmp_path), checkpoint_period=2)
        result = run_local(hp, settings)
        assert result.iteration == 2 and 0 <= result.metrics["test_mean_accuracy"] <= 1, protocol
        final = read_checkpoint(list_checkpoints(tmp_path / result.run_id)[-1])
        for name, optimizer in final.state["optimizers"].items():
            steps = max(int(state["step"]) for state in optimizer["state"].values())
            assert steps == 2 * 4, (protocol, name)


def test_advantages_are_standardised_over_the_acting_slots_only(tmp_path):
    hp = load_hyper_params(tiny_rl_config(trainer="reinforce"))
    settings = ExperimentSettings(
        storage_path=str(tmp_path), wandb_mode="disabled", progress_bar_factory=None
    )
    trainer = build_trainer(hp, settings)
    advantages = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])  # the last slot's agent did not act
    out = trainer.normalized(advantages, mask, mask.sum().float())
    std = (2 / 3) ** 0.5  # of 1, 2, 3 about their mean 2
    assert out[:3].tolist() == pytest.approx([-1 / std, 0.0, 1 / std], rel=1e-6)


def test_reinforce_entropy_bonus_keeps_every_policy_more_uncertain(tmp_path):
    rl = {"frames_per_batch": 32, "num_iterations": 4, "minibatch_size": 16}
    entropies = {}
    for eps in (0.0, 1.0):
        hp = load_hyper_params(
            tiny_rl_config(trainer="reinforce", rl=rl, reinforce={"entropy_eps": eps})
        )
        settings = ExperimentSettings(storage_path=str(tmp_path / str(eps)))
        entropies[eps] = run_local(hp, settings).metrics
    # Same seed, same rollouts at first: only the bonus parts the runs.
    for name in ("prover", "verifier"):
        assert entropies[1.0][f"{name}_entropy"] > entropies[0.0][f"{name}_entropy"], name


def test_pretrain_agents_runs_solo_agent_steps_first(tmp_path):
    rl = {"frames_per_batch": 32, "num_iterations": 3, "num_test_iterations": 1}
    solo = {"num_epochs": 1, "batch_size": 16}  # 90 training pairs: 5 steps
    runs = {}
    for pretrain in (True, False):
        hp = load_hyper_params(
            tiny_rl_config(trainer="vanilla_ppo", rl=rl, solo_agent=solo, pretrain_agents=pretrain)
        )
        assert hp.num_iterations == 3 + 5 * pretrain
        settings = ExperimentSettings(storage_path=str(tmp_path / str(pretrain)))
        runs[pretrain] = run_local(hp, settings)
    assert runs[True].iteration == 8 and "pretrain_verifier_accuracy" in runs[True].metrics
    assert "pretrain_verifier_accuracy" not in runs[False].metrics
    # RL never touches the solo head: it moved only where the agents were pretrained.
    heads = {
        pretrain: _final_models(tmp_path / str(pretrain) / result.run_id)["prover"]
        for pretrain, result in runs.items()
    }
    hp = load_hyper_params(tiny_rl_config(trainer="vanilla_ppo"))
    initial = build_scenario_instance(hp, ExperimentSettings(storage_path=str(tmp_path / "x")))
    init = initial.agents["prover"].state_dict()
    key = "solo_head.2.weight"
    assert torch.equal(heads[False][key], init[key])
    assert not torch.equal(heads[True][key], init[key])


@pytest.mark.timeout(600)
def test_ppo_on_two_ray_workers_follows_one_process_and_resumes_a_killed_worker_bitwise(
    ray_cluster, tmp_path
):
    # SGD: Adam would part the runners by O(lr) wherever a gradient is rounding noise.
    hp = load_hyper_params(tiny_rl_config(trainer="helpers.gated:GatedSgdPpoTrainer"))

    def settings(folder, **kw):
        return ExperimentSettings(
            storage_path=str(tmp_path / folder),
            data_root=str(tmp_path / "data"),
            checkpoint_period=3,
            progress_bar_factory=None,
            **kw,
        )

    reference = run(hp, settings("reference"), Scaling(num_workers=2))
    # Two workers each roll out half of every global batch (their draws are the batch's)
    # and average their gradients: the same curve and parameters as one process.
    alone = run_local(hp, settings("alone"))
    pairs = zip(
        list_checkpoints(tmp_path / "alone" / alone.run_id),
        list_checkpoints(tmp_path / "reference" / reference.run_id),
        strict=True,
    )
    for one, two in pairs:
        one, two = read_checkpoint(one), read_checkpoint(two)
        assert one.iteration == two.iteration
        assert one.metadata["metrics"].keys() == two.metadata["metrics"].keys()
        for key, value in one.metadata["metrics"].items():
            assert value == pytest.approx(two.metadata["metrics"][key], rel=1e-5, abs=1e-6), key
        for agent in ("prover", "verifier"):
            for key, value in one.state["models"][agent].items():
                assert torch.allclose(value, two.state["models"][agent][key], atol=1e-6), key

    gate = make_gate(tmp_path / "gate", 6)
    killed = []

    def kill_at_gate():
        iteration, pid = wait_for_gate(tmp_path / "gate")
        os.kill(pid, signal.SIGKILL)  # rank 0's worker process, right after checkpoint 6
        killed.append(iteration)

    killer = threading.Thread(target=kill_at_gate, daemon=True)
    killer.start()
    result = run(
        hp, settings("killed", max_failures=1, worker_env={GATE_ENV: gate}), Scaling(num_workers=2)
    )
    killer.join(timeout=5)
    assert killed == [6] and result.iteration == reference.iteration == 10
    final = read_checkpoint(list_checkpoints(tmp_path / "killed" / result.run_id)[-1])
    assert final.metadata["world_size"] == 2
    assert final.metadata["restored_from"]["iteration"] == 6  # resumed, not started over
    straight = _final_models(tmp_path / "reference" / reference.run_id)
    for agent in ("prover", "verifier"):
        for key, value in straight[agent].items():
            assert torch.equal(value, final.state["models"][agent][key]), (agent, key)


def test_rl_trainers_refuse_what_they_do_not_build():
    with pytest.raises(ConfigError, match="message_size=2: the RL trainers send one node"):
        load_hyper_params(tiny_rl_config(message_size=2))
    with pytest.raises(ConfigError, match="ppo.loss_type: Input should be 'clip'"):
        load_hyper_params(tiny_rl_config(ppo={"loss_type": "kl_penalty"}))


def test_each_agents_learning_rate_is_rl_lr_times_its_factor(tmp_path):
    agents = {"_default": TINY_AGENT, "prover": {**TINY_AGENT, "agent_lr_factor": 0.25}}
    hp = load_hyper_params(tiny_rl_config(trainer="vanilla_ppo", agents=agents))
    settings = ExperimentSettings(
        storage_path=str(tmp_path), wandb_mode="disabled", progress_bar_factory=None
    )
    trainer = build_trainer(hp, settings)
    lrs = {name: o.param_groups[0]["lr"] for name, o in trainer.optimizers.items()}
    assert lrs == {"prover": pytest.approx(0.25 * hp.rl.lr), "verifier": pytest.approx(hp.rl.lr)}
    # A restore (or a PBT exploit) pushes the hyper-parameters' rates again, factors included.
    for optimizer in trainer.optimizers.values():
        optimizer.param_groups[0]["lr"] = 1.0
    trainer._apply_hyper_params()
    assert {name: o.param_groups[0]["lr"] for name, o in trainer.optimizers.items()} == lrs
