"""A minimal real trainer: an MLP learns a noisy non-linear regression it generates itself.

Written against raytrainer's public API only. Run it with::

    raytrainer run examples/regression.yaml --local
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, PositiveInt
from torch import nn
from torch.utils.data import TensorDataset

from raytrainer import (
    ExperimentSettings,
    HyperParameters,
    ScenarioInstance,
    Trainer,
    attach_progress_bar,
)
from raytrainer.protocols import build_protocol_handler


class RegressionParams(HyperParameters):
    """Hyper-parameters of the regression example."""

    num_samples: PositiveInt = Field(4096, description="Size of the generated dataset.")
    input_dim: PositiveInt = Field(8, description="Features per sample.")
    hidden_dim: PositiveInt = Field(64, description="Width of the MLP's hidden layers.")
    noise: float = Field(0.05, ge=0, description="Std of the label noise.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout probability.")


def build_regression_scenario(
    hyper_params: RegressionParams, settings: ExperimentSettings
) -> ScenarioInstance:
    """Generate ``y = sin(x @ w) + noise`` from the seed, and one MLP agent."""
    generator = torch.Generator().manual_seed(hyper_params.seed)
    x = torch.randn(hyper_params.num_samples, hyper_params.input_dim, generator=generator)
    w = torch.randn(hyper_params.input_dim, 1, generator=generator)
    y = torch.sin(x @ w) + hyper_params.noise * torch.randn(
        hyper_params.num_samples, 1, generator=generator
    )
    model = nn.Sequential(
        nn.Linear(hyper_params.input_dim, hyper_params.hidden_dim),
        nn.ReLU(),
        nn.Dropout(hyper_params.dropout),
        nn.Linear(hyper_params.hidden_dim, hyper_params.hidden_dim),
        nn.ReLU(),
        nn.Linear(hyper_params.hidden_dim, 1),
    )
    return ScenarioInstance(
        protocol_handler=build_protocol_handler(hyper_params),
        agents={"agent": model},
        datasets={"train": TensorDataset(x, y)},
    )


class RegressionTrainer(Trainer):
    """Plain supervised training of the single agent with AdamW on an MSE loss."""

    hyper_params_cls = RegressionParams

    def _build(self) -> None:
        params = self.hyper_params.agent_params("agent")
        self.model = self.prepare_model(self.scenario_instance.agents["agent"])
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
        )
        self.x, self.y = (
            t.to(self.device) for t in self.scenario_instance.datasets["train"].tensors
        )
        self.sampler = self.make_sampler(len(self.x))

    def _state_dict(self) -> dict[str, Any]:
        return {
            "model": self.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        self.unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])

    def _apply_hyper_params(self) -> None:
        # A loaded optimizer state carries its old learning rate; the hyper-parameters win
        # (after a PBT exploit they hold the mutated value).
        params = self.hyper_params.agent_params("agent")
        for group in self.optimizer.param_groups:
            group["lr"] = params.learning_rate
            group["weight_decay"] = params.weight_decay

    def training_step(self) -> None:
        """One optimiser step on this rank's share of the next global batch."""
        idx = self.sampler.next_batch()
        loss = nn.functional.mse_loss(self.model(self.x[idx]), self.y[idx])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        self.record_metrics(loss=loss.item())

    @attach_progress_bar(lambda self: self.hyper_params.num_iterations)
    def train(self, progress) -> None:
        self.model.train()
        while self.iteration < self.hyper_params.num_iterations:
            self.training_step()
            progress.step()
            if (
                self.iteration % self.settings.checkpoint_period == 0
                or self.iteration == self.hyper_params.num_iterations
            ):
                self.save_checkpoint()
