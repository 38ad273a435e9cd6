from __future__ import annotations

import json

import pytest
import torch

from raytrainer.checkpoint import (
    apply_retention,
    checkpoint_dir_name,
    describe_checkpoint,
    find_checkpoint,
    list_checkpoints,
    read_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from raytrainer.errors import (
    CheckpointCorruptError,
    CheckPointNotFoundError,
    CheckpointStateError,
    CheckpointVersionError,
)

PARAMS = {"schema_version": 1, "params": {"seed": 0}}


def _state(scale: float = 1.0) -> dict:
    return {
        "model": {"w": torch.arange(6.0).reshape(2, 3) * scale, "b": torch.zeros(3)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]},
        "sampler": {"epoch": 2, "position": 48},
        "note": "plain",
    }


def _write(run_dir, iteration, metrics=None, scale=1.0):
    meta = {"iteration": iteration, "metrics": metrics or {}}
    directory = run_dir / checkpoint_dir_name(iteration)
    assert write_checkpoint(directory, _state(scale), PARAMS, meta)["iteration"] == iteration
    return directory


def test_round_trip_splits_plain_and_tensor_state(tmp_path):
    path = _write(tmp_path, 7, {"loss": 0.5})
    assert path.name == "checkpoint_000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "hyper_params.json",
        "metadata.json",
        "model.pt",
        "optimizer.pt",
        "state.json",
    ]
    assert json.loads((path / "state.json").read_text()) == {
        "note": "plain",
        "sampler": {"epoch": 2, "position": 48},
    }
    loaded = read_checkpoint(path)
    assert loaded.iteration == 7
    assert loaded.hyper_params == PARAMS
    assert torch.equal(loaded.state["model"]["w"], _state()["model"]["w"])
    assert loaded.state["optimizer"]["param_groups"] == [{"lr": 0.1}]
    assert loaded.state["sampler"] == {"epoch": 2, "position": 48}
    assert loaded.metadata["schema_version"] == 1
    assert set(loaded.metadata["files"]) == {
        "hyper_params.json",
        "model.pt",
        "optimizer.pt",
        "state.json",
    }


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_metadata", "bad_metadata"])
def test_damaged_checkpoints_are_detected(tmp_path, damage):
    path = _write(tmp_path, 1)
    target = path / "model.pt"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "delete":
        target.unlink()
    elif damage == "no_metadata":
        (path / "metadata.json").unlink()
    else:
        (path / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointCorruptError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    if damage in ("flip", "truncate", "delete"):
        assert "'model.pt'" in message
    assert describe_checkpoint(path)["integrity"].startswith("BAD")


def test_newer_schema_is_refused_naming_both_versions(tmp_path):
    path = _write(tmp_path, 1)
    meta = json.loads((path / "metadata.json").read_text())
    meta["schema_version"] = 99
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointVersionError, match="schema version 99.*up to schema version 1"):
        verify_checkpoint(path)


def test_unpicklable_state_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(CheckpointStateError, match=r"state\['obj'\]\[0\] is a object"):
        write_checkpoint(
            tmp_path / "checkpoint_000001", {"obj": [object()]}, PARAMS, {"iteration": 1}
        )
    with pytest.raises(CheckpointStateError, match="ndarray"):
        import numpy as np

        write_checkpoint(
            tmp_path / "checkpoint_000001",
            {"a": {"t": torch.ones(1), "n": np.ones(2)}},
            PARAMS,
            {"iteration": 1},
        )
    with pytest.raises(CheckpointStateError, match="must be a string"):
        write_checkpoint(tmp_path / "checkpoint_000001", {"../x": 1}, PARAMS, {"iteration": 1})
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_replaced_not_merged(tmp_path):
    stale = tmp_path / "checkpoint_000005"
    stale.mkdir()
    (stale / "leftover.pt").write_bytes(b"half written")
    _write(tmp_path, 5)
    assert not (stale / "leftover.pt").exists()
    assert verify_checkpoint(stale)["iteration"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_000005"]  # no temp folders left


def test_listing_ignores_temporary_folders_and_finds_versions(tmp_path):
    for it in (3, 10, 2):
        _write(tmp_path, it)
    (tmp_path / ".tmp-checkpoint_000011-abcd").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint_000002",
        "checkpoint_000003",
        "checkpoint_000010",
    ]
    assert find_checkpoint(tmp_path).name == "checkpoint_000010"
    assert find_checkpoint(tmp_path, "3").name == "checkpoint_000003"
    assert find_checkpoint(tmp_path, "checkpoint_000002").name == "checkpoint_000002"
    with pytest.raises(CheckPointNotFoundError, match="no checkpoint '4'"):
        find_checkpoint(tmp_path, "4")
    with pytest.raises(CheckPointNotFoundError):
        find_checkpoint(tmp_path / "empty")


def test_retention_keeps_newest(tmp_path):
    for it in range(1, 6):
        _write(tmp_path, it)
    deleted = apply_retention(tmp_path, 2)
    assert [p.name for p in deleted] == [
        "checkpoint_000001",
        "checkpoint_000002",
        "checkpoint_000003",
    ]
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint_000004",
        "checkpoint_000005",
    ]


@pytest.mark.parametrize(
    ("order", "latest_loss", "kept"),
    [("min", 0.85, [1, 3, 5]), ("max", 0.15, [2, 4, 5]), ("min", 0.05, [1, 3, 5])],
)
def test_retention_by_score_always_keeps_the_latest(tmp_path, order, latest_loss, kept):
    # In the first two cases the latest checkpoint is not among the best three: it is kept
    # in place of the worst of them.
    losses = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.8, 5: latest_loss}
    for it, loss in losses.items():
        _write(tmp_path, it, {"loss": loss})
    apply_retention(tmp_path, 3, "loss", order)
    assert [int(p.name[-6:]) for p in list_checkpoints(tmp_path)] == kept
