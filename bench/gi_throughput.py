"""Throughput of the graph-isomorphism domain: batched protocol rollouts and solo training.

Prints, from one run of this script:
- environment steps per second of a batched ``nip`` rollout with random policies (one step is
  one round of one episode), with the agents' forward passes and without;
- ``solo_agent`` training samples per second under ``run_local`` (progress bar, live metrics,
  a checkpoint every 100 iterations) vs. the same training steps called directly on a trainer
  built the same way, and their ratio;
- ``vanilla_ppo`` (nip, 1,024 frames an iteration) frames per second the same two ways, and the
  split of an iteration into rollout, update (GAE included) and checkpoint.

Medians over interleaved repeats. Usage:
python bench/gi_throughput.py [--repeats 5] [--iterations 200] [--episodes 1024]
    [--ppo-iterations 20] [--parts rollout solo ppo]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from raytrainer import ExperimentSettings, build_trainer, load_hyper_params, run_local
from raytrainer.protocols import ProtocolEnvironment
from raytrainer.scenario import build_scenario_instance
from raytrainer.trainers import SoloAgentTrainer, VanillaPpoTrainer

TRAIN_SECONDS: list[float] = []
AGENTS = {
    "_default": {"num_gnn_layers": 5},
    "verifier": {"num_gnn_layers": 2, "num_transformer_layers": 1},
}


def config(iterations: int) -> dict:
    return {
        "trainer": "solo_agent",
        "scenario": "graph_isomorphism",
        "interaction_protocol": "nip",
        "dataset": "er1000",
        "agents": AGENTS,
        "num_iterations": iterations,
        "solo_agent": {"batch_size": 256},
    }


def rollout_steps_per_second(storage: str, episodes: int, with_agents: bool) -> float:
    """Roll out ``episodes`` nip episodes to the end with random messages and decisions."""
    hp = load_hyper_params(config(1))
    instance = build_scenario_instance(hp, ExperimentSettings(storage_path=storage))
    env = ProtocolEnvironment(instance.protocol_handler)
    pairs = instance.datasets["train"]
    pairs = pairs[torch.arange(episodes) % len(pairs)]
    adjacency, node_mask = pairs.adjacency.float(), pairs.node_mask
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    episodes_state = env.reset(pairs.y, node_mask.flatten(1), generator)
    steps = 0
    with torch.no_grad():
        while not episodes_state.done.all():
            if with_agents:
                for name, agent in instance.agents.items():
                    agent(adjacency, node_mask, env.observe(episodes_state, name))
            steps += int((~episodes_state.done).sum())
            messages = torch.multinomial(
                node_mask.flatten(1).float(), len(env.agent_names), replacement=True
            )
            decisions = torch.randint(0, 3, (episodes,), generator=generator)
            episodes_state, _ = env.step(episodes_state, messages, decisions)
    return steps / (time.perf_counter() - start)


def direct_samples_per_second(storage: str, iterations: int, repeat: int) -> float:
    """The same training steps, called in a plain loop on a trainer built by raytrainer."""
    hp = load_hyper_params({**config(iterations), "seed": repeat})
    settings = ExperimentSettings(storage_path=storage, wandb_mode="disabled")
    trainer = build_trainer(hp, settings)
    assert isinstance(trainer, SoloAgentTrainer)
    steps_per_epoch = hp.steps_per_epoch()
    start = time.perf_counter()
    while trainer.iteration < iterations:
        trainer.training_step()
        if trainer.iteration % steps_per_epoch == 0:
            trainer.record_metrics(trainer.evaluate())
    elapsed = time.perf_counter() - start
    trainer.close()
    return iterations * hp.batch_size / elapsed


class TimedSoloAgentTrainer(SoloAgentTrainer):
    """``solo_agent``, timing its ``train()``: the runner's start-up is left out."""

    def train(self) -> None:
        start = time.perf_counter()
        super().train()
        TRAIN_SECONDS.append(time.perf_counter() - start)


def raytrainer_samples_per_second(storage: str, iterations: int, repeat: int) -> float:
    """``run_local`` of the same config: progress bar, live metrics, checkpoints every 100."""
    hp = load_hyper_params(
        {**config(iterations), "trainer": "__main__:TimedSoloAgentTrainer", "seed": repeat}
    )
    settings = ExperimentSettings(
        storage_path=storage, wandb_mode="disabled", checkpoint_period=100
    )
    run_local(hp, settings)
    return iterations * hp.batch_size / TRAIN_SECONDS[-1]


def ppo_config(iterations: int) -> dict:
    return {
        **config(iterations),
        "trainer": "vanilla_ppo",
        "num_iterations": iterations,
        "rl": {"frames_per_batch": 1024, "num_epochs": 4, "minibatch_size": 256},
    }


def direct_ppo(storage: str, iterations: int) -> tuple[float, dict[str, float]]:
    """PPO iterations called directly; frames/s and seconds per iteration in each part."""
    hp = load_hyper_params(ppo_config(iterations))
    settings = ExperimentSettings(
        storage_path=storage, data_root=os.path.dirname(storage), wandb_mode="disabled"
    )
    trainer = build_trainer(hp, settings)
    assert isinstance(trainer, VanillaPpoTrainer)
    parts = {"rollout": 0.0, "update": 0.0, "checkpoint": 0.0}
    frames = 0
    for _ in range(iterations):
        start = time.perf_counter()
        draws = trainer.draws(0, trainer.episodes_per_batch)
        pairs = trainer.train_pairs[draws.integers(len(trainer.train_pairs))]
        rollout = trainer.collect(pairs, draws)
        middle = time.perf_counter()
        trainer.update(rollout, *trainer.advantages(rollout), draws)
        trainer.evaluate(rollout)  # the metrics train() records
        trainer.iteration += 1
        end = time.perf_counter()
        trainer.save_checkpoint(log=False)
        parts["rollout"] += middle - start
        parts["update"] += end - middle
        parts["checkpoint"] += time.perf_counter() - end
        frames += int(rollout.alive.sum())
    trainer.close()
    return frames / (parts["rollout"] + parts["update"]), {
        k: v / iterations for k, v in parts.items()
    }


class TimedPpoTrainer(VanillaPpoTrainer):
    """``vanilla_ppo``, timing its ``train()`` and counting the frames it rolls out."""

    frames = 0

    def collect(self, pairs, draws):  # noqa: ANN001, ANN201
        rollout = super().collect(pairs, draws)
        TimedPpoTrainer.frames += int(rollout.alive.sum())  # training rollouts: test() is off
        return rollout

    def test(self) -> dict[str, float]:
        return {}  # the direct loop runs no test rollouts either

    def train(self) -> None:
        start = time.perf_counter()
        super().train()
        TRAIN_SECONDS.append(time.perf_counter() - start)


def raytrainer_ppo(storage: str, iterations: int) -> float:
    """``run_local`` of the same PPO config, a checkpoint every 10 iterations: frames/s."""
    TimedPpoTrainer.frames = 0
    hp = load_hyper_params({**ppo_config(iterations), "trainer": "__main__:TimedPpoTrainer"})
    settings = ExperimentSettings(
        storage_path=storage,
        data_root=os.path.dirname(storage),
        wandb_mode="disabled",
        checkpoint_period=10,
    )
    run_local(hp, settings)
    return TimedPpoTrainer.frames / TRAIN_SECONDS[-1]


def _pairs(direct: list[float], runner: list[float]) -> str:
    """Each repeat's two measurements, direct/raytrainer."""
    return ", ".join(f"{d:,.0f}/{r:,.0f}" for d, r in zip(direct, runner, strict=True))


def rollout_part(root: str, args: argparse.Namespace) -> None:
    env_only = [rollout_steps_per_second(root, args.episodes, False) for _ in range(3)]
    with_agents = [rollout_steps_per_second(root, args.episodes, True) for _ in range(3)]
    print(f"nip rollout, {args.episodes} episodes, random policies:")
    print(f"  environment only      {statistics.median(env_only):>12,.0f} steps/s")
    print(f"  with agents' forwards {statistics.median(with_agents):>12,.0f} steps/s")


def solo_part(root: str, args: argparse.Namespace) -> None:
    direct, runner = [], []
    for repeat in range(args.repeats):  # interleaved; both read the dataset cached in root
        # The same seed (the same batches) both ways; which goes first alternates, so a
        # drift in the machine's speed falls on both alike.
        for way in ("direct", "raytrainer")[:: 1 if repeat % 2 == 0 else -1]:
            if way == "direct":
                direct.append(direct_samples_per_second(root, args.iterations, repeat))
            else:
                runner.append(raytrainer_samples_per_second(root, args.iterations, repeat))
    d, r = statistics.median(direct), statistics.median(runner)
    print(f"solo_agent (prover + verifier), {args.iterations} iterations of 256 pairs:")
    print(f"  called directly       {d:>12,.0f} samples/s")
    print(f"  raytrainer run_local  {r:>12,.0f} samples/s")
    print(f"  ratio raytrainer/direct {r / d:.3f}")
    print("  each run, in order: " + _pairs(direct, runner))


def ppo_part(root: str, args: argparse.Namespace) -> None:
    direct_fps, runner_fps, splits = [], [], []
    for repeat in range(args.repeats):  # interleaved, alternating which goes first
        for way in ("direct", "raytrainer")[:: 1 if repeat % 2 == 0 else -1]:
            if way == "direct":
                fps, split = direct_ppo(f"{root}/ppo-direct{repeat}", args.ppo_iterations)
                direct_fps.append(fps)
                splits.append(split)
            else:
                runner_fps.append(raytrainer_ppo(f"{root}/ppo-runs{repeat}", args.ppo_iterations))
    d, r = statistics.median(direct_fps), statistics.median(runner_fps)
    split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    print(f"vanilla_ppo (nip), {args.ppo_iterations} iterations of 1,024 frames:")
    print(f"  called directly       {d:>12,.0f} frames/s")
    print(f"  raytrainer run_local  {r:>12,.0f} frames/s")
    print(f"  ratio raytrainer/direct {r / d:.3f}")
    print("  each run, in order: " + _pairs(direct_fps, runner_fps))
    print(
        "  one iteration: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in split.items())
        + " (checkpoint: every iteration here; every 10 under run_local)"
    )


PARTS = {"rollout": rollout_part, "solo": solo_part, "ppo": ppo_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--ppo-iterations", type=int, default=20)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        rollout_steps_per_second(root, 8, False)  # generates the dataset once
        for part in args.parts:
            PARTS[part](root, args)


if __name__ == "__main__":
    main()
