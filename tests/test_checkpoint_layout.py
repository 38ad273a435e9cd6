from __future__ import annotations

import hashlib
import json
import logging
import threading

import pytest
import torch
import xxhash

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
from raytrainer.checkpoint.layout import file_digest
from raytrainer.errors import (
    CheckpointCorruptError,
    CheckPointNotFoundError,
    CheckpointSaveError,
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


def _as_schema_1(path):
    """Rewrite a checkpoint's metadata in the schema-1 form: a bare SHA-256 hex per file.

    Raytrainer before XXH3-128 wrote the same files; only these entries and the schema version
    differ (checked against a checkpoint written by that code).
    """
    meta = json.loads((path / "metadata.json").read_text())
    meta["schema_version"] = 1
    meta["files"] = {
        name: {"sha256": hashlib.sha256((path / name).read_bytes()).hexdigest(), "size": e["size"]}
        for name, e in meta["files"].items()
    }
    (path / "metadata.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return path


def _damage(path, damage):
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
    assert loaded.metadata["schema_version"] == 2
    assert set(loaded.metadata["files"]) == {
        "hyper_params.json",
        "model.pt",
        "optimizer.pt",
        "state.json",
    }


def test_new_checkpoints_record_xxh3_128_digests(tmp_path):
    path = _write(tmp_path, 1)
    files = json.loads((path / "metadata.json").read_text())["files"]
    for name, entry in files.items():
        data = (path / name).read_bytes()
        assert entry == {"digest": f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}", "size": len(data)}
        assert file_digest(path / name) == entry["digest"]
    assert file_digest(path / "model.pt", "sha256").startswith("sha256:")
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        file_digest(path / "model.pt", "md5")


def test_schema_1_sha256_checkpoints_still_load(tmp_path):
    path = _as_schema_1(_write(tmp_path, 4, {"loss": 0.25}, scale=2.0))
    entry = json.loads((path / "metadata.json").read_text())["files"]["model.pt"]
    assert set(entry) == {"sha256", "size"} and len(entry["sha256"]) == 64
    loaded = read_checkpoint(path)
    assert loaded.iteration == 4 and loaded.metadata["schema_version"] == 1
    assert torch.equal(loaded.state["model"]["w"], _state(2.0)["model"]["w"])
    assert loaded.state["sampler"] == {"epoch": 2, "position": 48}
    assert describe_checkpoint(path)["integrity"] == "ok"
    assert find_checkpoint(tmp_path) == path


@pytest.mark.parametrize("schema", [2, 1])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_metadata", "bad_metadata"])
def test_damaged_checkpoints_are_detected(tmp_path, damage, schema):
    path = _write(tmp_path, 1)
    if schema == 1:
        _as_schema_1(path)
    _damage(path, damage)
    with pytest.raises(CheckpointCorruptError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    if damage in ("flip", "truncate", "delete"):
        assert "'model.pt'" in message
    assert describe_checkpoint(path)["integrity"].startswith("BAD")


@pytest.mark.parametrize("schema", [2, 1])
def test_a_flipped_byte_with_the_size_unchanged_is_found_by_the_digest(tmp_path, schema):
    # The size check alone would pass: only the digest (XXH3-128 or SHA-256) catches this.
    path = _write(tmp_path, 1)
    if schema == 1:
        _as_schema_1(path)
    state = path / "state.json"
    state.write_bytes(state.read_bytes().replace(b'"plain"', b'"plaim"'))
    with pytest.raises(CheckpointCorruptError, match="'state.json' does not match"):
        verify_checkpoint(path)


@pytest.mark.parametrize(
    ("entry", "error", "match"),
    [
        ({"digest": "blake9:00", "size": 1}, CheckpointVersionError, "algorithm 'blake9'"),
        ({"digest": "00ff", "size": 1}, CheckpointCorruptError, "unreadable metadata.json entry"),
        ({"size": 1}, CheckpointCorruptError, "unreadable metadata.json entry"),
    ],
)
def test_unknown_or_malformed_digest_entries_are_refused(tmp_path, entry, error, match):
    path = _write(tmp_path, 1)
    meta = json.loads((path / "metadata.json").read_text())
    meta["files"]["model.pt"] = entry
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(error, match=match):
        verify_checkpoint(path)


def test_newer_schema_is_refused_naming_both_versions(tmp_path):
    path = _write(tmp_path, 1)
    meta = json.loads((path / "metadata.json").read_text())
    meta["schema_version"] = 99
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointVersionError, match="schema version 99.*up to schema version 2"):
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
    assert deleted == [
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
    [("min", 0.85, [1, 3, 4, 5]), ("max", 0.15, [2, 3, 4, 5]), ("min", 0.05, [1, 3, 5])],
)
def test_retention_by_score_always_keeps_the_latest(tmp_path, order, latest_loss, kept):
    # As Ray Train keeps them: the three best, plus the latest when it is not among them.
    losses = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.8, 5: latest_loss}
    for it, loss in losses.items():
        _write(tmp_path, it, {"loss": loss})
    apply_retention(tmp_path, 3, "loss", order)
    assert [int(p.name[-6:]) for p in list_checkpoints(tmp_path)] == kept


def test_a_background_save_works_on_a_copy_one_at_a_time_and_names_its_failure():
    from raytrainer.checkpoint.checkpointer import BackgroundSave, snapshot

    weights = torch.zeros(3)
    state = {"model": {"w": weights}, "sampler": {"position": 4}, "steps": [torch.ones(1)]}
    copy = snapshot(state)
    weights += 1  # training goes on with the originals
    assert torch.equal(copy["model"]["w"], torch.zeros(3)) and copy["sampler"] == {"position": 4}
    assert copy["steps"][0] is not state["steps"][0]

    saves, order = BackgroundSave(), []
    release = threading.Event()
    saves.submit("checkpoint_000010", lambda: (release.wait(), order.append(10)))
    release.set()
    saves.submit("checkpoint_000020", lambda: order.append(20))
    assert order[0] == 10  # the first was done before the second started
    saves.wait()
    assert order == [10, 20]

    def fail() -> None:
        raise OSError("bucket unreachable")

    saves.submit("checkpoint_000030", fail)
    with pytest.raises(CheckpointSaveError, match=r"saving checkpoint_000030 failed .*unreachable"):
        saves.wait()
    saves.wait()  # reported once


def test_an_upload_replaces_a_partial_copy_retries_and_names_its_failure(tmp_path, caplog):
    from raytrainer.checkpoint.layout import upload_checkpoint

    source = _write(tmp_path / "staging", 10)
    storage = tmp_path / "storage"
    storage.mkdir()
    blocker = storage / "run"  # a file where the run's folder goes: every copy fails
    blocker.write_text("not a folder")

    class Unblock(logging.Handler):  # the first retry warning clears the way
        def emit(self, record: logging.LogRecord) -> None:
            if "attempt 2 of 3" in record.getMessage():
                blocker.unlink()

    handler = Unblock()
    logging.getLogger("raytrainer").addHandler(handler)
    try:
        upload_checkpoint(source, str(storage / "run" / source.name), backoff_s=0)
    finally:
        logging.getLogger("raytrainer").removeHandler(handler)
    assert "uploading checkpoint_000010 to" in caplog.text and "attempt 2 of 3" in caplog.text
    copied = storage / "run" / source.name
    assert verify_checkpoint(copied)["iteration"] == 10  # every file, digests intact
    # A partial folder left at the destination is replaced, not merged.
    (copied / "leftover.pt").write_bytes(b"x")
    upload_checkpoint(source, str(copied))
    assert not (copied / "leftover.pt").exists()
    with pytest.raises(CheckpointSaveError, match=r"uploading checkpoint_000010 to .* 2 times"):
        upload_checkpoint(source, str(source / "metadata.json" / "x"), 2, 0)
