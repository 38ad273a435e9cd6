"""Ray Tune sweeps: a bad sweep file fails at once; ASHA, PBT and a killed driver, for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.cli import call_main
from helpers.gated import GATE_ENV, SKIP_ENV, STARTS_ENV, make_gate, read_starts, wait_for_gate
from helpers.wandb_records import read_records

from raytrainer import ConfigError, ExperimentSettings, sweep
from raytrainer.checkpoint import read_checkpoint
from raytrainer.sweep_config import load_sweep

REPO = Path(__file__).resolve().parents[1]


def _sweep_file(tmp_path, tiny_config, iterations=60, **sweep) -> Path:
    base = {**tiny_config, "num_iterations": iterations}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "name": "s",
        "base": "base.yaml",
        "metric": "loss",
        "mode": "min",
        "settings": {"checkpoint_period": 10, "wandb_mode": "disabled"},
        **sweep,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(args, cwd, env_extra=None, **popen):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "raytrainer", *map(str, args)], cwd=cwd, env=env, text=True, **popen
    )


def _checkpoints(sweep_dir: Path) -> list[Path]:
    return sorted(
        p.parent for p in sweep_dir.rglob("metadata.json") if "checkpoint" in p.parent.name
    )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"search": {"agents._default.learnin_rate": {"grid": [0.1]}}},
            "search.agents._default.learnin_rate: not a hyper-parameter; "
            "did you mean 'agents._default.learning_rate'?",
        ),
        ({"search": {"batch_size": {"normal": [1, 2]}}}, "must be one of {grid: ...}"),
        ({"search": {"hidden_dim": {"loguniform": [0, 8]}}}, "loguniform needs low > 0"),
        ({"search": {"batch_size": {"grid": [16, 0]}}}, "batch_size: Input should be greater"),
        ({"scheduler": {"type": "asha", "max_t": 500}}, "scheduler.max_t: 500 is more than"),
        ({"scheduler": {"type": "hyperband"}}, "scheduler"),
        ({"settings": {"checkpoint_perod": 5}}, "did you mean 'checkpoint_period'?"),
        ({"settings": {"do_not_load_checkpoint": True}}, "not a sweep's to set"),
        ({"metrc": "loss"}, "metrc: unknown field"),
        ({"scaling": {"num_workers": [1, 2]}}, "is a range, but a trial reserves a fixed"),
    ],
)
def test_a_bad_sweep_file_is_one_clear_error_before_ray_starts(
    tmp_path, tiny_config, capsys, monkeypatch, change, needle
):
    path = _sweep_file(tmp_path, tiny_config, **change)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    assert needle in " ".join(str(caught.value).split())
    monkeypatch.chdir(tmp_path)  # where a run would go by default: ./raytrainer_runs
    code, out, err = call_main(capsys, "sweep", path)
    assert code == 2 and needle in " ".join(err.split())
    assert err.startswith("raytrainer: error: invalid sweep")
    assert out == "" and not (tmp_path / "raytrainer_runs").exists()


def test_the_sweep_command_exits_2_on_a_bad_file_before_ray_starts(tmp_path, tiny_config):
    path = _sweep_file(tmp_path, tiny_config, metrc="loss")
    proc = _cli(["sweep", path], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.startswith("raytrainer: error: invalid sweep") and "metrc: unknown field" in err
    assert "ray" not in out.lower() and not (tmp_path / "raytrainer_runs").exists()


def test_a_trial_larger_than_the_cluster_is_refused(ray_cluster, tmp_path, tiny_config):
    path = _sweep_file(tmp_path, tiny_config, scaling={"num_workers": 4})
    with pytest.raises(ConfigError, match="a trial needs 4 CPU .* the Ray cluster has 2 CPU"):
        sweep(path, settings=ExperimentSettings(storage_path=str(tmp_path / "runs")))
    assert not (tmp_path / "runs" / "s").exists()


def test_asha_grid_stops_weak_trials_and_names_the_best(ray_cluster, tmp_path, tiny_config):
    """3 learning rates x 2 batch sizes, one trial at a time (so ASHA's cuts are repeatable)."""
    wandb_dir = tmp_path / "wandb"
    env = {var: str(wandb_dir / var.lower()) for var in ("WANDB_DIR", "WANDB_DATA_DIR")}
    path = _sweep_file(
        tmp_path,
        tiny_config,
        name="grid",
        search={
            "agents._default.learning_rate": {"grid": [0.0001, 0.003, 0.03]},
            "batch_size": {"grid": [16, 64]},
        },
        scheduler={"type": "asha", "max_t": 60, "grace_period": 10, "reduction_factor": 3},
        max_concurrent_trials=1,
        settings={"checkpoint_period": 10, "wandb_mode": "offline", "worker_env": env},
    )
    result = sweep(path, settings=ExperimentSettings(storage_path=str(tmp_path / "runs")))
    sweep_dir = tmp_path / "runs" / "grid"
    rows = result.trials
    assert len(rows) == 6 and {r["status"] for r in rows} <= {"DONE", "STOPPED"}
    stopped = [r for r in rows if r["status"] == "STOPPED"]
    assert stopped and all(r["iteration"] < 60 for r in stopped)
    assert sum(r["iteration"] for r in rows) < 6 * 60  # ASHA saved iterations
    # The best is the lowest final loss among trials that ran to the end, and says where its
    # checkpoint is: a verified checkpoint of that very run at iteration 60.
    done = [r for r in rows if r["status"] == "DONE"]
    assert result.best == min(done, key=lambda r: r["loss_last"])
    best_checkpoint = read_checkpoint(Path(result.best["checkpoint"]))
    assert (
        best_checkpoint.metadata["run_id"]
        == result.best["run_id"]
        == f"grid-{result.best['trial_id']}"
    )
    assert best_checkpoint.iteration == 60
    assert best_checkpoint.metadata["metrics"]["loss"] == result.best["loss_last"]
    saved = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert saved["best"]["trial_id"] == result.best["trial_id"] and len(saved["trials"]) == 6
    csv_lines = (sweep_dir / "sweep_summary.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and "config.agents._default.learning_rate" in csv_lines[0]
    assert (sweep_dir / "sweep_metric.png").read_bytes()[:4] == b"\x89PNG"
    # Each trial is its own W&B run, in a group named after the sweep. A trial that Tune stops
    # when its actor is not reused can lose its W&B records (see the README): here the last
    # one, whose actor Tune kills as the sweep ends (one trial at a time, in trial-id order).
    runs = {
        (r.run.run_id, r.run.run_group)
        for p in wandb_dir.rglob("run-*.wandb")
        for r in read_records(p)
        if r.WhichOneof("record_type") == "run"
    }
    last = max(rows, key=lambda r: r["trial_id"])
    kept = {(r["run_id"], "grid") for r in done if r is not last}
    assert kept and kept <= runs <= {(r["run_id"], "grid") for r in rows}


def _lr(checkpoint) -> float:
    return checkpoint.hyper_params["params"]["agents"]["_default"]["learning_rate"]


def test_pbt_exploits_and_the_mutated_value_is_what_the_optimizer_uses(
    ray_cluster, tmp_path, tiny_config
):
    path = _sweep_file(
        tmp_path,
        tiny_config,
        name="pbt",
        # Long enough that all four overlap however staggered their start-ups are (a busy
        # machine starts them seconds apart; 100 iterations once ended before the last began).
        iterations=300,
        num_samples=4,
        # All four alive at once (PBT only exploits trials that are still running): half a CPU
        # each on the 2-CPU test cluster.
        scaling={"num_workers": 1, "cpus_per_worker": 0.5},
        search={"agents._default.learning_rate": {"loguniform": [0.0001, 0.1]}},
        scheduler={
            "type": "pbt",
            "perturbation_interval": 10,
            "hyperparam_mutations": {
                "agents._default.learning_rate": {"loguniform": [0.0001, 0.1]}
            },
        },
        seed=1,
    )
    result = sweep(path, settings=ExperimentSettings(storage_path=str(tmp_path / "runs")))
    assert len(result.trials) == 4 and all(r["status"] == "DONE" for r in result.trials)
    checkpoints = [read_checkpoint(folder) for folder in _checkpoints(tmp_path / "runs" / "pbt")]
    for checkpoint in checkpoints:
        lr = _lr(checkpoint)
        assert checkpoint.state["optimizer"]["param_groups"][0]["lr"] == lr, checkpoint.path
    inherited = [
        (checkpoint, checkpoint.metadata["restored_from"])
        for checkpoint in checkpoints
        if checkpoint.metadata["restored_from"]
        and checkpoint.metadata["restored_from"]["run_id"] != checkpoint.metadata["run_id"]
    ]
    assert inherited, "no trial ever continued from another trial's checkpoint"
    for checkpoint, source in inherited:
        assert source["run_id"].startswith("pbt-")
        assert checkpoint.iteration >= source["iteration"]  # equal: took a donor's final state
    # Exploiting trials run with a mutated learning rate, not the donor's.
    donors = {(c.metadata["run_id"], c.iteration): c for c in checkpoints}
    assert any(
        _lr(checkpoint) != _lr(donors[(s["run_id"], s["iteration"])])
        for checkpoint, s in inherited
        if (s["run_id"], s["iteration"]) in donors
    )


def test_a_killed_sweep_driver_continues_where_it_stopped(ray_cluster, tmp_path, tiny_config):
    """Three trials one after another; the driver is SIGKILLed while trial 2 is at iteration 20."""
    starts = tmp_path / "starts.txt"
    gate = make_gate(tmp_path / "gate", 20)
    path = _sweep_file(
        tmp_path,
        {**tiny_config, "trainer": "helpers.gated:GatedRegressionTrainer"},
        name="resumable",
        search={"agents._default.learning_rate": {"grid": [0.001, 0.003, 0.01]}},
        max_concurrent_trials=1,
        settings={
            "checkpoint_period": 10,
            "wandb_mode": "disabled",
            "worker_env": {GATE_ENV: gate, SKIP_ENV: "1", STARTS_ENV: str(starts)},
        },
    )
    args = ["sweep", path, "--address", ray_cluster["gcs"], "--storage-path", tmp_path / "runs"]
    proc = _cli(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    iteration, _ = wait_for_gate(tmp_path / "gate")  # trial 2 saved checkpoint 20, and waits
    assert iteration == 20
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = read_starts(starts)
    assert list(before.values()) == [[0], [0]]  # trial 1 finished, trial 2 started

    proc = _cli(args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "continuing sweep resumable" in err
    after = read_starts(starts)
    first, second = before
    assert len(after) == 3
    assert after[first] == [0]  # finished: never trained again
    assert after[second] == [0, 20]  # resumed from its checkpoint 20, not from scratch
    third = next(r for r in after if r not in before)
    assert after[third] == [0]
    summary = json.loads((tmp_path / "runs" / "resumable" / "sweep_summary.json").read_text())
    assert sorted(r["status"] for r in summary["trials"]) == ["DONE"] * 3
    assert all(r["iteration"] == 60 for r in summary["trials"])
    # The resumed trial's last checkpoint descends from its own checkpoint 20.
    resumed = next(r for r in summary["trials"] if r["run_id"] == second)
    source = read_checkpoint(Path(resumed["checkpoint"])).metadata["restored_from"]
    assert (source["run_id"], source["iteration"]) == (second, 20)


def test_pbt_exploits_multi_worker_trials_through_storage(ray_cluster, tmp_path, tiny_config):
    """Two 2-worker trials at once (half a CPU per worker), each 30 iterations."""
    path = _sweep_file(
        tmp_path,
        tiny_config,
        iterations=30,
        name="pbt2",
        search={"agents._default.learning_rate": {"grid": [0.03, 0.0001]}},
        scheduler={
            "type": "pbt",
            "perturbation_interval": 10,
            "quantile_fraction": 0.5,
            "hyperparam_mutations": {"agents._default.learning_rate": {"choice": [0.001, 0.002]}},
        },
        scaling={"num_workers": 2, "cpus_per_worker": 0.5},
    )
    result = sweep(path, settings=ExperimentSettings(storage_path=str(tmp_path / "runs")))
    assert [r["status"] for r in result.trials] == ["DONE"] * 2
    # Each Train run lives beside Tune's trial folders, in raytrainer's own layout.
    runs = {p.name: p for p in (tmp_path / "runs" / "pbt2").iterdir() if p.name.startswith("pbt2-")}
    # A run that continued from another trial's checkpoint and trained on from there (one that
    # took a donor's final checkpoint has nothing left to train).
    exploited = [n for n in runs if "-from-" in n and any(runs[n].glob("checkpoint_*"))]
    assert exploited, f"no trial trained on from another's checkpoint: {sorted(runs)}"
    for name in exploited:
        first = read_checkpoint(sorted(runs[name].glob("checkpoint_*"))[0])
        source = first.metadata["restored_from"]
        donor = read_checkpoint(runs[source["run_id"]] / f"checkpoint_{source['iteration']:06d}")
        assert name.endswith(f"-from-{source['run_id'][5:]}-{donor.iteration}")
        assert first.iteration > donor.iteration
        assert _lr(first) != _lr(donor)  # mutated, and what the optimizer used:
        assert first.state["optimizer"]["param_groups"][0]["lr"] == _lr(first)


def test_asha_over_two_worker_trials_finishes_on_two_cpus(ray_cluster, tmp_path, tiny_config):
    """Three trials of 2 workers on 2 CPUs: one at a time, stopped ones give their CPUs back."""
    path = _sweep_file(
        tmp_path,
        tiny_config,
        iterations=40,
        name="asha2",
        search={"agents._default.learning_rate": {"grid": [0.03, 0.0001, 0.01]}},
        scheduler={"type": "asha", "max_t": 40, "grace_period": 10, "reduction_factor": 2},
        scaling={"num_workers": 2},
    )
    result = sweep(path, settings=ExperimentSettings(storage_path=str(tmp_path / "runs")))
    statuses = sorted(r["status"] for r in result.trials)
    assert len(statuses) == 3 and "ERROR" not in statuses and "STOPPED" in statuses
    best = read_checkpoint(Path(result.best["checkpoint"]))  # the Train run's own checkpoint
    assert best.metadata["run_id"] == result.best["run_id"] and best.metadata["world_size"] == 2
    assert best.iteration == 40
