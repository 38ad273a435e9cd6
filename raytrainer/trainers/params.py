"""The hyper-parameters of the neural-interactive-proofs trainers, with the original's names.

One tree serves every trainer of the domain (a config for ``solo_agent`` may carry the other
trainers' sections); each trainer's subclass says how long a run is when ``num_iterations``
is not given.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from raytrainer.params import HyperParameters, ParamsModel
from raytrainer.scenarios.graph_isomorphism.agents import GraphIsomorphismAgentParameters
from raytrainer.scenarios.graph_isomorphism.data import DatasetOptions, resolve_options


class SoloAgentParameters(ParamsModel):
    """Supervised training of each agent on the pairs' labels (``solo_agent``)."""

    num_epochs: PositiveInt = Field(100, description="Passes over the training pairs.")
    batch_size: PositiveInt = Field(256, description="Global batch (divided across workers).")
    learning_rate: PositiveFloat = Field(0.001, description="Adam's learning rate.")


class RlParameters(ParamsModel):
    """What every RL trainer shares (``rl``), with the original project's names."""

    frames_per_batch: PositiveInt = Field(
        1000, description="Environment steps per iteration, across all workers."
    )
    num_iterations: PositiveInt = Field(1000, description="Rollout-and-update iterations.")
    num_epochs: PositiveInt = Field(4, description="Passes over each rollout (PPO).")
    minibatch_size: PositiveInt = Field(64, description="Environment steps per minibatch.")
    lr: PositiveFloat = Field(0.003, description="Adam's learning rate.")
    max_grad_norm: PositiveFloat = Field(1.0, description="Gradient-norm clip per agent.")
    gamma: float = Field(0.9, ge=0, le=1, description="Discount.")
    lmbda: float = Field(0.95, ge=0, le=1, description="GAE's lambda.")
    num_test_iterations: PositiveInt = Field(
        10, description="Test rollouts (of the test pairs) at each checkpoint and the end."
    )


class PpoParameters(ParamsModel):
    """The clipped PPO objective (``ppo``)."""

    loss_type: Literal["clip"] = Field(
        "clip", description="The surrogate objective; only the clipped one is built."
    )
    clip_epsilon: PositiveFloat = Field(0.2, description="Ratio clip range.")
    entropy_eps: float = Field(0.001, ge=0, description="Entropy bonus weight.")
    critic_coef: float = Field(1.0, ge=0, description="Value loss weight.")
    normalize_advantage: bool = Field(True, description="Normalise advantages per minibatch.")


class ReinforceParameters(ParamsModel):
    """REINFORCE (``reinforce``)."""

    use_advantage_and_critic: bool = Field(
        False, description="Use GAE advantages and train the value head (else plain returns)."
    )
    normalize_advantage: bool = Field(
        False, description="Standardise the returns or advantages per minibatch."
    )
    entropy_eps: float = Field(0.0, ge=0, description="Entropy bonus weight.")


class NipHyperParameters(HyperParameters):
    """The domain's tree: scenario, dataset, protocol sections, agents, trainer sections."""

    scenario: str = Field("graph_isomorphism", description="Registered scenario name.")
    dataset: str = Field(
        "eru10000", description="Dataset name: 'er1000', 'eru10000', or custom with num_pairs."
    )
    dataset_options: DatasetOptions = Field(default_factory=DatasetOptions)
    test_size: float = Field(0.2, gt=0, lt=1, description="Share of pairs held out for test.")
    d_representation: PositiveInt = Field(16, description="Width of every agent's output.")
    message_size: PositiveInt = Field(1, description="Nodes per message.")
    pretrain_agents: bool = Field(
        False,
        description="RL trainers: train every agent with solo_agent first (its section sets "
        "how long), as the run's first iterations.",
    )
    num_iterations: PositiveInt | None = Field(  # type: ignore[assignment]
        None, description="Training iterations; default: from the trainer's own section."
    )
    agents: dict[str, GraphIsomorphismAgentParameters] = Field(  # type: ignore[assignment]
        default_factory=lambda: {"_default": GraphIsomorphismAgentParameters()},
        description="Per-agent sections keyed by agent name; '_default' applies to all.",
    )
    solo_agent: SoloAgentParameters = Field(default_factory=SoloAgentParameters)
    rl: RlParameters = Field(default_factory=RlParameters)
    ppo: PpoParameters = Field(default_factory=PpoParameters)
    reinforce: ReinforceParameters = Field(default_factory=ReinforceParameters)

    @model_validator(mode="after")
    def _run_length(self) -> NipHyperParameters:
        if self.num_iterations is None:
            self.num_iterations = self.derived_num_iterations()
        return self

    def num_train_pairs(self) -> int:
        """Pairs in the training split."""
        pairs = resolve_options(self.dataset, self.dataset_options).num_pairs
        assert pairs is not None
        return pairs - round(pairs * self.test_size)

    def derived_num_iterations(self) -> int:
        """The run's length when ``num_iterations`` is not given; trainer subclasses say."""
        raise ValueError("num_iterations is required for this trainer")

    def steps_per_epoch(self) -> int:
        """Full ``solo_agent.batch_size`` batches per pass over the training pairs."""
        return max(self.num_train_pairs() // self.solo_agent.batch_size, 1)

    def solo_steps(self) -> int:
        """``solo_agent.num_epochs`` × steps per epoch."""
        return self.solo_agent.num_epochs * self.steps_per_epoch()


class SoloAgentHyperParameters(NipHyperParameters):
    """``solo_agent``'s tree: an iteration is one optimiser step on one global batch.

    ``num_iterations`` defaults to ``solo_agent.num_epochs`` full epochs, and ``batch_size``
    follows ``solo_agent.batch_size``.
    """

    @model_validator(mode="after")
    def _batch_from_section(self) -> SoloAgentHyperParameters:
        section = self.solo_agent.batch_size
        if "batch_size" in self.model_fields_set and self.batch_size != section:
            raise ValueError(
                f"batch_size={self.batch_size} differs from solo_agent.batch_size={section}; "
                "set solo_agent.batch_size only"
            )
        if self.batch_size != section:
            self.batch_size = section
        return self

    def derived_num_iterations(self) -> int:
        """``solo_agent.num_epochs`` × steps per epoch."""
        return self.solo_steps()


class RlHyperParameters(NipHyperParameters):
    """The RL trainers' tree.

    An iteration is one rollout of ``rl.frames_per_batch`` steps and its update;
    ``num_iterations`` defaults to ``rl.num_iterations``, after the ``solo_agent`` steps of
    ``pretrain_agents``.
    """

    @model_validator(mode="after")
    def _one_node_per_message(self) -> RlHyperParameters:
        if self.message_size != 1:
            raise ValueError(
                f"message_size={self.message_size}: the RL trainers send one node per message "
                "(the environment takes more; the policies do not yet)"
            )
        return self

    def pretrain_steps(self) -> int:
        """The run's first iterations, supervised, when ``pretrain_agents``."""
        return self.solo_steps() if self.pretrain_agents else 0

    def derived_num_iterations(self) -> int:
        """``rl.num_iterations`` plus the pretraining steps."""
        return self.rl.num_iterations + self.pretrain_steps()
