"""The hyper-parameters of the neural-interactive-proofs trainers, with the original's names.

One tree serves every trainer of the domain (a config for ``solo_agent`` may carry the other
trainers' sections); each trainer's subclass says how long a run is when ``num_iterations``
is not given.
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from raytrainer.params import HyperParameters, ParamsModel
from raytrainer.scenarios.graph_isomorphism.agents import GraphIsomorphismAgentParameters
from raytrainer.scenarios.graph_isomorphism.data import DatasetOptions, resolve_options


class SoloAgentParameters(ParamsModel):
    """Supervised training of each agent on the pairs' labels (``solo_agent``)."""

    num_epochs: PositiveInt = Field(100, description="Passes over the training pairs.")
    batch_size: PositiveInt = Field(256, description="Global batch (divided across workers).")
    learning_rate: PositiveFloat = Field(0.001, description="Adam's learning rate.")


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
    num_iterations: PositiveInt | None = Field(  # type: ignore[assignment]
        None, description="Training iterations; default: from the trainer's own section."
    )
    agents: dict[str, GraphIsomorphismAgentParameters] = Field(  # type: ignore[assignment]
        default_factory=lambda: {"_default": GraphIsomorphismAgentParameters()},
        description="Per-agent sections keyed by agent name; '_default' applies to all.",
    )
    solo_agent: SoloAgentParameters = Field(default_factory=SoloAgentParameters)

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

    def steps_per_epoch(self) -> int:
        """Full global batches per pass over the training pairs."""
        return max(self.num_train_pairs() // self.solo_agent.batch_size, 1)

    def derived_num_iterations(self) -> int:
        """``solo_agent.num_epochs`` × steps per epoch."""
        return self.solo_agent.num_epochs * self.steps_per_epoch()
