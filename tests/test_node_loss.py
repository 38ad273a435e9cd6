"""A run on a two-node Ray cluster loses the node under its worker three times, is preempted
once, and finishes.

Its storage is the loopback S3 server, and the cluster starts without its credentials: they
reach every Ray process of the run (the workers and Ray Train's controller, which writes to
storage too) only through ``--worker-env``.

The cluster is ``ray.cluster_utils.Cluster`` on this machine, driven by
``tests/helpers/node_loss.py`` in its own process (it owns a Ray cluster apart from the tests'
shared one); the uninterrupted reference runs on the shared instance, one worker as well.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from raytrainer import ExperimentSettings, Scaling, load_hyper_params, run
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.storage import download_dir, list_dirs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_a_run_outlives_its_worker_node_removed_three_times_and_one_drained(
    ray_cluster, s3_server, tiny_config, tmp_path
):
    hp = load_hyper_params({**tiny_config, "num_iterations": 40})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(hp.to_dict()))
    settings = ExperimentSettings(
        storage_path=str(tmp_path / "reference"), checkpoint_period=5, progress_bar_factory=None
    )
    reference = run(hp, settings, Scaling(num_workers=1))

    helper = REPO / "tests" / "helpers" / "node_loss.py"
    uri = f"s3://raytrainer/node-loss-{uuid.uuid4().hex[:8]}"
    args = [str(config), uri, str(tmp_path / "gates"), "10", "20", "30", "drain:33"]
    done = subprocess.run(
        [sys.executable, str(helper), *args], capture_output=True, text=True, timeout=840
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["returncode"] == 0, report["stderr"]
    # Rank 0's node was removed at 10, 20 and 30, and drained at 33 (the notice seen there).
    assert report["stopped"] == [10, 20, 30, 33]
    (notice,) = report["notices"]  # rank 0's one line
    assert "is being preempted; saved a checkpoint at iteration 33" in notice, notice
    assert report["helpers_on"] == ["head"]  # the driver's node: no worker node takes it along
    # The storage's credentials, given only with --worker-env, reached Ray Train's controller
    # and the workers (both write to the bucket; without them the server refuses) and none of
    # Ray's logs nor the driver's output holds the secret key.
    assert report["secret_in"] == []
    (run_id,) = list_dirs(uri)
    final = read_checkpoint(download_dir(f"{uri}/{run_id}/checkpoint_000040", tmp_path / "final"))
    assert final.iteration == 40
    # The drained group saved at the notice, between checkpoints (every 5): the restarted one
    # resumed there, losing no iteration.
    assert final.metadata["restored_from"]["iteration"] == 33
    expected = read_checkpoint(list_checkpoints(tmp_path / "reference" / reference.run_id)[-1])
    for key, value in expected.state["model"].items():
        assert torch.equal(value, final.state["model"][key]), key
