"""Every backend passes the same checks: persist, then candidates newest first, corrupt skipped.

Each runs where it runs for real: the local backend in this process, the Ray Train backend in
a Ray Train worker, the Tune backend in a Tune trial.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.contract import ITERATIONS, exercise, ray_train_worker, tune_trial

from raytrainer import ExperimentSettings, load_hyper_params
from raytrainer.build import local_settings


def _local(tmp_path, config):
    settings = local_settings(
        load_hyper_params(config),
        ExperimentSettings(
            storage_path=str(tmp_path / "runs"), run_id="contract", num_to_keep=None
        ),
    )
    return exercise(settings.backend, settings, config)


def _ray_train(tmp_path, config):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = tmp_path / "contract.json"
    storage = str(tmp_path / "runs")
    TorchTrainer(
        train_loop_per_worker=ray_train_worker,
        train_loop_config={
            "run_id": "contract",
            "storage_path": storage,
            "hyper_params": config,
            "out": str(out),
        },
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="contract", storage_path=storage),
    ).fit()
    return json.loads(out.read_text())


def _tune(tmp_path, config):
    from ray import tune

    out = tmp_path / "contract.json"
    tune.Tuner(
        tune_trial,
        param_space={"hyper_params": config, "out": str(out)},
        run_config=tune.RunConfig(name="contract", storage_path=str(tmp_path / "runs")),
    ).fit()
    return json.loads(out.read_text())


@pytest.mark.parametrize("backend", ["local", "ray_train", "tune"])
def test_backend_contract(backend, request, tmp_path, tiny_config):
    if backend == "local":
        seen = _local(tmp_path, tiny_config)
    else:
        request.getfixturevalue("ray_cluster")
        seen = (_ray_train if backend == "ray_train" else _tune)(tmp_path, tiny_config)
    run_dir = tmp_path / "runs" / "contract"
    names = [f"checkpoint_{i:06d}" for i in ITERATIONS]
    if backend == "tune":  # a trial folder in the sweep folder; Tune numbers by report
        run_dir = Path(seen["storage_uri"])
        assert run_dir.parent == tmp_path / "runs" / "contract"
        names = [f"checkpoint_{i:06d}" for i in range(len(ITERATIONS))]
    assert seen["storage_uri"] == str(run_dir)
    assert seen["locations"] == [str(run_dir / name) for name in names]  # persist says where
    assert seen["verified"] == list(ITERATIONS)  # and it is there, complete
    assert seen["candidates"] == names[::-1]  # newest first
    # The newest was truncated in storage: it is skipped with a warning naming it, and the
    # one before is restored, weights and plain state alike.
    assert seen["restored"]["iteration"] == 20 and seen["restored"]["step"] == 20
    assert seen["restored"]["weights"] == [20.0] * 4
    assert seen["restored"]["metrics"] == {"loss": 1 / 20}
    assert any("skipping corrupt checkpoint" in w and names[-1] in w for w in seen["warnings"])
