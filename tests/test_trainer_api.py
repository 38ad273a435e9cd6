"""Walks every method and property of the seed's Trainer API and exercises it."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch
import xxhash

import raytrainer.checkpoint.checkpointer as checkpointer_module
from raytrainer import (
    CheckPointNotFoundError,
    ExperimentSettings,
    MetricError,
    NodePreempted,
    Trainer,
    attach_progress_bar,
    build_trainer,
    load_hyper_params,
)
from raytrainer.build import local_settings
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.protocols import SoloProtocol

SEED_DOC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "trainer_base_api.txt"

SEED_METHODS = {
    "__init__": ["hyper_params", "scenario_instance", "settings"],
    "_add_file_to_wandb_artifact": ["artifact_name", "artifact_type", "file_path"],
    "_get_metadata": [],
    "_initialise_state": [],
    "_load_state_dict_from_active_run_checkpoint": [],
    "_load_state_dict_from_base_run_checkpoint": ["version"],
    "get_checkpoint_base_dir_from_run_id": ["run_id"],
    "get_total_num_iterations": [],
    "load_and_set_state_from_checkpoint": ["from_base_run", "version"],
    "save_checkpoint": ["log"],
    "train": [],
}
SEED_DEFAULTS = {
    ("_load_state_dict_from_base_run_checkpoint", "version"): "latest",
    ("load_and_set_state_from_checkpoint", "from_base_run"): False,
    ("load_and_set_state_from_checkpoint", "version"): "latest",
    ("save_checkpoint", "log"): True,
}
SEED_PROPERTIES = [
    "agent_names",
    "checkpoint_base_dir",
    "checkpoint_metadata_path",
    "checkpoint_params_path",
    "checkpoint_state_path",
    "max_message_rounds",
    "num_agents",
    "protocol_handler",
]


class Recorder:
    """A progress-bar factory that remembers what it was asked to draw."""

    def __init__(self):
        self.bars = []

    def __call__(self, total, initial=0, desc=""):
        bar = {"total": total, "initial": initial, "n": initial, "closed": False}
        self.bars.append(bar)

        class Bar:
            def update(self, n=1):
                bar["n"] += n

            def set_postfix(self, values, refresh=True):
                bar["postfix"] = dict(values)

            def close(self):
                bar["closed"] = True

        return Bar()


def _settings(tmp_path, **kw) -> ExperimentSettings:
    return ExperimentSettings(
        storage_path=str(tmp_path / "runs"),
        checkpoint_period=10,
        progress_bar_factory=kw.pop("progress", None),
        **kw,
    )


def test_the_seed_document_names_nothing_we_do_not_cover():
    if not SEED_DOC.is_file():  # shared/ lies beside the repository in CI and dev checkouts
        pytest.skip(f"the seed's API document is not beside this checkout ({SEED_DOC})")
    text = SEED_DOC.read_text()
    named = set(re.findall(r"^(?:abstract |classmethod )?(\w+)\(.*\[source\]#", text, re.M))
    # _initialise_state's signature line is missing from the document; its text is there.
    assert "Initialise the state of the experiment." in text
    assert named | {"_initialise_state"} == set(SEED_METHODS)


def test_signatures_match_the_seed():
    for name, params in SEED_METHODS.items():
        signature = inspect.signature(getattr(Trainer, name))
        names = [p for p in signature.parameters if p not in ("self", "cls")]
        assert names == params, name
        for param in params:
            default = SEED_DEFAULTS.get((name, param), inspect.Parameter.empty)
            assert signature.parameters[param].default == default, (name, param)
    assert getattr(Trainer.train, "__isabstractmethod__", False)
    assert isinstance(
        inspect.getattr_static(Trainer, "get_checkpoint_base_dir_from_run_id"), classmethod
    )
    for name in SEED_PROPERTIES:
        assert isinstance(inspect.getattr_static(Trainer, name), property), name


def test_properties_paths_and_metadata(tmp_path, tiny_config, monkeypatch):
    hp = load_hyper_params(tiny_config)
    trainer = build_trainer(hp, _settings(tmp_path))
    assert trainer.agent_names == ["agent"] and trainer.num_agents == 1
    assert trainer.max_message_rounds == 0
    assert isinstance(trainer.protocol_handler, SoloProtocol)
    run_dir = tmp_path / "runs" / hp.default_run_id()
    assert trainer.checkpoint_base_dir == run_dir
    assert trainer.checkpoint_storage_uri == str(run_dir)
    trainer.iteration = 12
    assert trainer.checkpoint_metadata_path == run_dir / "checkpoint_000012" / "metadata.json"
    assert trainer.checkpoint_params_path == run_dir / "checkpoint_000012" / "hyper_params.json"
    assert trainer.checkpoint_state_path == run_dir / "checkpoint_000012" / "state.json"
    assert Trainer.get_checkpoint_base_dir_from_run_id("abc") == (
        tmp_path / "default_storage" / "abc"
    )

    meta = trainer._get_metadata()
    assert meta["package"] == "raytrainer" and meta["iteration"] == 12
    assert meta["run_id"] == hp.default_run_id()
    assert meta["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", meta["git_sha"])
    monkeypatch.chdir(tmp_path)  # outside any checkout: None, never a crash
    checkpointer_module.git_sha.cache_clear()
    try:
        assert trainer._get_metadata()["git_sha"] is None
    finally:
        checkpointer_module.git_sha.cache_clear()


def test_train_save_load_cycle(tmp_path, tiny_config):
    hp = load_hyper_params(tiny_config)
    recorder = Recorder()
    trainer = build_trainer(hp, _settings(tmp_path, progress=recorder))
    assert trainer.get_total_num_iterations() == 30
    trainer.train()
    assert recorder.bars == [{"total": 30, "initial": 0, "n": 30, "closed": True}]
    run_dir = trainer.checkpoint_base_dir
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "checkpoint_000010",
        "checkpoint_000020",
        "checkpoint_000030",
    ]
    assert trainer.checkpoint_metadata_path.is_file()  # the current iteration's checkpoint
    saved = read_checkpoint(run_dir / "checkpoint_000030")
    assert saved.metadata["metrics"] == {"iteration": 30, "loss": trainer.metrics["loss"]}

    state = trainer._load_state_dict_from_active_run_checkpoint()
    assert torch.equal(state["model"]["0.weight"], trainer.model[0].weight.detach())
    assert state["_trainer"]["iteration"] == 30

    # A new trainer for the same run restores instead of initialising; its bar starts at 30.
    recorder2 = Recorder()
    again = build_trainer(hp, _settings(tmp_path, progress=recorder2))
    assert again.iteration == 30
    for a, b in zip(again.model.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)
    again.train()
    assert recorder2.bars[0]["initial"] == 30 and recorder2.bars[0]["n"] == 30

    with pytest.raises(ValueError, match="latest"):
        again.load_and_set_state_from_checkpoint(version="3")


def test_a_preemption_notice_saves_at_that_step_and_the_rerun_resumes_there(tmp_path, tiny_config):
    hp = load_hyper_params(tiny_config)
    seen = []  # the iterations at which the notice was asked for

    def notice_from(iteration: int):
        def preempted() -> bool:
            seen.append(trainer.iteration)
            return trainer.iteration >= iteration

        return dataclasses.replace(_settings(tmp_path), preempted=preempted)

    trainer = build_trainer(hp, notice_from(13))
    with pytest.raises(NodePreempted, match="saved a checkpoint at iteration 13"):
        trainer.train()
    run_dir = trainer.checkpoint_base_dir
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint_000010", "checkpoint_000013"]
    # The restarted trainer resumes at the notice; a notice at the last iteration lets it end.
    seen.clear()
    trainer = build_trainer(hp, notice_from(30))
    assert trainer.iteration == 13
    trainer.train()
    assert seen == list(range(14, 31)) and trainer.iteration == 30
    assert [p.name for p in list_checkpoints(run_dir)][-1] == "checkpoint_000030"


def test_initialise_state_only_without_checkpoint(tmp_path, tiny_config):
    from helpers.gated import GatedRegressionTrainer

    calls = []

    class Counting(GatedRegressionTrainer):
        def _initialise_state(self):
            calls.append(self.iteration)

    hp = load_hyper_params(tiny_config)

    def settings(**kw):  # a trainer built by hand gets its run id and backend from here
        return local_settings(hp, _settings(tmp_path, **kw))

    first = Counting(
        hp,
        build_trainer(hp, _settings(tmp_path, do_not_load_checkpoint=True)).scenario_instance,
        settings(),
    )
    assert calls == [0]
    first.iteration = 5
    first.save_checkpoint()
    restored = Counting(hp, first.scenario_instance, settings())
    assert calls == [0] and restored.iteration == 5  # restored, not initialised
    fresh = Counting(hp, first.scenario_instance, settings(do_not_load_checkpoint=True))
    assert calls == [0, 0] and fresh.iteration == 0


def test_missing_checkpoints_raise(tmp_path, tiny_config):
    hp = load_hyper_params(tiny_config)
    trainer = build_trainer(hp, _settings(tmp_path))
    with pytest.raises(CheckPointNotFoundError, match="no usable checkpoint"):
        trainer.load_and_set_state_from_checkpoint()
    with pytest.raises(CheckPointNotFoundError, match="no base run is configured"):
        trainer.load_and_set_state_from_checkpoint(from_base_run=True)


def test_base_run_warm_start(tmp_path, tiny_config):
    base_hp = load_hyper_params(tiny_config)
    base = build_trainer(base_hp, _settings(tmp_path))
    base.train()
    base_dir = base.checkpoint_base_dir
    at_20 = read_checkpoint(base_dir / "checkpoint_000020").state["model"]

    hp = load_hyper_params(
        tiny_config,
        [
            "num_iterations=40",
            f"base_run.run_id={base.run_id}",
            f"base_run.storage_path={tmp_path / 'runs'}",
            "base_run.version=20",
        ],
    )
    warm = build_trainer(hp, _settings(tmp_path))
    assert warm.run_id != base.run_id
    assert warm.iteration == 20
    assert torch.equal(warm.model[0].weight.detach(), at_20["0.weight"])
    state = warm._load_state_dict_from_base_run_checkpoint("latest")
    assert state["_trainer"]["iteration"] == 30
    warm.train()
    assert list_checkpoints(warm.checkpoint_base_dir)[-1].name == "checkpoint_000040"
    assert list_checkpoints(base_dir)[-1].name == "checkpoint_000030"  # the base is untouched

    missing = load_hyper_params(tiny_config, ["base_run.run_id=nobody"])
    with pytest.raises(CheckPointNotFoundError, match="nobody"):
        build_trainer(missing, _settings(tmp_path))


def test_total_iterations_sum_decorated_methods(tmp_path, tiny_config):
    from helpers.gated import GatedRegressionTrainer

    class TwoPhase(GatedRegressionTrainer):
        @attach_progress_bar(lambda self: 5)
        def warmup(self, progress):
            for _ in range(5):
                progress.step()

        @attach_progress_bar(lambda self: self.hyper_params.num_iterations)
        def train(self, progress):
            self.warmup()  # nested: shares the outer bar
            for _ in range(self.hyper_params.num_iterations):
                progress.step()

    hp = load_hyper_params(tiny_config)
    recorder = Recorder()
    trainer = TwoPhase(
        hp,
        build_trainer(hp, _settings(tmp_path)).scenario_instance,
        local_settings(hp, _settings(tmp_path, progress=recorder)),
    )
    assert trainer.get_total_num_iterations() == 35
    trainer.train()
    assert recorder.bars == [{"total": 35, "initial": 0, "n": 35, "closed": True}]


def test_missing_score_metric_fails_at_first_save(tmp_path, tiny_config):
    hp = load_hyper_params(tiny_config)
    trainer = build_trainer(
        hp, _settings(tmp_path, checkpoint_score_metric="accuracy", checkpoint_score_order="max")
    )
    with pytest.raises(MetricError, match="'accuracy' has not been recorded"):
        trainer.train()
    assert list_checkpoints(trainer.checkpoint_base_dir) == []


def test_add_file_to_artifact_makes_versions(tmp_path, tiny_config):
    hp = load_hyper_params(tiny_config)
    trainer = build_trainer(hp, _settings(tmp_path))
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first")
    b.write_text("second")
    trainer._add_file_to_wandb_artifact("rollouts", "dataset", a)
    trainer._add_file_to_wandb_artifact("rollouts", "dataset", b)
    root = trainer.checkpoint_base_dir / "artifacts" / "rollouts"
    assert sorted(p.name for p in (root / "v0").iterdir()) == ["a.txt", "manifest.json"]
    assert sorted(p.name for p in (root / "v1").iterdir()) == ["a.txt", "b.txt", "manifest.json"]
    import json

    manifest = json.loads((root / "v1" / "manifest.json").read_text())
    assert manifest["type"] == "dataset" and manifest["version"] == "v1"
    assert manifest["files"]["b.txt"] == "xxh3_128:" + xxhash.xxh3_128(b"second").hexdigest()
    with pytest.raises(FileNotFoundError):
        trainer._add_file_to_wandb_artifact("rollouts", "dataset", tmp_path / "missing")
