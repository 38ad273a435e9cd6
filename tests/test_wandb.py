"""W&B for real in offline mode; the calls that need a server through the client seam."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
import wandb
import xxhash
from helpers.gated import GatedRegressionTrainer
from helpers.wandb_records import artifact_records, read_records

from raytrainer import ExperimentSettings, Scaling, build_trainer, load_hyper_params, run, run_local
from raytrainer.checkpoint import list_checkpoints, read_checkpoint
from raytrainer.checkpoint.layout import recorded_digest
from raytrainer.checkpoint.wandb_mirror import WandbClient
from raytrainer.storage import download_dir

SECRET = "sk-raytrainer-test-secret-0123456789"
KEY_SEEN_ENV = "RAYTRAINER_TEST_KEY_SEEN"
# The score each checkpoint records: by "max", the best so far at 10 and 30, not at 20.
SCORES = {10: 2.0, 20: 1.0, 30: 3.0}
CHECKPOINTS = ["checkpoint_000010", "checkpoint_000020", "checkpoint_000030"]


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


class KeySeenClient(WandbClient):
    """The real client, which first notes a fingerprint of the API key its ``init`` sees."""

    def init(self, **kwargs):
        key = os.environ.get("WANDB_API_KEY", "")
        with open(os.environ[KEY_SEEN_ENV], "a") as out:  # never the key itself
            out.write(hashlib.sha256(key.encode()).hexdigest() + "\n")
        return super().init(**kwargs)


class ScoredTrainer(GatedRegressionTrainer):
    """Records ``score`` from SCORES at each checkpoint, so which versions are best is known."""

    wandb_client_cls = KeySeenClient

    def save_checkpoint(self, log: bool = True) -> None:
        self.record_metrics(score=SCORES[self.iteration])
        super().save_checkpoint(log)


class StalledClient(WandbClient):
    """A real offline W&B run whose ``log_artifact`` or ``finish`` raises or hangs.

    ``fault`` is ``(call, "raise" | "hang")``. A hang lasts until the test sets ``release``,
    then fails too. ``entered`` is set when the faulty call is reached, ``uploaded`` once three
    checkpoints are logged; ``runs`` and ``threads`` are what ``init`` opened and ran on.
    """

    @classmethod
    def reset(cls, fault: tuple[str, str]) -> None:
        cls.fault = fault
        cls.release, cls.entered, cls.uploaded = (threading.Event() for _ in range(3))
        cls.runs, cls.threads, cls.logged = [], [], 0

    def init(self, **kwargs):
        StalledClient.threads.append(threading.current_thread())  # the mirror's own thread
        run = super().init(**kwargs)
        StalledClient.runs.append(run)
        return run

    def _fail(self, call: str) -> None:
        StalledClient.entered.set()
        if StalledClient.fault[1] == "hang":
            StalledClient.release.wait()  # like a call behind a dead proxy
        raise ConnectionError(f"W&B {call} failed")

    def log_artifact(self, run, artifact, aliases):
        if StalledClient.fault[0] == "log_artifact":
            self._fail("log_artifact")
        super().log_artifact(run, artifact, aliases)
        StalledClient.logged += 1
        if StalledClient.logged == len(CHECKPOINTS):
            StalledClient.uploaded.set()

    def finish(self, run):
        if StalledClient.fault[0] == "finish":
            self._fail("finish")
        super().finish(run)


class StalledTrainer(GatedRegressionTrainer):
    wandb_client_cls = StalledClient


class OnlineRun:
    """What an online ``wandb.init`` returns, as far as the mirror uses it."""

    offline = False
    entity, project = "team", "proj"

    def define_metric(self, *args, **kwargs) -> None:
        pass


class OnlineClient(WandbClient):
    """Stands in for a W&B server, which has an artifact once a version of it was logged."""

    calls: list = []
    drafts: list = []

    def init(self, **kwargs):
        return OnlineRun()

    def artifact_exists(self, path):
        OnlineClient.calls.append(("exists", path))
        return any(call[0] == "log" for call in OnlineClient.calls)

    def use_artifact(self, run, path):
        OnlineClient.calls.append(("use", path))
        name = path.rsplit("/", 1)[-1].split(":")[0]

        class Latest:  # W&B's latest version: a draft of it is the next version
            def new_draft(self):
                draft = wandb.Artifact(name, type="dataset")
                OnlineClient.drafts.append(draft)
                return draft

        return Latest()

    def log_artifact(self, run, artifact, aliases):
        entries = artifact.manifest.entries
        texts = {n: Path(e.local_path).read_text() for n, e in entries.items() if ".txt" in n}
        is_draft = any(artifact is draft for draft in OnlineClient.drafts)
        OnlineClient.calls.append(("log", artifact.name, sorted(entries), texts, aliases, is_draft))

    def finish(self, run):
        OnlineClient.calls.append(("finish",))


class OnlineTrainer(GatedRegressionTrainer):
    wandb_client_cls = OnlineClient


def test_ray_run_mirrors_every_checkpoint_offline(ray_cluster, tiny_config, tmp_path, capfd):
    env = _wandb_env(tmp_path / "wandb")
    # 30 iterations: checkpoints 10, 20, 30, scored 2, 1, 3.
    hp = load_hyper_params({**tiny_config, "trainer": "test_wandb:ScoredTrainer"})
    key_seen = tmp_path / "key_seen"
    settings = ExperimentSettings(
        storage_path=str(tmp_path / "runs"),
        checkpoint_period=10,
        progress_bar_factory=None,
        wandb_mode="offline",
        wandb_tags=("ci",),
        checkpoint_score_metric="score",
        checkpoint_score_order="max",
        worker_env={**env, "WANDB_API_KEY": SECRET, KEY_SEEN_ENV: str(key_seen)},
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
    # `best` marks exactly the versions that were the best so far, by their own metadata.
    scores = [json.loads(a.metadata)["metrics"]["score"] for a in artifacts]
    assert scores == [SCORES[i] for i in (10, 20, 30)]
    best_so_far = [i for i, s in enumerate(scores) if s > max(scores[:i], default=-math.inf)]
    assert best_so_far == [0, 2]  # not every version: tagging all of them would fail here
    assert [i for i, a in enumerate(artifacts) if "best" in a.aliases] == best_so_far

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
    step_metrics = {
        r.metric.glob_name or r.metric.name: r.metric.step_metric
        for r in records
        if r.WhichOneof("record_type") == "metric"
    }
    assert step_metrics.get("*") == "iteration"  # define_metric("*", step_metric="iteration")

    # The key reached where it must: wandb.init, once (rank 0), saw it in its environment ...
    assert key_seen.read_text().split() == [hashlib.sha256(SECRET.encode()).hexdigest()]
    # ... and nowhere else: not the run's files, W&B's, Ray's session logs (worker_env never
    # travels in a runtime env, which Ray writes into runtime_env_agent.log), or any output.
    folders = [run_dir, tmp_path / "wandb", Path(ray_cluster["session_dir"]) / "logs"]
    holding = [
        path.name
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert holding == []
    out, err = capfd.readouterr()  # what the driver printed, workers' lines included
    assert SECRET not in out + err


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


@pytest.mark.timeout(120)  # a mirror that blocks training or waits on W&B for good stops here
@pytest.mark.parametrize("failure", ["raise", "hang"])
@pytest.mark.parametrize("call", ["log_artifact", "finish"])
def test_wandb_failing_after_init_leaves_training_unaffected(
    call, failure, tiny_config, tmp_path, monkeypatch, quiet_logs
):
    for key, value in _wandb_env(tmp_path / "wandb").items():
        monkeypatch.setenv(key, value)
    StalledClient.reset((call, failure))
    hp = load_hyper_params({**tiny_config, "trainer": "test_wandb:StalledTrainer"})

    def settings(folder: str, mode: str) -> ExperimentSettings:
        return ExperimentSettings(
            storage_path=str(tmp_path / folder),
            checkpoint_period=10,
            progress_bar_factory=None,
            wandb_mode=mode,
            wandb_flush_timeout=1.0,
        )

    reference = build_trainer(hp, settings("reference", "disabled"))
    reference.train()
    trainer = build_trainer(hp, settings("runs", "offline"))
    try:
        trainer.train()
        # W&B was reached for real first: the failing call was made, or (finish) every
        # checkpoint was logged, so closing is what meets the failure.
        reached = StalledClient.entered if call == "log_artifact" else StalledClient.uploaded
        assert reached.wait(timeout=60)
        unmirrored = trainer.close()  # waits wandb_flush_timeout at most
    finally:
        StalledClient.release.set()  # a hung call now fails, and the mirror's thread ends
        for thread in StalledClient.threads:
            thread.join(timeout=60)
        for wandb_run in StalledClient.runs:
            wandb_run.finish()
    assert len(StalledClient.runs) == 1 and not StalledClient.threads[0].is_alive()
    messages = [r.getMessage() for r in quiet_logs.records]
    assert any(f"ConnectionError: W&B {call} failed" in m for m in messages)
    assert [p.name for p in list_checkpoints(trainer.checkpoint_base_dir)] == CHECKPOINTS
    if call == "log_artifact":  # none counts as mirrored, and the warning names them
        assert sorted(unmirrored) == CHECKPOINTS
        assert any("not mirrored" in m and all(n in m for n in CHECKPOINTS) for m in messages)
    else:  # all were mirrored before finish failed
        assert unmirrored == []
    # Training never noticed: bitwise the run with W&B disabled.
    expected = reference.model.state_dict()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


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


@pytest.mark.parametrize(
    ("version", "alias"),
    [
        ("latest", "latest"),
        ("best", "best"),
        ("v3", "v3"),
        (20, "iter-20"),
        ("checkpoint_000020", "iter-20"),
    ],
)
def test_base_run_from_wandb_through_the_seam(tiny_config, tmp_path, version, alias):
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
            "base_run": {
                "run_id": base.run_id,
                "project": "proj",
                "entity": "team",
                "version": version,
            },
        }
    )
    warm = build_trainer(
        hp, ExperimentSettings(storage_path=str(tmp_path / "new"), progress_bar_factory=None)
    )
    assert ServedClient.requested == [f"team/proj/state_{base.run_id}:{alias}"]
    assert (
        warm.iteration == 20
    )  # what the stand-in serves, whatever the version and warm.run_id != base.run_id
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


def _add_two_transcripts(trainer, folder: Path) -> None:
    """Add ``first.txt``, then ``second.txt``, to the artifact ``transcripts``."""
    for text in ("first", "second"):
        path = folder / f"{text}.txt"
        path.write_text(text)
        trainer._add_file_to_wandb_artifact("transcripts", "dataset", path)


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
    _add_two_transcripts(trainer, tmp_path)
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


def test_files_added_online_extend_wandbs_latest_version(tiny_config, tmp_path):
    OnlineClient.calls, OnlineClient.drafts = [], []
    hp = load_hyper_params({**tiny_config, "trainer": "test_wandb:OnlineTrainer"})
    trainer = build_trainer(
        hp,
        ExperimentSettings(
            storage_path=str(tmp_path / "runs"), progress_bar_factory=None, wandb_mode="online"
        ),
    )
    _add_two_transcripts(trainer, tmp_path)
    assert trainer.close() == []
    latest = "team/proj/transcripts:latest"
    assert OnlineClient.calls == [
        # W&B has no such artifact yet: the local version is logged whole.
        ("exists", latest),
        (
            "log",
            "transcripts",
            ["first.txt", "manifest.json"],
            {"first.txt": "first"},
            ["latest"],
            False,
        ),
        # Now it has: only the new file goes into a draft of W&B's latest version.
        ("exists", latest),
        ("use", latest),
        ("log", "transcripts", ["second.txt"], {"second.txt": "second"}, ["latest"], True),
        ("finish",),
    ]
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


def test_ray_run_on_s3_mirrors_checkpoints_by_reference(ray_cluster, tiny_config, tmp_path):
    env = _wandb_env(tmp_path / "wandb")
    storage_root = f"s3://raytrainer/{tmp_path.name}"
    settings = ExperimentSettings(
        storage_path=storage_root,
        checkpoint_period=10,
        progress_bar_factory=None,
        wandb_mode="offline",
        # wandb reads the references' checksums with boto3, which finds the server here.
        worker_env={**env, "AWS_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]},
    )
    result = run(load_hyper_params(tiny_config), settings, Scaling(num_workers=2))
    assert result.unmirrored == []
    artifacts = artifact_records(tmp_path / "wandb")
    assert [a.name for a in artifacts] == [f"state_{result.run_id}"] * 3
    for artifact, name in zip(artifacts, CHECKPOINTS, strict=True):
        uri = f"{storage_root}/{result.run_id}/{name}"
        checkpoint = download_dir(uri, tmp_path / "from_s3" / name)
        files = read_checkpoint(checkpoint).metadata["files"]  # verifies the digests too
        metadata = json.loads(artifact.metadata)
        assert metadata["storage_uri"] == uri
        assert metadata["digests"] == {k: recorded_digest(v) for k, v in files.items()}
        entries = {e.path: e for e in artifact.manifest.contents}
        # Every file by reference to its object in the bucket, none copied through the worker.
        assert {k: e.ref for k, e in entries.items()} == {
            p.name: f"{uri}/{p.name}" for p in checkpoint.iterdir()
        }
        assert all(e.size == (checkpoint / k).stat().st_size for k, e in entries.items())
        assert all(not e.local_path for e in entries.values())
    assert not list((tmp_path / "wandb").rglob("raytrainer-staging"))


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
