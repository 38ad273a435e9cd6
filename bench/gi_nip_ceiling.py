"""What a two-round verifier could reach on graph isomorphism, alone and under ``nip``.

The verifier of ``examples/gi_ppo_nip.yaml`` has two GIN layers: it sees at most two rounds of
Weisfeiler-Lehman colour refinement (a GIN is no stronger than WL). This script computes, on
the test pairs of a dataset, the accuracy of an *ideal* such verifier:

- **alone**: it accepts when the two graphs' 2-round colour multisets are equal, so it is right
  on every isomorphic pair and on every non-isomorphic pair of WL score 1-2, and wrong on the
  rest (score 3 and more look isomorphic to it);
- **nip, one exchange**: it marks a node ``u`` (uniformly, in either graph), the prover answers
  with a node ``v`` of the other graph, and it accepts when the colour multisets with ``u`` and
  ``v`` marked are equal. An honest prover answers an isomorphic pair with ``u``'s image, so it
  is accepted; on a non-isomorphic pair the prover answers with any ``v`` that passes, and the
  pair is caught for the ``u`` that no ``v`` passes.

With ``--run RUN_DIR`` it also rolls the run's latest checkpoint out on the test pairs and
prints what the trained agents do: accuracy per WL score, and how often the prover's first
answer passes that check (the colour of ``u`` matched) and how often the verifier then accepts.
Usage::

    python bench/gi_nip_ceiling.py [--dataset eru10000] [--data-root DIR] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytrainer import ExperimentSettings, load_hyper_params
from raytrainer.build import build_trainer
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.scenarios.graph_isomorphism import GraphPairs, load_or_generate, wl_score

ROUNDS = 2  # the verifier's GIN layers


def graphs(pairs: GraphPairs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The two graphs of pair ``k`` as adjacency matrices, padding removed."""
    n0, n1 = pairs.num_nodes[k].tolist()
    a = pairs.adjacency[k].long().numpy()
    return a[0, :n0, :n0], a[1, :n1, :n1]


def answer_passes(g: tuple, u_graph: int, u: int, v: int) -> bool:
    """Whether marking ``u`` in graph ``u_graph`` and ``v`` in the other passes the check."""
    return wl_score(g[u_graph], g[1 - u_graph], ROUNDS, marks=(u, v)) == 0


def caught_share(g: tuple) -> float:
    """The share of the verifier's marks ``u`` (both graphs) that no prover answer passes."""
    marks = [(side, u) for side in (0, 1) for u in range(len(g[side]))]
    caught = 0
    for side, u in marks:
        caught += not any(answer_passes(g, side, u, v) for v in range(len(g[1 - side])))
    return caught / len(marks)


def ceilings(pairs: GraphPairs) -> None:
    by_score: dict[int, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for k in range(len(pairs)):
        score = int(pairs.wl_score[k])
        row = by_score[score]
        row[0] += 1
        if score == 0:  # isomorphic: both verifiers accept, rightly
            row[1] += 1
            row[2] += 1
            continue
        g = graphs(pairs, k)
        row[1] += wl_score(g[0], g[1], ROUNDS) > 0
        row[2] += caught_share(g)
    total = sum(r[0] for r in by_score.values())
    print("| WL score | test pairs | ideal verifier alone | ideal verifier, nip, one exchange |")
    print("|---|---|---|---|")
    for score, (count, alone, nip) in sorted(by_score.items()):
        name = "isomorphic" if score == 0 else str(score)
        print(f"| {name} | {count} | {alone / count:.2f} | {nip / count:.2f} |")
    alone = sum(r[1] for r in by_score.values()) / total
    nip = sum(r[2] for r in by_score.values()) / total
    print(f"| all | {total} | **{alone:.3f}** | **{nip:.3f}** |")


def trained_behaviour(run_dir: Path, data_root: str) -> None:
    checkpoint = read_checkpoint(list_checkpoints(run_dir)[-1])
    hp = load_hyper_params(checkpoint.hyper_params)
    settings = ExperimentSettings(
        storage_path=tempfile.mkdtemp(),
        data_root=data_root,
        wandb_mode="disabled",
        progress_bar_factory=None,
    )
    trainer = build_trainer(hp, settings)
    for name, model in trainer.models.items():
        trainer.unwrap_model(model).load_state_dict(checkpoint.state["models"][name])
    trainer.iteration = checkpoint.iteration
    pairs = trainer.test_pairs
    rollout = trainer.collect(pairs, trainer.draws(1, len(pairs)))
    decision, y, scores = rollout.final_decision, pairs.y, pairs.wl_score
    print(
        f"\n{run_dir} at iteration {checkpoint.iteration}: test accuracy "
        f"{(decision == y).float().mean():.3f}"
    )
    for score in sorted(set(scores.tolist())):
        at = scores == score
        print(
            f"  WL {score}: accuracy {(decision[at] == y[at]).float().mean():.2f}, "
            f"accepted {(decision[at] == 1).float().mean():.2f}"
        )
    names = list(trainer.models)
    if "prover" not in names or not trainer.env.schedule[0, names.index("verifier")]:
        return
    size = pairs.adjacency.shape[-1]
    u = rollout.nodes[0, names.index("verifier")]  # the verifier's first mark
    v = rollout.nodes[1, names.index("prover")]  # the prover's answer
    passes = torch.tensor(
        [
            (int(u[k]) // size != int(v[k]) // size)
            and answer_passes(
                graphs(pairs, k), int(u[k]) // size, int(u[k]) % size, int(v[k]) % size
            )
            for k in range(len(pairs))
        ]
    )
    for label, name in ((1, "isomorphic"), (0, "non-isomorphic")):
        at = y == label
        print(
            f"  {name}: the prover's answer passes {passes[at].float().mean():.2f}; accepted "
            f"{(decision[at & passes] == 1).float().mean():.2f} when it does, "
            f"{(decision[at & ~passes] == 1).float().mean():.2f} when not"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="eru10000")
    parser.add_argument("--data-root", default="raytrainer_runs", help="the dataset cache's root")
    parser.add_argument("--run", type=Path, help="a run folder to roll out on the test pairs")
    args = parser.parse_args()
    hp: Any = load_hyper_params({"trainer": "solo_agent", "dataset": args.dataset})
    pairs = load_or_generate(hp.dataset, hp.dataset_options, args.data_root)
    _, test = pairs.split(hp.test_size, hp.dataset_options.seed)
    print(f"{args.dataset}: {len(test)} test pairs, verifier of {ROUNDS} WL rounds\n")
    ceilings(test)
    if args.run:
        trained_behaviour(args.run, args.data_root)


if __name__ == "__main__":
    main()
