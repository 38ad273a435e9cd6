"""The hyper-parameter tree: everything that changes the result of a run.

A trainer declares its own subclass of :class:`HyperParameters` (``hyper_params_cls``) to add
typed sections; the loader validates a whole config against that class, so an unknown key, a
wrong type or a bad value fails before any Ray resource is taken, naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from raytrainer._version import __version__
from raytrainer.params.versions import convert, register_conversion

DEFAULT_AGENT = "_default"


class ParamsModel(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class AgentHyperParameters(ParamsModel):
    """Per-agent hyper-parameters. Subclass to add fields; ``_default`` fills the gaps."""

    learning_rate: float = Field(1e-3, gt=0, description="Optimiser learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")


class ProtocolCommonParameters(ParamsModel):
    """What every interaction protocol shares: who opens, and the rewards of a decision."""

    verifier_first: bool = Field(True, description="The verifier speaks in the first round.")
    randomize_prover_stance: bool = Field(
        False,
        description="Debate/merlin_arthur: per episode, swap which prover argues for accept.",
    )
    shared_reward: bool = Field(
        False, description="Provers get the verifier's reward instead of their own."
    )
    verifier_reward: float = Field(1.0, description="Verifier's reward for a correct decision.")
    verifier_incorrect_penalty: float = Field(
        -1.0, description="Verifier's reward for an incorrect decision."
    )
    verifier_terminated_penalty: float = Field(
        -1.0, description="Verifier's reward when the last round passes without a decision."
    )
    verifier_no_guess_reward: float = Field(
        0.0, description="Verifier's reward for each of its rounds it continues without deciding."
    )
    prover_reward: float = Field(
        1.0, description="A prover's reward when the verifier decides the way it argues."
    )


class NipProtocolParameters(ParamsModel):
    """Message rounds of a prover-verifier protocol (``nip``)."""

    max_message_rounds: PositiveInt = Field(
        8, description="Rounds in one episode; undecided after the last, the episode ends."
    )
    min_message_rounds: NonNegativeInt = Field(
        1, description="The verifier may decide from this round on (0-based)."
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> NipProtocolParameters:
        if self.min_message_rounds >= self.max_message_rounds:
            raise ValueError(
                f"min_message_rounds={self.min_message_rounds} must be below "
                f"max_message_rounds={self.max_message_rounds}"
            )
        return self


class DebateProtocolParameters(NipProtocolParameters):
    """Message rounds and turn order of the two-prover protocols (``debate``, ``mnip``)."""

    sequential: bool = Field(
        False, description="Provers speak in turn, not together, between the verifier's rounds."
    )
    prover0_first: bool = Field(True, description="With sequential: prover0 speaks first.")
    randomize_channel_order: bool = Field(
        False, description="Per episode, shuffle which channel carries which prover."
    )


class MnipProtocolParameters(DebateProtocolParameters):
    """``mnip``: as debate, but each prover sees only its own channel."""


class BaseRunParameters(ParamsModel):
    """Where a warm start comes from: another run's checkpoint.

    Give ``run_id`` and ``storage_path`` to read a checkpoint from storage; ``version`` is
    ``"latest"`` or an iteration number / checkpoint folder name.
    """

    run_id: str = Field(description="The run id of the base run.")
    storage_path: str | None = Field(
        None, description="Storage root holding the base run (default: the default root)."
    )
    version: str = Field("latest", description="'latest', an iteration or 'checkpoint_<n>'.")

    @field_validator("version", mode="before")
    @classmethod
    def _int_version(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    project: str | None = Field(None, description="W&B project of the base run.")
    entity: str | None = Field(None, description="W&B entity of the base run.")


class HyperParameters(ParamsModel):
    """The root of the hyper-parameter tree.

    Attributes
    ----------
    schema_version : ClassVar[int]
        Increment when the saved form changes incompatibly, and register a conversion with
        :func:`raytrainer.params.register_conversion`.
    """

    schema_version: ClassVar[int] = 2

    trainer: str = Field(description="Registered trainer name or import path 'module:Class'.")
    scenario: str = Field(description="Registered scenario name or import path 'module:func'.")
    interaction_protocol: str = Field(
        "solo",
        description="Interaction protocol: 'solo', 'nip', 'adp', 'debate', 'mnip', "
        "'merlin_arthur', 'solo_verifier' or a registered name.",
    )
    protocol_common: ProtocolCommonParameters = Field(default_factory=ProtocolCommonParameters)
    nip_protocol: NipProtocolParameters = Field(default_factory=NipProtocolParameters)
    debate_protocol: DebateProtocolParameters = Field(default_factory=DebateProtocolParameters)
    mnip_protocol: MnipProtocolParameters = Field(default_factory=MnipProtocolParameters)
    seed: NonNegativeInt = Field(0, description="Seed for every random number generator.")
    num_iterations: PositiveInt = Field(description="Number of training iterations.")
    batch_size: PositiveInt = Field(
        32, description="Global batch size, divided across workers by the runtime."
    )
    agents: dict[str, AgentHyperParameters] = Field(
        default_factory=lambda: {DEFAULT_AGENT: AgentHyperParameters()},
        description="Per-agent sections keyed by agent name; '_default' applies to all.",
    )
    base_run: BaseRunParameters | None = Field(
        None, description="Warm-start from another run's checkpoint when set."
    )

    @model_validator(mode="after")
    def _has_default_agent(self) -> HyperParameters:
        if DEFAULT_AGENT not in self.agents:
            agent_cls = self._agent_cls()
            self.agents = {DEFAULT_AGENT: agent_cls(), **self.agents}
        return self

    @classmethod
    def _agent_cls(cls) -> type[AgentHyperParameters]:
        annotation = cls.model_fields["agents"].annotation
        return annotation.__args__[1]  # dict[str, X] → X

    def agent_params(self, agent_name: str) -> AgentHyperParameters:
        """Return the parameters of one agent: its own section over ``_default``.

        Parameters
        ----------
        agent_name : str
            The agent's name, as the protocol handler gives it.
        """
        default = self.agents[DEFAULT_AGENT]
        own = self.agents.get(agent_name)
        if own is None:
            return default
        merged = {**default.model_dump(), **own.model_dump(exclude_unset=True)}
        return type(default).model_validate(merged)

    def to_dict(self) -> dict[str, Any]:
        """Return the tree as plain JSON-compatible values.

        A named agent's section keeps only the fields it sets, so the tree read back from this
        (in a Ray worker, from a checkpoint) still fills the rest from ``_default``.
        """
        data = self.model_dump(mode="json")
        data["agents"] = {
            name: section.model_dump(mode="json", exclude_unset=name != DEFAULT_AGENT)
            for name, section in self.agents.items()
        }
        return data

    def to_saved(self) -> dict[str, Any]:
        """Return the saved form: the tree plus its schema and package versions."""
        return {
            "schema_version": self.schema_version,
            "package": "raytrainer",
            "package_version": __version__,
            "params": self.to_dict(),
        }

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> HyperParameters:
        """Rebuild the tree from :meth:`to_saved` output, converting older schema versions."""
        params = convert(cls, saved["params"], int(saved["schema_version"]))
        return cls.model_validate(params)

    def stable_hash(self) -> str:
        """Return a hash of the validated tree that is the same in every process."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def default_run_id(self) -> str:
        """Return the run id derived from the hyper-parameters: ``<trainer>-<hash>``.

        ``num_iterations`` is left out of the hash, so rerunning with a larger one extends the
        same run instead of starting a new one.
        """
        stem = re.sub(r"[^a-z0-9]+", "-", self.trainer.rsplit(":", 1)[-1].lower()).strip("-")
        values = {k: v for k, v in self.to_dict().items() if k != "num_iterations"}
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return f"{stem or 'run'}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def diff(self, other: HyperParameters) -> dict[str, tuple[Any, Any]]:
        """Return ``{dotted.path: (self value, other value)}`` for every differing leaf."""
        return _diff(self.to_dict(), other.to_dict(), "")


def _diff(a: Any, b: Any, prefix: str) -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}.{key}" if prefix else key
            out.update(_diff(a.get(key), b.get(key), path))
        return out
    return {} if a == b else {prefix: (a, b)}


@register_conversion(HyperParameters, from_version=1)
def _protocol_sections(params: dict[str, Any]) -> dict[str, Any]:
    """Convert schema 1 to 2.

    ``protocol`` became ``interaction_protocol`` (the original project's name), and
    ``protocol_params.max_message_rounds`` moved into the protocol's own section.
    """
    protocol = params.pop("protocol", "solo")
    rounds = (params.pop("protocol_params", None) or {}).get("max_message_rounds")
    params["interaction_protocol"] = protocol
    section = {"nip": "nip_protocol", "debate": "debate_protocol"}.get(protocol)
    if section is not None and rounds:
        params[section] = {**params.get(section, {}), "max_message_rounds": rounds}
    return params
