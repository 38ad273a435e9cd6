"""What users expect around a run: a dry run that cannot hurt, extending, starting over, live
metrics, one start line and one last line, and settings that fail before anything starts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.cli import call_main
from helpers.gated import STARTS_ENV, read_starts
from helpers.wandb_records import read_records

from raytrainer import ExperimentSettings, load_hyper_params, run_local
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def config_file(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


def _cli(capsys, *args: str) -> tuple[int, list[str], str]:
    code, out, err = call_main(capsys, *args)
    return code, out.splitlines(), err


def test_test_run_never_touches_the_real_run(tmp_path, config_file, capsys, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the dry run's folder goes
    (tmp_path / "tmp").mkdir()
    storage = tmp_path / "runs"
    common = ["run", config_file, "--local", "--run-id", "tr", "--storage-path", storage]
    code, _, err = _cli(capsys, *common, "--checkpoint-period", "10", "--no-progress")
    assert code == 0, err
    before = _fingerprint(storage)
    assert "tr/complete.json" in before and "tr/checkpoint_000030/metadata.json" in before

    monkeypatch.setenv("WANDB_MODE", "offline")  # a test run disables W&B all the same
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    for _ in range(2):  # the second must not delete anything through retention either
        code, out, err = _cli(
            capsys,
            *common,
            "--test-run",
            "--num-to-keep",
            "1",
            "--set",
            "num_iterations=100",
            "--set",
            "agents._default.learning_rate=0.5",
            "--no-progress",
        )
        assert code == 0, err
        assert out[-1] == "test run passed (4 iterations, checkpoint saved and resumed)"
    assert _fingerprint(storage) == before
    assert not (tmp_path / "wandb_dir").exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # the throwaway folder is gone


def test_test_run_of_a_trainer_that_never_saves_fails_clearly(tmp_path, tiny_config):
    hp = load_hyper_params({**tiny_config, "trainer": "helpers.gated:NeverSavesTrainer"})
    settings = ExperimentSettings(
        storage_path=str(tmp_path), test_run=6, progress_bar_factory=None, wandb_mode="disabled"
    )
    with pytest.raises(Exception, match=r"no checkpoint at iteration 6.*save_checkpoint\(\)"):
        run_local(hp, settings)


def test_a_longer_run_extends_the_finished_one(tmp_path, tiny_config, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="raytrainer")
    monkeypatch.setenv(STARTS_ENV, str(tmp_path / "starts"))
    settings = ExperimentSettings(
        storage_path=str(tmp_path), checkpoint_period=10, progress_bar_factory=None
    )
    short = load_hyper_params(tiny_config, ["num_iterations=20"])
    first = run_local(short, settings)
    assert first.iteration == 20 and not first.already_complete
    assert run_local(short, settings).already_complete

    longer = load_hyper_params(tiny_config, ["num_iterations=40"])
    assert longer.default_run_id() == short.default_run_id()  # no --run-id needed
    extended = run_local(longer, settings)
    assert (extended.run_id, extended.iteration) == (first.run_id, 40)
    assert not extended.already_complete
    assert read_starts(tmp_path / "starts") == {first.run_id: [0, 20]}  # resumed, not redone
    assert "(num_iterations: 20 -> 40); continuing it" in caplog.text
    assert run_local(longer, settings).already_complete
    complete = json.loads((tmp_path / first.run_id / "complete.json").read_text())
    assert complete["iteration"] == 40 and complete["hyper_params"]["num_iterations"] == 40


def test_starting_over_is_explicit(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv(STARTS_ENV, str(tmp_path / "starts"))
    hp = load_hyper_params(tiny_config)
    settings = ExperimentSettings(
        storage_path=str(tmp_path / "runs"), checkpoint_period=10, progress_bar_factory=None
    )
    first = run_local(hp, settings)
    old = _fingerprint(tmp_path / "runs" / first.run_id)
    with pytest.raises(ConfigError, match="already has checkpoints.*--restart"):
        run_local(hp, ExperimentSettings(**{**vars(settings), "do_not_load_checkpoint": True}))
    assert _fingerprint(tmp_path / "runs" / first.run_id) == old

    again = run_local(hp, ExperimentSettings(**{**vars(settings), "restart": True}))
    assert not again.already_complete and again.iteration == 30
    (aside,) = [p for p in (tmp_path / "runs").iterdir() if p.name != first.run_id]
    assert aside.name.startswith(f"{first.run_id}-replaced-")
    assert _fingerprint(aside) == old  # moved aside whole, not merged or deleted
    assert read_starts(tmp_path / "starts") == {first.run_id: [0, 0]}


class _Bar:
    postfixes: list[tuple[int, dict]] = []

    def __init__(self, total: int, initial: int = 0, desc: str = "") -> None:
        self.n = initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict, refresh: bool = True) -> None:
        _Bar.postfixes.append((self.n, dict(values)))

    def close(self) -> None:
        pass


def test_metrics_are_logged_live_every_log_period(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    hp = load_hyper_params(tiny_config, ["num_iterations=1000"])
    _Bar.postfixes = []
    settings = ExperimentSettings(
        storage_path=str(tmp_path / "runs"),
        checkpoint_period=100,
        log_period=10,
        wandb_mode="offline",
        # The mirror's thread runs at a lower priority: on a loaded machine it may need more
        # than the default two minutes to write 100 rows and 10 checkpoints.
        wandb_flush_timeout=900.0,
        progress_bar_factory=_Bar,
    )
    result = run_local(hp, settings)
    assert result.unmirrored == []  # else the rows below stop where the flush gave up
    records = [r for p in (tmp_path / "wandb").rglob("run-*.wandb") for r in read_records(p)]
    rows = [
        {
            (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [row["iteration"] for row in rows] == list(range(10, 1001, 10))  # checkpoints add none
    assert all(isinstance(row["loss"], float) for row in rows)
    # The step metric W&B plots against is the iteration, so a resumed run never goes back.
    metrics = {
        r.metric.glob_name or r.metric.name: r.metric.step_metric
        for r in records
        if r.WhichOneof("record_type") == "metric"
    }
    assert metrics.get("*") == "iteration"
    assert [n for n, _ in _Bar.postfixes] == list(range(10, 1001, 10))
    assert _Bar.postfixes[-1][1] == {"loss": f"{result.metrics['loss']:.4g}"}


def test_cli_prints_a_start_line_and_a_last_line(tmp_path, config_file, capsys):
    storage = tmp_path / "runs"
    args = ["run", config_file, "--local", "--no-progress", "--storage-path", storage]
    code, out, err = _cli(
        capsys, *args, "--checkpoint-period", "10", "--score-metric", "loss", "--score-order", "min"
    )
    assert code == 0, err
    (run_dir,) = storage.iterdir()
    assert out[0] == f"run {run_dir.name} (in-process): storage {run_dir}; W&B disabled"
    loss = read_checkpoint(list_checkpoints(run_dir)[-1]).metadata["metrics"]["loss"]
    losses = {
        p.name: read_checkpoint(p).metadata["metrics"]["loss"]
        for p in run_dir.iterdir()
        if p.name.startswith("checkpoint_")
    }
    best = min(losses, key=losses.__getitem__)
    assert out[-1].startswith(
        f"run {run_dir.name} complete at iteration 30: metrics loss={loss:.4g}; "
        f"newest checkpoint_000030, best {best}; 0m"
    )
    assert out[-1].endswith(f"; in {run_dir}")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--local", "--device", "cuda:7"], "device='cuda:7' is not available here"),
        (["--local", "--device", "tpu"], "device='tpu' is invalid"),
        (
            ["--local", "--num-workers", "4", "--max-failures", "3", "--worker-env", "A=B"],
            "--num-workers, --max-failures, --worker-env: only for Ray runs",
        ),
        (["--local", "--address", "127.0.0.1:1"], "--address: only for Ray runs"),
        (["--num-workers", "3-2"], "a range MIN-MAX with 1 <= MIN <= MAX"),
        (["--num-workers", "1-3"], "batch_size=16 is the global batch and must divide by every"),
        (["--device", "cpu"], "--device: only for in-process runs (--local)"),
        (["--local", "--score-metric", "loss"], "--score-order min|max"),
    ],
)
def test_bad_settings_fail_in_one_line_before_anything_starts(
    tmp_path, config_file, capsys, flags, message
):
    storage = tmp_path / "runs"
    code, out, err = _cli(capsys, "run", config_file, "--storage-path", storage, *flags)
    assert code == 2
    assert out == [] and len(err.strip().splitlines()) == 1 and message in err, err
    assert not storage.exists()


def test_an_unreachable_cluster_or_storage_is_one_line_within_seconds(tmp_path, config_file):
    from conftest import free_port

    def cli(*args: str, **env: str) -> tuple[int, str]:
        # A fresh process: this one may already be connected to the tests' Ray instance.
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (REPO, REPO / "tests")))}
        environ.pop("RAY_ADDRESS", None)
        command = [sys.executable, "-m", "raytrainer.cli", "run", str(config_file), *args]
        done = subprocess.run(
            command, env={**environ, **env}, capture_output=True, text=True, timeout=120
        )
        return done.returncode, done.stderr

    nothing = f"127.0.0.1:{free_port()}"  # nobody listens there
    code, err = cli("--address", nothing)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no Ray cluster answers at {nothing}" in err and "ray start --head" in err

    keys = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    code, err = cli(
        "--storage-path", "s3://bucket/runs", AWS_ENDPOINT_URL=f"http://{nothing}", **keys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot use the run's storage s3://bucket/runs/" in err and "AWS_ENDPOINT_URL" in err


def test_worker_env_reaches_rays_processes_by_a_setup_hook_not_a_logged_runtime_env(
    monkeypatch, capsys
):
    from raytrainer.cli import _parser, dataclass_from_flags
    from raytrainer.runners.ray_train import job_runtime_env

    monkeypatch.setenv("RT_TEST_SECRET", "s3cr3t")  # --worker-env KEY takes the value from here
    args = _parser().parse_args(
        ["run", "x.yaml", "--worker-env", "RT_TEST_SECRET", "--worker-env", "RT_TEST_PLAIN=a=b"]
    )
    settings = dataclass_from_flags(ExperimentSettings, args)
    assert settings.worker_env == {"RT_TEST_SECRET": "s3cr3t", "RT_TEST_PLAIN": "a=b"}
    monkeypatch.delenv("RT_TEST_SECRET")
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "x.yaml", "--worker-env", "RT_TEST_SECRET"])
    assert "RT_TEST_SECRET is not set in this environment" in capsys.readouterr().err

    runtime_env = job_runtime_env(settings)
    # Ray writes env_vars into runtime_env_agent.log: only the controller's poll defaults go
    # there; the hook (kept in Ray's GCS, logged by name) sets worker_env in every process.
    assert not set(runtime_env["env_vars"]) & set(settings.worker_env)
    assert "s3cr3t" not in json.dumps(runtime_env["env_vars"])
    monkeypatch.setenv("RT_TEST_PLAIN", "")  # restored after the test, like the secret
    monkeypatch.setenv("RT_TEST_SECRET", "")
    runtime_env["worker_process_setup_hook"]()
    assert os.environ["RT_TEST_SECRET"] == "s3cr3t" and os.environ["RT_TEST_PLAIN"] == "a=b"
    # A variable the submitted `ray job` sets is left to it (Ray refuses two values of one).
    job = {"runtime_env": {"env_vars": {"RT_TEST_SECRET": "job's"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    monkeypatch.setenv("RT_TEST_SECRET", "job's")
    job_runtime_env(settings)["worker_process_setup_hook"]()
    assert os.environ["RT_TEST_SECRET"] == "job's"
