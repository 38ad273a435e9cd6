"""The same trainer as Ray Train workers: equality with in-process, worker and driver kills,
S3 storage, and the driver's progress bar. One Ray instance serves the module."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
import yaml
from helpers.gated import (
    GATE_ENV,
    SAMPLES_ENV,
    SIGTERM_ENV,
    STARTS_ENV,
    make_gate,
    read_starts,
    wait_for_gate,
)
from test_trainer_api import Recorder

from raytrainer import (
    ExperimentSettings,
    RunResult,
    Scaling,
    ShardedBatchSampler,
    load_hyper_params,
    run,
    run_local,
)
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.storage import download_dir

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def _config(tiny_config):
    return {**tiny_config, "num_iterations": 40}


def _final_model(run_dir: Path) -> dict:
    return read_checkpoint(list_checkpoints(run_dir)[-1]).state["model"]


def _assert_bitwise(reference: dict, resumed: dict) -> None:
    assert list(reference) == list(resumed)
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key


def _settings(storage, **kw):
    return ExperimentSettings(storage_path=str(storage), checkpoint_period=10, **kw)


def _cli_args(hp, storage: str, ray_cluster, tmp_path) -> list[str]:
    """`raytrainer run` of ``hp`` on 2 workers of the test cluster, as a user would type it."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(hp.to_dict()))
    return [
        sys.executable,
        "-m",
        "raytrainer.cli",
        "run",
        str(config),
        "--num-workers",
        "2",
        "--storage-path",
        storage,
        "--checkpoint-period",
        "10",
        "--no-progress",
        "--address",
        ray_cluster["gcs"],
    ]


def _start_gated_driver(args: list[str], tmp_path: Path, **popen) -> subprocess.Popen:
    """Start the driver and return once rank 0 is blocked right after checkpoint 20."""
    gate = make_gate(tmp_path / "gate", 20)
    driver = subprocess.Popen([*args, "--worker-env", f"{GATE_ENV}={gate}"], cwd=REPO, **popen)
    assert wait_for_gate(tmp_path / "gate")[0] == 20
    return driver


@pytest.fixture(scope="module")
def two_workers(ray_cluster, tmp_path_factory):
    """An uninterrupted 2-worker run: the reference for the tests below."""
    from conftest import tiny_config as tiny  # the fixture's function, called directly

    hp = load_hyper_params(_config(tiny.__wrapped__()))
    storage = tmp_path_factory.mktemp("two_workers")
    recorder = Recorder()
    settings = _settings(storage, progress_bar_factory=recorder, log_period=10)
    result = run(hp, settings, Scaling(num_workers=2))
    return hp, storage, result, recorder


def test_two_workers_keep_the_layout_and_draw_one_bar(two_workers):
    hp, storage, result, recorder = two_workers
    run_dir = storage / result.run_id
    assert result.iteration == 40 and set(result.metrics) == {"loss"}
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "checkpoint_000020",
        "checkpoint_000030",
        "checkpoint_000040",
    ]  # num_to_keep=3 through Ray's CheckpointConfig
    final = read_checkpoint(run_dir / "checkpoint_000040")
    assert final.metadata["world_size"] == 2
    assert sorted(final.state["_rng"]) == [0, 1]  # every rank's generators, kept by rank 0
    assert (run_dir / "complete.json").is_file()
    # One bar on the driver, fed by rank 0: its count, and the metrics it logged live.
    postfix = {"loss": f"{result.metrics['loss']:.4g}"}
    assert recorder.bars == [
        {"total": 40, "initial": 0, "n": 40, "closed": True, "postfix": postfix}
    ]

    again = run(hp, _settings(storage), Scaling(num_workers=2))
    assert again.already_complete and again.iteration == 40


def test_two_workers_match_in_process_on_the_same_global_batch(ray_cluster, tiny_config, tmp_path):
    # Without dropout: per-sample random masks cannot match across world sizes.
    hp = load_hyper_params(
        {**_config(tiny_config), "dropout": 0.0, "trainer": "helpers.gated:PeakScoreTrainer"}
    )
    # Retention by a score that is the same on both runners and best at iteration 20: Ray keeps
    # the best plus the newest, and so must the in-process runner.
    kw = {
        "progress_bar_factory": None,
        "num_to_keep": 1,
        "checkpoint_score_metric": "score",
        "checkpoint_score_order": "max",
    }
    ray_result = run(hp, _settings(tmp_path / "ray", **kw), Scaling(num_workers=2))
    local_result = run_local(hp, _settings(tmp_path / "local", **kw))
    on_ray = _final_model(tmp_path / "ray" / ray_result.run_id)
    in_process = _final_model(tmp_path / "local" / local_result.run_id)
    assert list(on_ray) == list(in_process)
    for key, value in on_ray.items():  # gloo's all-reduce order differs: float tolerance
        torch.testing.assert_close(value, in_process[key], rtol=1e-4, atol=1e-5)
    kept = {
        runner: [p.name for p in list_checkpoints(tmp_path / runner / result.run_id)]
        for runner, result in (("ray", ray_result), ("local", local_result))
    }
    assert kept["ray"] == kept["local"] == ["checkpoint_000020", "checkpoint_000040"]
    assert ray_result.best_checkpoint == local_result.best_checkpoint == "checkpoint_000020"


def test_a_test_run_on_ray_resumes_and_leaves_the_real_run_alone(two_workers, tmp_path):
    hp, storage, result, _ = two_workers
    before = {p: p.read_bytes() for p in sorted(storage.rglob("*")) if p.is_file()}
    changed = load_hyper_params(hp.to_dict(), ["agents._default.learning_rate=0.5"])
    dry = run(
        changed,
        _settings(
            storage,
            run_id=result.run_id,  # the real run's id, as `raytrainer run --run-id` would give
            progress_bar_factory=None,
            test_run=4,
            wandb_mode="offline",
        ),
        Scaling(num_workers=2),
    )
    assert dry.run_id.startswith(f"{result.run_id}-test-") and dry.iteration == 4
    assert not Path(dry.storage_uri).exists()  # the throwaway folder is gone
    assert {p: p.read_bytes() for p in sorted(storage.rglob("*")) if p.is_file()} == before


def test_sigkilled_worker_resumes_bitwise(two_workers, tmp_path):
    hp, ref_storage, ref, _ = two_workers
    gate = make_gate(tmp_path / "gate", 20)
    killed = []

    def kill_at_gate():
        iteration, pid = wait_for_gate(tmp_path / "gate")
        os.kill(pid, signal.SIGKILL)
        killed.append(iteration)

    killer = threading.Thread(target=kill_at_gate, daemon=True)
    killer.start()
    starts = tmp_path / "starts.txt"
    settings = _settings(
        tmp_path / "runs",
        max_failures=1,
        worker_env={GATE_ENV: gate, STARTS_ENV: str(starts)},
        progress_bar_factory=None,
    )
    result = run(hp, settings, Scaling(num_workers=2))
    killer.join(timeout=5)
    assert killed == [20]
    assert result.iteration == 40
    # The restarted worker group resumed from checkpoint 20; a restart from scratch would
    # end with the same weights too (training is deterministic), so this is what tells.
    assert read_starts(starts) == {result.run_id: [0, 20]}
    reference = _final_model(ref_storage / ref.run_id)
    resumed = _final_model(tmp_path / "runs" / result.run_id)
    _assert_bitwise(reference, resumed)


def test_killed_driver_resumes_from_s3(ray_cluster, s3_server, tmp_path, two_workers):
    hp, ref_storage, ref, _ = two_workers
    uri = "s3://raytrainer/driver-kill"
    args = _cli_args(hp, uri, ray_cluster, tmp_path)
    driver = _start_gated_driver(
        args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    prefix = f"raytrainer/driver-kill/{ref.run_id}"
    listed = s3_server.get_file_info(pafs.FileSelector(prefix))
    assert f"{prefix}/checkpoint_000020" in {i.path for i in listed}
    assert f"{prefix}/complete.json" not in {i.path for i in listed}

    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    # Named by its URI, not by the temporary copy a worker reads it from.
    assert f"resuming run {ref.run_id} from s3://{prefix}/checkpoint_000020" in done.stderr
    assert "complete at iteration 40" in done.stdout
    local = download_dir(f"s3://{prefix}/checkpoint_000040", tmp_path / "from_s3")
    resumed = read_checkpoint(local).state["model"]
    reference = _final_model(ref_storage / ref.run_id)
    _assert_bitwise(reference, resumed)


def test_sigterm_on_the_driver_saves_on_every_rank_at_one_step_and_resumes(
    ray_cluster, tmp_path, two_workers
):
    hp, ref_storage, ref, _ = two_workers
    storage = str(tmp_path / "stopped")
    args = _cli_args(hp, storage, ray_cluster, tmp_path)
    pid_file = tmp_path / "driver.pid"
    driver = subprocess.Popen(
        [*args, "--worker-env", f"{SIGTERM_ENV}=15:{pid_file}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pid_file.write_text(str(driver.pid))  # read by rank 0 at iteration 15, long after this
    out, err = driver.communicate(timeout=400)
    assert driver.returncode == 143, err[-3000:]
    assert f"run {ref.run_id} stopped at iteration 15 (SIGTERM)" in err
    run_dir = tmp_path / "stopped" / ref.run_id
    assert [p.name for p in list_checkpoints(run_dir)][-1] == "checkpoint_000015"
    assert not (run_dir / "complete.json").exists()

    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming run {ref.run_id} from {run_dir / 'checkpoint_000015'}" in done.stderr
    _assert_bitwise(_final_model(ref_storage / ref.run_id), _final_model(run_dir))


def test_ray_job_submit_runs_the_example(ray_cluster, tmp_path):
    storage = tmp_path / "job_runs"  # absolute: the job's working directory is temporary
    command = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        ray_cluster["dashboard"],
        "--working-dir",
        str(REPO),
        "--",
        "raytrainer",
        "run",
        "examples/regression.yaml",
        "--num-workers",
        "2",
        "--set",
        "num_iterations=30",
        "--set",
        "num_samples=512",
        "--set",
        "hidden_dim=16",
        "--checkpoint-period",
        "10",
        "--storage-path",
        str(storage),
        "--no-progress",
    ]
    job = subprocess.run(command, capture_output=True, text=True, timeout=500)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower()
    (run_dir,) = storage.iterdir()
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "checkpoint_000010",
        "checkpoint_000020",
        "checkpoint_000030",
    ]
    assert read_checkpoint(run_dir / "checkpoint_000030").metadata["world_size"] == 2
    assert (run_dir / "complete.json").is_file()
    # Clean output: Ray Train's per-report lines are off, and the run ends with its summary.
    assert "Reporting training result" not in job.stdout
    assert f"run {run_dir.name} complete at iteration 30: metrics loss=" in job.stdout


def test_a_worker_that_cannot_start_ends_the_run_with_its_error(ray_cluster, tiny_config, tmp_path):
    from raytrainer import RunFailedError

    hp = load_hyper_params({**tiny_config, "trainer": "helpers.gated:BrokenTrainer"})
    with pytest.raises(RunFailedError) as info:
        run(hp, _settings(tmp_path, progress_bar_factory=None), Scaling(num_workers=2))
    assert "hidden_dim must be even" in str(info.value)
    assert "failed after 0 restart(s)" in str(info.value)


def test_ctrl_c_on_the_driver_stops_cleanly_and_the_rerun_resumes(
    ray_cluster, tmp_path, two_workers
):
    hp, ref_storage, ref, _ = two_workers
    args = _cli_args(hp, str(tmp_path / "runs"), ray_cluster, tmp_path)
    driver = _start_gated_driver(
        args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-3000:]
    assert "interrupted; run the same command again to resume" in err
    run_dir = tmp_path / "runs" / ref.run_id
    assert not (run_dir / "complete.json").exists()

    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming run {ref.run_id} from {run_dir / 'checkpoint_000020'}" in (
        done.stdout + done.stderr
    )
    reference = _final_model(ref_storage / ref.run_id)
    resumed = _final_model(run_dir)
    _assert_bitwise(reference, resumed)


def test_retention_counts_every_attempt_across_runner_switches(ray_cluster, tiny_config, tmp_path):
    """In-process to 20 keeping all, then on Ray, in-process and Ray again keeping 2."""
    storage = tmp_path / "switch"

    def leg(iterations: int, on_ray: bool, num_to_keep: int | None) -> list[str]:
        hp = load_hyper_params({**tiny_config, "num_iterations": iterations})
        settings = ExperimentSettings(
            storage_path=str(storage),
            run_id="switch",
            checkpoint_period=5,
            num_to_keep=num_to_keep,
            progress_bar_factory=None,
        )
        result = run(hp, settings, Scaling(num_workers=1)) if on_ray else run_local(hp, settings)
        assert result.iteration == iterations
        return [p.name for p in list_checkpoints(storage / "switch")]

    assert leg(20, False, None) == [f"checkpoint_0000{i:02d}" for i in (5, 10, 15, 20)]
    # Ray's own count would see only the two checkpoints reported to it and keep all six.
    assert leg(30, True, 2) == ["checkpoint_000025", "checkpoint_000030"]
    assert (storage / "switch" / "checkpoint_manager_snapshot.json").exists()
    # In-process retention deletes what Ray's snapshot names; the next Ray start must not
    # trust it ("The run snapshot contains a reference to a checkpoint that does not exist").
    assert leg(40, False, 2) == ["checkpoint_000035", "checkpoint_000040"]
    assert leg(50, True, 2) == ["checkpoint_000045", "checkpoint_000050"]


def test_another_worker_count_keeps_the_global_order_and_reproduces(
    ray_cluster, tiny_config, tmp_path, monkeypatch
):
    """2 Ray workers to 10, then twice: in-process to 20, an elastic Ray run (1-2 workers) to 30.

    The 2-worker leg is shared (copied): its determinism is other tests' business; what must
    reproduce is what the count changes derive.
    """

    def leg(storage: Path, log: Path, iterations: int, scaling: Scaling | None) -> RunResult:
        monkeypatch.setenv(SAMPLES_ENV, str(log))  # the in-process leg
        settings = _settings(storage, progress_bar_factory=None)
        hp = load_hyper_params({**tiny_config, "num_iterations": iterations})
        if scaling is None:
            return run_local(hp, settings)
        return run(hp, dataclasses.replace(settings, worker_env={SAMPLES_ENV: str(log)}), scaling)

    (tmp_path / "shared-samples").mkdir()
    leg(tmp_path / "shared", tmp_path / "shared-samples", 10, Scaling(num_workers=2))
    finals = []
    for attempt in ("first", "second"):
        storage, log = tmp_path / attempt, tmp_path / f"{attempt}-samples"
        shutil.copytree(tmp_path / "shared", storage)
        shutil.copytree(tmp_path / "shared-samples", log)
        leg(storage, log, 20, None)
        result = leg(storage, log, 30, Scaling(num_workers=(1, 2)))
        hp = load_hyper_params(tiny_config)
        run_dir = storage / result.run_id
        sizes = [read_checkpoint(c).metadata["world_size"] for c in list_checkpoints(run_dir)]
        assert sizes == [2, 1, 2]  # the elastic leg got both CPUs of the instance
        # Each step read exactly the global batch one process reads, across the count changes.
        read: dict[int, list[int]] = {}
        for part in log.iterdir():
            for line in part.read_text().splitlines():
                step, *indices = map(int, line.split())
                read.setdefault(step, []).extend(indices)
        one_process = ShardedBatchSampler(hp.num_samples, hp.batch_size, hp.seed)
        expected = {step: one_process.next_batch().tolist() for step in range(1, 31)}
        assert {step: sorted(i) for step, i in read.items()} == {
            step: sorted(i) for step, i in expected.items()
        }
        finals.append(_final_model(run_dir))
    _assert_bitwise(*finals)  # the same sequence of worker counts reproduces bitwise


def test_rank_zero_trains_on_when_the_drivers_status_actor_is_lost(ray_cluster, caplog):
    import ray

    from raytrainer.runners.ray_train import RunStatusActor, _RemoteBar, _StopPoll

    actor = RunStatusActor.remote()
    bar, stop = _RemoteBar(actor, total=10, initial=0), _StopPoll(actor)
    bar.update()
    ray.get(actor.request_stop.remote())
    ray.wait([stop._pending], timeout=30)  # the first answer (no stop yet) is in
    assert stop() is False
    ray.wait([stop._pending], timeout=30)  # asked again, without waiting: now yes
    assert stop() is True and ray.get(actor.get.remote())[2] == 1  # the bar's one step
    lost = RunStatusActor.remote()
    bar, stop = _RemoteBar(lost, total=10, initial=0), _StopPoll(lost)
    ray.kill(lost)
    ray.wait([bar._last, stop._pending], num_returns=2, timeout=30)  # both failed by now
    for _ in range(3):
        bar.update()  # never raises; warns once
        assert stop() is False
    assert caplog.text.count("the driver's status actor is unreachable (") == 1
