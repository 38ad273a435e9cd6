"""``solo_agent``: supervised training of each agent to tell isomorphic pairs apart.

Every agent's body and solo head (:class:`SoloClassifier`) learns the pair's label with Adam
on the same global batches; no messages are exchanged. It is the original project's
pretraining step, and a baseline: how much does an agent see on its own?

An iteration is one optimiser step on one global batch (``solo_agent.batch_size``, divided
across Ray workers); each agent's test accuracy is measured at every epoch's end and before
every checkpoint, and at the end also per WL score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from raytrainer.progress import attach_progress_bar
from raytrainer.scenarios.graph_isomorphism import GraphPairs, SoloClassifier
from raytrainer.trainer import Trainer, register_trainer
from raytrainer.trainers.params import SoloAgentHyperParameters


# ALGO LOGIC: one supervised step ----------------------------------------------------------
def solo_step(
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    pairs: GraphPairs,
) -> dict[str, float]:
    """One Adam step of every agent's body and solo head on ``pairs``; return its metrics.

    ``models`` map agent names to modules returning ``[B, 2]`` logits (a
    :class:`SoloClassifier`), or dicts holding them as ``solo_logits`` (a whole agent).
    """
    adjacency, node_mask = pairs.adjacency.float(), pairs.node_mask
    metrics = {}
    for name, model in models.items():
        model.train()
        logits = model(adjacency, node_mask)
        logits = logits["solo_logits"] if isinstance(logits, dict) else logits
        loss = nn.functional.cross_entropy(logits, pairs.y)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        metrics[f"{name}_loss"] = loss.item()
        metrics[f"{name}_accuracy"] = (logits.argmax(-1) == pairs.y).float().mean().item()
    return metrics


@register_trainer("solo_agent")
class SoloAgentTrainer(Trainer):
    """Supervised training of every agent of the protocol on the scenario's labels."""

    hyper_params_cls = SoloAgentHyperParameters
    hyper_params: SoloAgentHyperParameters

    def _build(self) -> None:
        datasets = self.scenario_instance.datasets
        self.train_pairs: GraphPairs = datasets["train"].to(self.device)
        self.test_pairs: GraphPairs = datasets["test"].to(self.device)
        self.models = {
            name: self.prepare_model(SoloClassifier(agent))
            for name, agent in self.scenario_instance.agents.items()
        }
        self.optimizers = {
            name: torch.optim.Adam(
                model.parameters(), lr=self.hyper_params.solo_agent.learning_rate
            )
            for name, model in self.models.items()
        }
        self.sampler = self.make_sampler(len(self.train_pairs))

    def _state_dict(self) -> dict[str, Any]:
        return {
            "models": {n: self.unwrap_model(m).state_dict() for n, m in self.models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "sampler": self.sampler.state_dict(),
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        for name, model in self.models.items():
            self.unwrap_model(model).load_state_dict(state["models"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
        self.sampler.load_state_dict(state["sampler"])

    def _apply_hyper_params(self) -> None:
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.hyper_params.solo_agent.learning_rate

    def training_step(self) -> None:
        """One Adam step of every agent on this rank's share of the next global batch."""
        pairs = self.train_pairs[self.sampler.next_batch()]
        self.record_metrics(solo_step(self.models, self.optimizers, pairs))
        self.iteration += 1

    @torch.no_grad()
    def evaluate(self, by_wl_score: bool = False) -> dict[str, float]:
        """Test accuracy of every agent (and, with ``by_wl_score``, per WL score)."""
        pairs = self.test_pairs
        metrics = {}
        for name, model in self.models.items():
            module = self.unwrap_model(model)
            module.eval()
            correct = torch.cat(
                [
                    module(chunk.adjacency.float(), chunk.node_mask).argmax(-1) == chunk.y
                    for chunk in (pairs[i : i + 1024] for i in range(0, len(pairs), 1024))
                ]
            ).float()
            metrics[f"{name}_test_accuracy"] = correct.mean().item()
            if by_wl_score:
                for score in pairs.wl_score.unique().tolist():
                    label = "isomorphic" if score == 0 else f"wl{score}"
                    chosen = pairs.wl_score == score
                    metrics[f"{name}_test_accuracy_{label}"] = correct[chosen].mean().item()
        return metrics

    @attach_progress_bar(lambda self: self.hyper_params.num_iterations)
    def train(self, progress) -> None:
        """Train to ``num_iterations``, checkpointing every ``checkpoint_period`` iterations.

        Test accuracy is measured at every epoch's end and before every checkpoint, so each
        report (a sweep's metric included) carries it.
        """
        total = self.hyper_params.num_iterations
        steps_per_epoch = self.hyper_params.steps_per_epoch()
        while self.iteration < total:
            self.training_step()
            save = self.iteration % self.settings.checkpoint_period == 0
            if save or self.iteration % steps_per_epoch == 0 or self.iteration == total:
                self.record_metrics(self.evaluate(by_wl_score=self.iteration == total))
                self.record_metrics(epoch=self.iteration // steps_per_epoch)
            progress.step()
            if save or self.iteration == total:
                self.save_checkpoint()
