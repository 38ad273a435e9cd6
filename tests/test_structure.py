"""The shape of the package: no import loops, names in one place, a generated CLI, public API."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import raytrainer
from raytrainer.cli import add_dataclass_flags, dataclass_from_flags
from raytrainer.settings import ExperimentSettings, Scaling, setting

PACKAGE = Path(raytrainer.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every raytrainer module ``name`` imports, anywhere in the file (type-checking too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    assert "raytrainer.runners.ray_train" in graph["raytrainer.cli"]  # the walk sees lazy imports


def test_run_folder_names_are_spelled_only_in_layout():
    layout = PACKAGE / "checkpoint" / "layout.py"
    names = {
        node.value.value
        for node in ast.parse(layout.read_text()).body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and node.targets[0].id.endswith(("_FILE", "_DIR"))
    }
    assert {"complete.json", ".wandb-staging", "artifacts", "raytrainer-staging"} <= names
    offenders = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}"
        for path in PACKAGE.rglob("*.py")
        if path != layout
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert offenders == []


def test_help_and_version_import_neither_torch_nor_ray():
    code = (
        "import sys\n"
        "from raytrainer.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'ray', 'wandb') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "HEAVY []" in out
    assert f"raytrainer {raytrainer.__version__}" in out
    assert "--checkpoint-score-metric" in out and "--wandb-flush-timeout" in out
    module = subprocess.run(
        [sys.executable, "-m", "raytrainer", "--version"], capture_output=True, text=True
    )
    assert (
        module.returncode == 0 and module.stdout.strip() == f"raytrainer {raytrainer.__version__}"
    )


def _parser_for(*classes) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    for cls in classes:
        add_dataclass_flags(parser, cls, cls.__name__)
    return parser


def test_every_plain_setting_has_a_flag_with_its_help():
    text = _parser_for(ExperimentSettings, Scaling).format_help()
    for cls in (ExperimentSettings, Scaling):
        for f in dataclasses.fields(cls):
            flag = f"--{f.name.replace('_', '-')}"
            if f.metadata["cli"]:
                assert flag in text, flag
                assert f.metadata["doc"].split()[0] in text
            else:  # objects, and what each process sets for itself
                assert flag not in text
    assert {f.name for f in dataclasses.fields(ExperimentSettings) if not f.metadata["cli"]} == {
        "backend",
        "logger",
        "progress_bar_factory",
        "stop_requested",
        "preempted",
        "world_rank",
        "local_rank",
        "world_size",
        "test_run",  # raytrainer run --test-run [N], declared by hand for its optional N
    }


def test_a_new_setting_becomes_a_flag_without_touching_the_cli():
    @dataclasses.dataclass
    class MySettings(ExperimentSettings):
        warmup_seconds: float = setting(2.5, "Seconds to warm the cache before training.")
        cache: str | None = setting(None, "Where the cache lives.")

    parser = _parser_for(MySettings)
    assert "Seconds to warm the cache before training. (default: 2.5)" in " ".join(
        parser.format_help().split()
    )
    given = dataclass_from_flags(
        MySettings,
        parser.parse_args(
            ["--warmup-seconds", "4", "--cache", "none", "--wandb-tag", "a", "--wandb-tag", "b"]
        ),
    )
    assert given.warmup_seconds == 4.0 and given.cache is None
    assert given.wandb_tags == ("a", "b")
    defaults = dataclass_from_flags(MySettings, parser.parse_args([]))
    assert defaults.warmup_seconds == 2.5 and defaults == MySettings()  # untouched defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["--warmup-seconds", "soon"])


def test_one_default_for_the_cli_the_environment_and_python(monkeypatch):
    parser = _parser_for(ExperimentSettings)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    from_cli = dataclass_from_flags(ExperimentSettings, parser.parse_args([]))
    assert from_cli.wandb_mode == ExperimentSettings().wandb_mode == "offline"
    assert from_cli.wandb_project == ExperimentSettings().wandb_project == "from-env"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc: no W&B API key anywhere
    assert ExperimentSettings().wandb_mode == "offline"
    assert ExperimentSettings().wandb_project == "raytrainer"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert ExperimentSettings().wandb_mode == "online"


PUBLIC = [
    "AgentHyperParameters",
    "Backend",
    "CheckPointNotFoundError",
    "CheckpointCorruptError",
    "CheckpointSaveError",
    "CheckpointStateError",
    "CheckpointVersionError",
    "ConfigError",
    "ExperimentSettings",
    "HyperParameters",
    "LocalBackend",
    "MetricError",
    "NodePreempted",
    "Progress",
    "ProtocolHandler",
    "RayTrainerError",
    "RegistryError",
    "RunFailedError",
    "RunResult",
    "RunStopped",
    "Scaling",
    "ScenarioInstance",
    "ShardedBatchSampler",
    "SweepResult",
    "Trainer",
    "__version__",
    "attach_progress_bar",
    "build_trainer",
    "load_hyper_params",
    "register_conversion",
    "register_protocol",
    "register_scenario",
    "register_trainer",
    "run",
    "run_local",
    "sweep",
]


def test_public_names_are_pinned_and_resolve():
    assert raytrainer.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(raytrainer, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        raytrainer.nope  # noqa: B018
