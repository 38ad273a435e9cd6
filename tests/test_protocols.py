"""Interaction protocols against small hand-worked episodes: turns, visibility, rewards."""

from __future__ import annotations

import pytest
import torch

from raytrainer import ConfigError, load_hyper_params
from raytrainer.protocols import CONTINUE, PROTOCOLS, ProtocolEnvironment, build_protocol_handler

ACC, REJ = 1, 0


def _handler(tiny_config, protocol, **sections):
    return build_protocol_handler(
        load_hyper_params({**tiny_config, "interaction_protocol": protocol, **sections})
    )


def _turns(handler):
    return [handler.active_agents(r) for r in range(handler.max_message_rounds)]


def _env(tiny_config, protocol, batch=1, slots=4, y=1, seed=0, **sections):
    env = ProtocolEnvironment(_handler(tiny_config, protocol, **sections))
    episodes = env.reset(
        torch.full((batch,), y),
        torch.ones(batch, slots, dtype=torch.bool),
        torch.Generator().manual_seed(seed),
    )
    return env, episodes


def _step(env, episodes, decision=CONTINUE, messages=None):
    batch = len(episodes.y)
    messages = (
        torch.zeros(batch, len(env.agent_names), dtype=torch.long) if messages is None else messages
    )
    return env.step(episodes, messages, torch.full((batch,), decision))


def test_every_protocol_of_the_original_is_registered():
    assert set(PROTOCOLS.names()) >= {
        "nip",
        "adp",
        "debate",
        "mnip",
        "merlin_arthur",
        "solo_verifier",
        "solo",
    }


def test_who_speaks_when(tiny_config):
    nip = _handler(tiny_config, "nip", nip_protocol={"max_message_rounds": 4})
    assert _turns(nip) == [("verifier",), ("prover",), ("verifier",), ("prover",)]
    nip_prover_first = _handler(
        tiny_config,
        "nip",
        protocol_common={"verifier_first": False},
        nip_protocol={"max_message_rounds": 3},
    )
    assert _turns(nip_prover_first) == [("prover",), ("verifier",), ("prover",)]
    assert _turns(_handler(tiny_config, "adp")) == [("prover",), ("verifier",)]
    debate = _handler(tiny_config, "debate", debate_protocol={"max_message_rounds": 4})
    assert _turns(debate) == [("verifier",), ("prover0", "prover1")] * 2
    sequential = _handler(
        tiny_config,
        "debate",
        debate_protocol={"max_message_rounds": 6, "sequential": True, "prover0_first": False},
    )
    assert _turns(sequential) == [("verifier",), ("prover1",), ("prover0",)] * 2
    assert _turns(_handler(tiny_config, "merlin_arthur")) == [("prover0", "prover1"), ("verifier",)]
    assert _turns(_handler(tiny_config, "solo_verifier")) == [("verifier",)]
    with pytest.raises(ValueError, match="round 4 is outside 0..3"):
        nip.active_agents(4)


def test_bad_rounds_name_the_field(tiny_config):
    with pytest.raises(ConfigError, match="nip_protocol: Value error, min_message_rounds=3"):
        _handler(
            tiny_config, "nip", nip_protocol={"max_message_rounds": 3, "min_message_rounds": 3}
        )
    with pytest.raises(ConfigError, match="has no verifier"):
        ProtocolEnvironment(_handler(tiny_config, "solo"))


def test_nip_episode_decisions_rewards_and_termination(tiny_config):
    env, ep = _env(
        tiny_config,
        "nip",
        batch=3,
        y=1,
        nip_protocol={"max_message_rounds": 4, "min_message_rounds": 1},
        protocol_common={"verifier_no_guess_reward": 0.05},
    )
    # Round 0 (verifier's): before min_message_rounds an accept is read as "continue".
    ep, rewards = _step(env, ep, decision=ACC)
    assert ep.round.tolist() == [1, 1, 1] and not ep.done.any()
    assert rewards[:, 1].tolist() == pytest.approx([0.05] * 3) and rewards[:, 0].eq(0).all()
    # Round 1 (prover's): the verifier is not active; its decision is ignored.
    assert not env.may_decide(ep).any()
    ep, rewards = _step(env, ep, decision=REJ)
    assert not ep.done.any() and rewards.eq(0).all()
    # Round 2: episode 0 accepts (correct), 1 rejects (wrong), 2 continues.
    assert env.may_decide(ep).all()
    ep, rewards = env.step(
        ep, torch.zeros(3, 2, dtype=torch.long), torch.tensor([ACC, REJ, CONTINUE])
    )
    assert ep.done.tolist() == [True, True, False] and ep.decision.tolist() == [ACC, REJ, -1]
    assert torch.allclose(rewards, torch.tensor([[1, 1], [0, -1], [0, 0.05]]))
    # Round 3 is the last (the prover's): episode 2 ends undecided; done ones get nothing more.
    ep, rewards = _step(env, ep, decision=ACC)
    assert ep.done.all() and ep.decision.tolist() == [ACC, REJ, -1]
    assert rewards.tolist() == [[0, 0], [0, 0], [0, -1]]
    assert ep.round.tolist() == [3, 3, 4]


def test_messages_land_in_the_round_and_channel_each_agent_sees(tiny_config):
    # mnip: provers speak together in round 1, each on its own channel, each sees only its own.
    env, ep = _env(tiny_config, "mnip", slots=5, mnip_protocol={"max_message_rounds": 4})
    ep, _ = _step(env, ep, messages=torch.tensor([[0, 0, 4]]))  # round 0: the verifier sends 4
    ep, _ = _step(env, ep, messages=torch.tensor([[1, 3, 0]]))  # round 1: prover0 1, prover1 3
    history = ep.message_history[0]  # [R, C, S]
    assert history[0, :, 4].tolist() == [1, 1]  # the verifier writes both channels
    assert history[1, 0].nonzero().flatten().tolist() == [1]
    assert history[1, 1].nonzero().flatten().tolist() == [3]
    assert env.observe(ep, "prover0")[0, :, 1].sum() == 0  # prover1's channel is hidden
    assert env.observe(ep, "prover0")[0, 1, 0, 1] == 1
    assert torch.equal(env.observe(ep, "verifier"), ep.message_history)
    # debate: the same messages, every channel visible to every agent.
    env, ep = _env(tiny_config, "debate", slots=5)
    ep, _ = _step(env, ep)
    ep, _ = _step(env, ep, messages=torch.tensor([[1, 3, 0]]))
    assert torch.equal(env.observe(ep, "prover0"), ep.message_history)
    padded = env.reset(torch.ones(1), torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="valid_messages excludes"):
        env.step(padded, torch.tensor([[0, 0, 2]]), torch.tensor([CONTINUE]))
    with pytest.raises(ValueError, match="valid_messages excludes"):
        env.step(padded, torch.tensor([[0, 0, 3]]), torch.tensor([CONTINUE]))


def test_randomized_channel_order_moves_a_prover_to_the_other_channel(tiny_config):
    orders = set()
    for seed in range(8):
        env, ep = _env(
            tiny_config, "debate", seed=seed, debate_protocol={"randomize_channel_order": True}
        )
        ep, _ = _step(env, ep)
        ep, _ = _step(env, ep, messages=torch.tensor([[1, 3, 0]]))
        channel_of_prover0 = int(ep.message_history[0, 1, :, 1].argmax())
        assert channel_of_prover0 == int(ep.channel_perm[0, 0])
        orders.add(channel_of_prover0)
    assert orders == {0, 1}


@pytest.mark.parametrize(
    ("protocol", "y", "decision", "expected"),
    [
        ("debate", 0, REJ, [1, 0, 1]),  # prover0 argues reject, prover1 accept
        ("debate", 0, ACC, [0, 1, -1]),
        ("mnip", 1, ACC, [1, 1, 1]),  # both provers want accept
        ("mnip", 1, REJ, [0, 0, -1]),
        ("adp", 0, ACC, [1, -1]),
    ],
)
def test_decision_rewards_flow_to_the_right_agents(tiny_config, protocol, y, decision, expected):
    env, ep = _env(tiny_config, protocol, y=y)
    while not env.may_decide(ep).all():
        ep, _ = _step(env, ep)
    ep, rewards = _step(env, ep, decision=decision)
    assert ep.done.all() and rewards[0].tolist() == pytest.approx(expected)


def test_stance_flip_and_shared_reward(tiny_config):
    env, ep = _env(
        tiny_config, "debate", batch=16, y=1, protocol_common={"randomize_prover_stance": True}
    )
    assert 0 < ep.stance.sum() < 16  # drawn per episode
    ep, _ = _step(env, ep, decision=ACC)  # round 0 is before min_message_rounds
    ep, _ = _step(env, ep)
    ep, rewards = _step(env, ep, decision=ACC)
    flipped = ep.stance.bool()
    assert rewards[flipped, 0].eq(1).all() and rewards[flipped, 1].eq(0).all()
    assert rewards[~flipped, 0].eq(0).all() and rewards[~flipped, 1].eq(1).all()
    env, ep = _env(tiny_config, "nip", y=0, protocol_common={"shared_reward": True})
    ep, _ = _step(env, ep)
    ep, _ = _step(env, ep)
    ep, rewards = _step(env, ep, decision=ACC)  # wrong: verifier -1, and so the prover
    assert rewards[0].tolist() == [-1, -1]


def test_merlin_arthur_one_drawn_prover_speaks(tiny_config):
    env, ep = _env(tiny_config, "merlin_arthur", batch=32, y=0)
    active = env.active_mask(ep)
    assert active[:, :2].sum(1).eq(1).all() and not active[:, 2].any()
    assert torch.equal(active[:, 1], ep.speaker.bool())
    ep, _ = _step(env, ep, messages=torch.full((32, 3), 2))
    assert ep.message_history[:, 0, 0, 2].eq(1).all()  # one shared channel
    ep, rewards = _step(env, ep, decision=REJ)
    assert ep.done.all() and rewards.tolist() == [[1.0, 0.0, 1.0]] * 32


def test_solo_verifier_decides_in_its_only_round(tiny_config):
    env, ep = _env(tiny_config, "solo_verifier", batch=2, y=1)
    ep, rewards = env.step(ep, torch.zeros(2, 1, dtype=torch.long), torch.tensor([ACC, CONTINUE]))
    assert ep.done.all() and rewards[:, 0].tolist() == [1, -1]  # undecided: terminated
    assert ep.message_history.sum() == 0
