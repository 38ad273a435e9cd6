"""A truncated newest checkpoint in Ray storage, local and S3: the Ray Train backend's own
candidates (``RayTrainBackend.checkpoint_candidates``) skip it, the run resumes from the one
before, and the redone checkpoint replaces the bad one with the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.gated import STARTS_ENV, read_starts

from raytrainer import ExperimentSettings, load_hyper_params, run, storage
from raytrainer.checkpoint import read_checkpoint
from raytrainer.checkpoint.layout import LoadedCheckpoint

pytestmark = pytest.mark.timeout(600)


def _read(run_uri: str, name: str, local: Path) -> LoadedCheckpoint:
    """Verify and load checkpoint ``name`` of a run in a folder or a bucket."""
    location = storage.join(run_uri, name)
    folder = storage.download_dir(location, local) if storage.is_uri(location) else location
    return read_checkpoint(Path(folder))


def _truncate(location: str) -> None:
    """Cut the last bytes off a file in storage, as a full disk or a partial copy would."""
    fs, path = storage.resolve(location)
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    with fs.open_output_stream(path) as stream:
        stream.write(data[:-7])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_truncated_newest_checkpoint_in_ray_storage_falls_back(
    where, ray_cluster, tiny_config, tmp_path
):
    root = str(tmp_path / "runs") if where == "local" else f"s3://raytrainer/{tmp_path.name}"
    starts = tmp_path / "starts"
    settings = ExperimentSettings(
        storage_path=root,
        checkpoint_period=10,
        num_to_keep=None,  # every folder stays: what is there is what the fallback did
        progress_bar_factory=None,
        worker_env={STARTS_ENV: str(starts)},
    )
    first = run(load_hyper_params(tiny_config, ["num_iterations=20"]), settings)
    run_uri = storage.join(root, first.run_id)
    good = _read(run_uri, "checkpoint_000020", tmp_path / "good")
    _truncate(storage.join(run_uri, "checkpoint_000020", "model.pt"))

    # A longer run continues from the newest checkpoint that verifies: 10, as Ray itself still
    # registers 20 (on S3 it hands that one over; the rest are downloaded).
    longer = run(load_hyper_params(tiny_config, ["num_iterations=30"]), settings)
    assert (longer.run_id, longer.iteration) == (first.run_id, 30)
    assert read_starts(starts) == {first.run_id: [0, 10]}
    assert storage.list_dirs(run_uri) == [
        "checkpoint_000010",
        "checkpoint_000020",
        "checkpoint_000030",
    ]
    redone = _read(run_uri, "checkpoint_000020", tmp_path / "redone")  # verifies: replaced
    final = _read(run_uri, "checkpoint_000030", tmp_path / "final")
    assert redone.metadata["restored_from"]["iteration"] == 10
    assert final.metadata["restored_from"]["iteration"] == 10
    assert storage.read_json(storage.join(run_uri, "complete.json"))["iteration"] == 30
    # Iterations 11-20 redone from 10 give the weights the lost checkpoint held, bitwise.
    assert list(redone.state["model"]) == list(good.state["model"])
    for key, value in good.state["model"].items():
        assert torch.equal(value, redone.state["model"][key]), key
