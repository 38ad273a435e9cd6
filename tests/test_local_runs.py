"""End to end through the `raytrainer` command: kill-and-resume, fallback, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import call_main
from helpers.gated import GATE_ENV, SIGTERM_ENV, make_gate, wait_for_gate

from raytrainer import ExperimentSettings, build_trainer, load_hyper_params, run_local
from raytrainer.checkpoint import list_checkpoints, read_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _cli(args, tmp_path, env_extra=None, **popen):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **(env_extra or {})}
    cmd = [sys.executable, "-m", "raytrainer.cli", *map(str, args)]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, **popen)


def _run_cli(args, tmp_path, env_extra=None):
    proc = _cli(args, tmp_path, env_extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _final_model(run_dir: Path) -> dict:
    return read_checkpoint(list_checkpoints(run_dir)[-1]).state["model"]


@pytest.fixture
def config_file(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_config, "num_iterations": 60}))
    return path


def test_sigkill_then_rerun_resumes_bitwise(tmp_path, config_file):
    args = ["run", config_file, "--local", "--checkpoint-period", "10", "--no-progress"]
    code, _, err = _run_cli([*args, "--storage-path", tmp_path / "straight"], tmp_path)
    assert code == 0, err

    storage = tmp_path / "killed"
    gate = make_gate(tmp_path / "gate", 20)
    proc = _cli(
        [*args, "--storage-path", storage],
        tmp_path,
        {GATE_ENV: gate},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_for_gate(tmp_path / "gate") == (20, proc.pid)  # checkpoint 20 is saved
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (run_dir,) = storage.iterdir()
    assert [p.name for p in list_checkpoints(run_dir)][-1] == "checkpoint_000020"
    assert not (run_dir / "complete.json").exists()

    code, out, err = _run_cli([*args, "--storage-path", storage], tmp_path)
    assert code == 0, err
    assert f"resuming run {run_dir.name} from {run_dir / 'checkpoint_000020'}" in err
    straight = _final_model(tmp_path / "straight" / run_dir.name)
    resumed = _final_model(run_dir)
    assert list(straight) == list(resumed)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key

    # Running the finished run again reports it complete and changes nothing.
    before = sorted(p.name for p in run_dir.iterdir())
    code, out, err = _run_cli([*args, "--storage-path", storage], tmp_path)
    assert code == 0 and "already complete at iteration 60" in out
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path, config_file):
    args = [
        "run",
        config_file,
        "--local",
        "--checkpoint-period",
        "10",
        "--no-progress",
        "--storage-path",
        tmp_path / "runs",
    ]
    gate = make_gate(tmp_path / "gate", 20)
    proc = _cli(args, tmp_path, {GATE_ENV: gate}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_gate(tmp_path / "gate")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    code, out, err = _run_cli(args, tmp_path)
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    # The exact line: an older checkpoint's resume also names checkpoint_000020 when saving it.
    assert f"resuming run {run_dir.name} from {run_dir / 'checkpoint_000020'}" in err


def test_sigterm_saves_a_checkpoint_at_that_step_and_the_rerun_resumes_bitwise(
    tmp_path, config_file
):
    args = ["run", config_file, "--local", "--checkpoint-period", "10", "--no-progress"]
    code, _, err = _run_cli([*args, "--storage-path", tmp_path / "straight"], tmp_path)
    assert code == 0, err
    storage = tmp_path / "stopped"
    code, out, err = _run_cli(
        [*args, "--storage-path", storage], tmp_path, {SIGTERM_ENV: "25:self"}
    )
    (run_dir,) = storage.iterdir()
    assert code == 143, err
    assert "stopped at iteration 25 (SIGTERM) after saving a checkpoint there" in err
    assert "Traceback" not in err
    assert [p.name for p in list_checkpoints(run_dir)][-1] == "checkpoint_000025"
    assert not (run_dir / "complete.json").exists()
    code, out, err = _run_cli([*args, "--storage-path", storage], tmp_path)
    assert code == 0, err
    assert f"resuming run {run_dir.name} from {run_dir / 'checkpoint_000025'}" in err
    straight = _final_model(tmp_path / "straight" / run_dir.name)
    for key, value in _final_model(run_dir).items():
        assert torch.equal(straight[key], value), key


def test_corrupt_latest_checkpoint_falls_back_and_is_replaced(tmp_path, tiny_config, quiet_logs):
    hp = load_hyper_params(tiny_config)
    settings = ExperimentSettings(
        storage_path=str(tmp_path), checkpoint_period=10, progress_bar_factory=None
    )
    first = build_trainer(hp, settings)
    first.train()
    run_dir = first.checkpoint_base_dir
    reference = {k: v.clone() for k, v in first.model.state_dict().items()}
    model_file = run_dir / "checkpoint_000030" / "model.pt"
    model_file.write_bytes(model_file.read_bytes()[:-7])  # truncated, as by a full disk

    resumed = build_trainer(hp, settings)
    assert resumed.iteration == 20
    assert any(
        "skipping corrupt checkpoint" in r.message
        and "checkpoint_000030" in r.message
        and "'model.pt'" in r.message
        for r in quiet_logs.records
    )
    assert (run_dir / "checkpoint_000030").exists()  # detected, not deleted
    resumed.train()  # redoes 21..30 and replaces the bad folder with a good one
    assert read_checkpoint(run_dir / "checkpoint_000030").iteration == 30
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_run_local_returns_and_marks_complete(tmp_path, tiny_config):
    hp = load_hyper_params(tiny_config)
    settings = ExperimentSettings(
        storage_path=str(tmp_path), progress_bar_factory=None, checkpoint_period=50, num_to_keep=1
    )
    result = run_local(hp, settings)
    assert result.iteration == 30 and not result.already_complete
    assert json.loads((tmp_path / result.run_id / "complete.json").read_text())["iteration"] == 30
    assert [p.name for p in list_checkpoints(tmp_path / result.run_id)] == ["checkpoint_000030"]
    assert run_local(hp, settings).already_complete


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "batch_size=lots"], "batch_size: Input should be a valid integer"),
        (["--set", "learning_rate=1"], "learning_rate: unknown field"),
        (
            ["--set", "agents._default.learning_rate=-1"],
            "agents._default.learning_rate: Input should be greater than 0",
        ),
        (["--num-to-keep", "-2"], "setting num_to_keep=-2 is invalid"),
        (["--storage-path", "s3://bucket/x"], "in-process runner writes to a local folder"),
    ],
)
def test_cli_bad_input_is_one_clear_error(tmp_path, config_file, capsys, extra, needle):
    code, out, err = call_main(capsys, "run", config_file, "--local", *extra)
    assert code == 2
    assert err.startswith("raytrainer: error: ") and needle in err
    # Nothing was written where this run would go: the default root, $RAYTRAINER_STORAGE.
    assert not Path(os.environ["RAYTRAINER_STORAGE"]).exists()


def test_the_run_command_exits_2_on_bad_input_without_a_traceback(tmp_path, config_file):
    code, out, err = _run_cli(["run", config_file, "--local", "--set", "batch_size=lots"], tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("raytrainer: error: ") and "batch_size: Input should be a valid" in err
    assert not Path(os.environ["RAYTRAINER_STORAGE"]).exists()


def test_cli_checkpoints_ls_and_show(tmp_path, config_file, capsys):
    code, _, err = _run_cli(
        ["run", config_file, "--local", "--no-progress", "--checkpoint-period", "20"], tmp_path
    )
    assert code == 0, err
    (run_dir,) = (tmp_path / "default_storage").iterdir()  # $RAYTRAINER_STORAGE
    good = run_dir / "checkpoint_000040"
    bad = run_dir / "checkpoint_000060"
    (bad / "optimizer.pt").write_bytes(b"garbage")
    # `ls` and `show` in this process: the run above is the command as a real process.
    code, out, err = call_main(capsys, "checkpoints", "ls", run_dir.name)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"run: {run_dir}"
    rows = [line.split() for line in lines[2:5]]
    assert [row[0] for row in rows] == [
        "checkpoint_000020",
        "checkpoint_000040",
        "checkpoint_000060",
    ]
    # marks: the newest good one is latest, the altered one BAD; no score metric, no best.
    assert [row[4] for row in rows] == ["-", "latest", "BAD"]
    code, out, _ = call_main(capsys, "checkpoints", "show", good)
    info = json.loads(out)
    assert code == 0 and info["iteration"] == 40 and info["integrity"] == "ok"
    assert set(info["metrics"]) == {"iteration", "loss"} and info["size_bytes"] > 0
    code, out, err = call_main(capsys, "checkpoints", "show", bad)
    assert code == 1 and "'optimizer.pt' does not match its recorded digest" in err
    assert "'optimizer.pt' does not match its recorded digest" in json.loads(out)["integrity"]
