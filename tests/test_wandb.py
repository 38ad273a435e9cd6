"""W&B for real in offline mode; the calls that need a server through the client seam."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
import xxhash
from helpers.gated import GatedRegressionTrainer
from helpers.wandb_records import artifact_records, read_records

from raytrainer import ExperimentSettings, Scaling, build_trainer, load_hyper_params, run, run_local
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.checkpoint.layout import recorded_digest
from raytrainer.checkpoint.wandb_mirror import WandbClient

SECRET = "sk-raytrainer-test-secret-0123456789"


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def _xxh128(path: Path) -> str:
    return base64.b64encode(xxhash.xxh128(path.read_bytes()).digest()).decode()


def _wandb_env(root: Path) -> dict[str, str]:
    env = {
        var: str(root / var.lower())
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")
    }
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    return env


class RaisingClient(WandbClient):
    def init(self, **kwargs):
        raise ConnectionError("W&B is down")


class HangingClient(WandbClient):
    def init(self, **kwargs):
        threading.Event().wait()  # never returns, like a W&B init behind a dead proxy


class RaisingTrainer(GatedRegressionTrainer):
    wandb_client_cls = RaisingClient


class HangingTrainer(GatedRegressionTrainer):
    wandb_client_cls = HangingClient


class ServedClient(WandbClient):
    """Stands in for a W&B server: serves one real checkpoint folder, records the path asked."""

    served: Path
    requested: list[str] = []

    def download_artifact(self, path, root):
        ServedClient.requested.append(path)
        shutil.copytree(self.served, root)
        return Path(root)


class ServedTrainer(GatedRegressionTrainer):
    wandb_client_cls = ServedClient


def test_ray_run_mirrors_every_checkpoint_offline(ray_cluster, tiny_config, tmp_path):
    env = _wandb_env(tmp_path / "wandb")
    hp = load_hyper_params(tiny_config)  # 30 iterations: checkpoints 10, 20, 30
    settings = ExperimentSettings(
        storage_path=str(tmp_path / "runs"),
        checkpoint_period=10,
        progress_bar_factory=None,
        wandb_mode="offline",
        wandb_tags=("ci",),
        checkpoint_score_metric="loss",
        checkpoint_score_order="min",
        worker_env={**env, "WANDB_API_KEY": SECRET},
    )
    result = run(hp, settings, Scaling(num_workers=2))
    assert result.unmirrored == []
    run_dir = tmp_path / "runs" / result.run_id
    artifacts = artifact_records(tmp_path / "wandb")
    assert [a.name for a in artifacts] == [f"state_{result.run_id}"] * 3
    assert all(a.type == "checkpoint" for a in artifacts)
    for artifact, iteration in zip(artifacts, (10, 20, 30), strict=True):
        assert {"latest", f"iter-{iteration}"} <= set(artifact.aliases)
        metadata = json.loads(artifact.metadata)
        assert metadata["iteration"] == iteration
        assert metadata["storage_uri"] == str(run_dir / f"checkpoint_{iteration:06d}")
        checkpoint = run_dir / f"checkpoint_{iteration:06d}"
        entries = {e.path: e for e in artifact.manifest.contents}
        assert set(entries) == {p.name for p in checkpoint.iterdir()}
        assert metadata["digests"] == {
            k: recorded_digest(v) for k, v in read_checkpoint(checkpoint).metadata["files"].items()
        }
        for name, entry in entries.items():
            assert entry.digest == _xxh128(checkpoint / name), name
            # Kept beside the offline run for `wandb sync`, outliving the run's staging folder.
            staged = Path(entry.local_path)
            assert staged.parent.parent.name == "raytrainer-staging"
            assert staged.parent.parent.parent.name.startswith("offline-run-")
            assert _md5(staged) == _md5(checkpoint / name)
    best = [a for a in artifacts if "best" in a.aliases]
    losses = [json.loads(a.metadata)["metrics"]["loss"] for a in artifacts]
    assert best and json.loads(best[-1].metadata)["metrics"]["loss"] == min(losses)

    records = [r for p in (tmp_path / "wandb").rglob("run-*.wandb") for r in read_records(p)]
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    assert {item.key for item in config.update} >= {"seed", "batch_size", "agents"}
    logged_steps = [
        json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
        if (item.key or "/".join(item.nested_key)) == "iteration"
    ]
    assert logged_steps == [10, 20, 30]
    for path in [*run_dir.rglob("*"), *(tmp_path / "wandb").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_unreachable_wandb_never_costs_a_checkpoint(tiny_config, tmp_path, quiet_logs):
    hp = load_hyper_params({**tiny_config, "trainer": "test_wandb:RaisingTrainer"})
    settings = ExperimentSettings(
        storage_path=str(tmp_path),
        checkpoint_period=10,
        progress_bar_factory=None,
        wandb_mode="online",
        wandb_flush_timeout=2.0,
    )
    result = run_local(hp, settings)
    assert result.iteration == 30
    names = ["checkpoint_000010", "checkpoint_000020", "checkpoint_000030"]
    assert [p.name for p in list_checkpoints(tmp_path / result.run_id)] == names
    assert all(name in result.unmirrored for name in names)
    messages = [r.getMessage() for r in quiet_logs.records]
    assert any("wandb.init failed" in m and "W&B is down" in m for m in messages)
    assert any("not mirrored" in m and all(n in m for n in names) for m in messages)


def test_hanging_wandb_under_ray_finishes_and_names_what_was_missed(
    ray_cluster, tiny_config, tmp_path
):
    hp = load_hyper_params({**tiny_config, "trainer": "test_wandb:HangingTrainer"})
    settings = ExperimentSettings(
        storage_path=str(tmp_path),
        checkpoint_period=10,
        progress_bar_factory=None,
        wandb_mode="offline",
        wandb_flush_timeout=1.0,
    )
    result = run(hp, settings, Scaling(num_workers=2))
    names = ["checkpoint_000010", "checkpoint_000020", "checkpoint_000030"]
    assert [p.name for p in list_checkpoints(tmp_path / result.run_id)] == names
    assert [n for n in result.unmirrored if n.startswith("checkpoint_")] == names


def test_base_run_from_wandb_through_the_seam(tiny_config, tmp_path):
    base_hp = load_hyper_params(tiny_config)
    base = build_trainer(
        base_hp,
        ExperimentSettings(
            storage_path=str(tmp_path), checkpoint_period=10, progress_bar_factory=None
        ),
    )
    base.train()
    ServedClient.served = base.checkpoint_base_dir / "checkpoint_000020"
    ServedClient.requested = []
    hp = load_hyper_params(
        {
            **tiny_config,
            "trainer": "test_wandb:ServedTrainer",
            "num_iterations": 40,
            "base_run": {"run_id": base.run_id, "project": "proj", "entity": "team", "version": 20},
        }
    )
    warm = build_trainer(
        hp, ExperimentSettings(storage_path=str(tmp_path / "new"), progress_bar_factory=None)
    )
    assert ServedClient.requested == [f"team/proj/state_{base.run_id}:iter-20"]
    assert warm.iteration == 20 and warm.run_id != base.run_id
    served = read_checkpoint(ServedClient.served).state["model"]
    assert torch.equal(warm.model[0].weight.detach(), served["0.weight"])

    # A served checkpoint that fails its digests is refused, not loaded.
    model_file = ServedClient.served / "model.pt"
    model_file.write_bytes(model_file.read_bytes()[:-3])
    from raytrainer import CheckpointCorruptError

    with pytest.raises(CheckpointCorruptError, match="'model.pt'"):
        build_trainer(
            hp, ExperimentSettings(storage_path=str(tmp_path / "newer"), progress_bar_factory=None)
        )


def test_files_added_to_artifacts_are_mirrored(tiny_config, tmp_path, monkeypatch):
    for key, value in _wandb_env(tmp_path / "wandb").items():
        monkeypatch.setenv(key, value)
    hp = load_hyper_params(tiny_config)
    trainer = build_trainer(
        hp,
        ExperimentSettings(
            storage_path=str(tmp_path / "runs"), progress_bar_factory=None, wandb_mode="offline"
        ),
    )
    for text in ("first", "second"):
        path = tmp_path / f"{text}.txt"
        path.write_text(text)
        trainer._add_file_to_wandb_artifact("transcripts", "dataset", path)
    assert trainer.close() == []
    records = [a for a in artifact_records(tmp_path / "wandb") if a.name == "transcripts"]
    assert [sorted(e.path for e in a.manifest.contents) for a in records] == [
        ["first.txt", "manifest.json"],
        ["first.txt", "manifest.json", "second.txt"],
    ]
    assert all(a.type == "dataset" and "latest" in a.aliases for a in records)
    for entry in records[-1].manifest.contents:  # readable by `wandb sync` after the run
        if entry.path.endswith(".txt"):
            assert Path(entry.local_path).read_text() == entry.path.removesuffix(".txt")
    assert list((trainer.checkpoint_base_dir / ".wandb-staging").iterdir()) == []


def test_cloud_checkpoints_are_mirrored_by_reference(s3_server, tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from raytrainer.checkpoint.wandb_mirror import CheckpointMirror

    env = _wandb_env(tmp_path / "wandb")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])  # wandb's boto3
    source = tmp_path / "checkpoint_000010"
    source.mkdir()
    (source / "model.pt").write_bytes(b"weights")
    (source / "metadata.json").write_text("{}")
    pafs.copy_files(
        str(source),
        "raytrainer/cloud/run/checkpoint_000010",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=s3_server,
    )
    uri = "s3://raytrainer/cloud/run/checkpoint_000010"
    mirror = CheckpointMirror(
        WandbClient(),
        {
            "id": "cloudrun",
            "mode": "offline",
            "project": "p",
            "dir": env["WANDB_DIR"],  # wandb keeps the first run's folders for the process
            "settings": {"console": "off"},
        },
        tmp_path / "staging",
        logging.getLogger("raytrainer"),
    )
    assert mirror.stage(source, uri) is None  # nothing is copied for a cloud checkpoint
    mirror.mirror_checkpoint(None, uri, 10, {"loss": 1.0}, {}, False)
    assert mirror.close(60) == []
    (artifact,) = artifact_records(tmp_path / "wandb")
    refs = {e.path: e.ref for e in artifact.manifest.contents}
    assert refs == {"model.pt": f"{uri}/model.pt", "metadata.json": f"{uri}/metadata.json"}


def test_base_run_from_a_storage_uri(s3_server, tiny_config, tmp_path):
    import pyarrow.fs as pafs

    base = build_trainer(
        load_hyper_params(tiny_config),
        ExperimentSettings(
            storage_path=str(tmp_path), checkpoint_period=10, progress_bar_factory=None
        ),
    )
    base.train()
    pafs.copy_files(
        str(base.checkpoint_base_dir),
        f"raytrainer/bases/{base.run_id}",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=s3_server,
    )
    hp = load_hyper_params(
        {
            **tiny_config,
            "num_iterations": 50,
            "base_run": {"run_id": base.run_id, "storage_path": "s3://raytrainer/bases"},
        }
    )
    warm = build_trainer(
        hp, ExperimentSettings(storage_path=str(tmp_path / "new"), progress_bar_factory=None)
    )
    assert warm.iteration == 30  # "latest" in the bucket
    assert torch.equal(warm.model[0].weight.detach(), base.model[0].weight.detach())
