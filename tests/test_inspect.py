"""`raytrainer checkpoints ls/show` on run ids, folders and s3:// URIs; `raytrainer config show`.

Runs are real in-process runs (no Ray); the S3 server is the loopback moto fixture.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from helpers.cli import call_main

from raytrainer import ExperimentSettings, load_hyper_params, run_local
from raytrainer.checkpoint import list_checkpoints
from raytrainer.inspection import MARK_BAD, MARK_BEST, MARK_LATEST, list_run, show_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "regression.yaml"


def _run(config: dict, storage_path: str | None = None, **settings) -> Path:
    """Train ``config`` in-process with a checkpoint every 10 iterations; return the run folder."""
    hp = load_hyper_params(config)
    result = run_local(
        hp,
        ExperimentSettings(
            storage_path=storage_path, progress_bar_factory=None, checkpoint_period=10, **settings
        ),
    )
    return Path(result.storage_uri)


def _losses(run_dir: Path) -> dict[str, float]:
    return {
        p.name: json.loads((p / "metadata.json").read_text())["metrics"]["loss"]
        for p in list_checkpoints(run_dir)
    }


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows of `checkpoints ls` by checkpoint name: name, iteration, created, size, marks."""
    return {
        line.split()[0]: line.split() for line in out.splitlines() if line[:11] == "checkpoint_"
    }


@pytest.fixture
def scored_run(tiny_config, tmp_path, monkeypatch) -> Path:
    """A 30-iteration run under $RAYTRAINER_STORAGE ranked by loss (min); its last checkpoint
    corrupted. The working directory is elsewhere, so a run id is not a local folder."""
    run_dir = _run(tiny_config, checkpoint_score_metric="loss", checkpoint_score_order="min")
    assert run_dir.parent == tmp_path / "default_storage"
    (run_dir / "checkpoint_000030" / "optimizer.pt").write_bytes(b"garbage")
    monkeypatch.chdir(tmp_path)
    return run_dir


def _expected_best(run_dir: Path, order: str = "min") -> str:
    good = {k: v for k, v in _losses(run_dir).items() if k != "checkpoint_000030"}
    return (min if order == "min" else max)(good, key=good.get)


def test_ls_by_run_id_resolves_against_raytrainer_storage(scored_run, capsys):
    code, out, err = call_main(capsys, "checkpoints", "ls", scored_run.name)
    assert code == 0, err
    assert out.splitlines()[0] == f"run: {scored_run}"
    rows = _rows(out)
    assert list(rows) == ["checkpoint_000010", "checkpoint_000020", "checkpoint_000030"]
    # latest is the newest that verifies (what a resume restores); the bad one is only BAD.
    assert rows["checkpoint_000020"][4].split(",")[0] == MARK_LATEST
    assert rows["checkpoint_000030"][4] == MARK_BAD
    best = _expected_best(scored_run)
    assert MARK_BEST in rows[best][4].split(",")
    assert sum(MARK_BEST in r[4] for r in rows.values()) == 1
    assert "best: lowest 'loss' (from checkpoint metadata)" in out
    assert "BAD checkpoint_000030: file 'optimizer.pt' does not match its recorded digest" in out


def test_ls_by_folder_and_with_storage_path(scored_run, capsys, tmp_path):
    relative = scored_run.relative_to(tmp_path)
    for target in (scored_run, relative):
        code, out, _ = call_main(capsys, "checkpoints", "ls", target)
        assert code == 0 and out.splitlines()[0] == f"run: {scored_run}"
    code, out, _ = call_main(
        capsys, "checkpoints", "ls", scored_run.name, "--storage-path", scored_run.parent
    )
    assert code == 0 and out.splitlines()[0] == f"run: {scored_run}"


def test_score_flags_override_the_metadata_and_no_metric_means_no_best(
    scored_run, tiny_config, capsys
):
    listing = list_run(str(scored_run), score_order="max")
    best = [c.name for c in listing.checkpoints if MARK_BEST in c.marks]
    assert best == [_expected_best(scored_run, "max")]
    assert listing.score_from == "checkpoint metadata"

    code, out, err = call_main(
        capsys, "checkpoints", "ls", scored_run, "--score-metric", "iteration"
    )
    assert code == 2 and "--score-order min|max" in err
    code, out, _ = call_main(
        capsys, "checkpoints", "ls", scored_run, "--score-metric", "iteration", "--score-order",
        "min",
    )  # fmt: skip
    assert MARK_BEST in _rows(out)["checkpoint_000010"][4]
    assert "best: lowest 'iteration' (from --score-metric)" in out

    plain = _run({**tiny_config, "seed": 4})  # no score metric: no best mark
    code, out, _ = call_main(capsys, "checkpoints", "ls", plain, "--json")
    listing = json.loads(out)
    assert listing["score_metric"] is None
    assert [c["marks"] for c in listing["checkpoints"]] == [[], [], [MARK_LATEST]]
    assert all(c["integrity"] == "ok" for c in listing["checkpoints"])


def test_show_exit_codes(scored_run, capsys):
    code, out, err = call_main(capsys, "checkpoints", "show", scored_run / "checkpoint_000020")
    info = json.loads(out)
    assert code == 0 and info["integrity"] == "ok" and info["iteration"] == 20 and not err
    code, out, err = call_main(
        capsys, "checkpoints", "show", f"{scored_run.name}/checkpoint_000030"
    )
    assert code == 1 and json.loads(out)["integrity"].startswith("BAD")
    assert err.count("\n") == 1 and "'optimizer.pt' does not match its recorded digest" in err
    # A run stands for its newest checkpoint.
    assert show_checkpoint(scored_run.name)["iteration"] == 30
    for missing in ("no-such-run", f"{scored_run.name}/checkpoint_000099"):
        code, out, err = call_main(capsys, "checkpoints", "show", missing)
        assert code == 2 and not out and err.count("\n") == 1
        assert "no run or checkpoint" in err and "RAYTRAINER_STORAGE" in err
    code, _, err = call_main(capsys, "checkpoints", "ls", "no-such-run")
    assert code == 2 and "no run or checkpoint 'no-such-run'" in err
    code, _, err = call_main(capsys, "checkpoints", "ls", scored_run / "checkpoint_000010")
    assert code == 2 and "is a checkpoint, not a run" in err


def test_ls_and_show_on_s3(scored_run, s3_server, capsys, monkeypatch):
    prefix = f"runs-{uuid.uuid4().hex[:8]}"
    pafs.copy_files(
        str(scored_run),
        f"raytrainer/{prefix}/ext",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=s3_server,
    )
    uri = f"s3://raytrainer/{prefix}/ext"
    code, out, err = call_main(capsys, "checkpoints", "ls", uri)
    assert code == 0, err
    assert out.splitlines()[0] == f"run: {uri}"
    rows = _rows(out)
    assert rows["checkpoint_000030"][4] == MARK_BAD
    assert rows["checkpoint_000020"][4].startswith(MARK_LATEST)
    assert MARK_BEST in rows[_expected_best(scored_run)][4]
    assert "BAD checkpoint_000030: file 'optimizer.pt'" in out

    code, out, err = call_main(capsys, "checkpoints", "show", f"{uri}/checkpoint_000030")
    assert code == 1 and uri in err and "raytrainer-inspect-" not in err
    code, out, _ = call_main(capsys, "checkpoints", "show", f"{uri}/checkpoint_000010")
    assert code == 0 and json.loads(out)["path"] == f"{uri}/checkpoint_000010"

    # A run id under a URI storage root, and the metadata-only listing.
    monkeypatch.setenv("RAYTRAINER_STORAGE", f"s3://raytrainer/{prefix}")
    listing = list_run("ext", verify=False)
    assert listing.location == uri
    assert [c.summary["integrity"] for c in listing.checkpoints] == ["unchecked"] * 3
    assert MARK_LATEST in listing.checkpoints[-1].marks  # unchecked: not marked BAD
    code, _, err = call_main(capsys, "checkpoints", "ls", f"s3://raytrainer/{prefix}/nothing")
    assert code == 2 and "nothing at" in err


def test_config_show_prints_the_tree_with_descriptions_and_run_id(capsys, tmp_path):
    code, out, err = call_main(capsys, "config", "show", EXAMPLE, "--set", "seed=5")
    assert code == 0, err
    hp = load_hyper_params(EXAMPLE, ["seed=5"])
    assert f"# run id: {hp.default_run_id()}" in out
    assert f"# run folder: {tmp_path / 'default_storage' / hp.default_run_id()}" in out
    lines = out.splitlines()
    # The trainer's own class, its own fields, nested and agent sections, all described.
    assert "examples.regression.RegressionParams" in lines[0]
    assert any(line.startswith("hidden_dim: 64") and "Width of the MLP" in line for line in lines)
    assert any(line.startswith("seed: 5 ") and "(default)" not in line for line in lines)
    assert any(
        line.startswith("  max_message_rounds: 8")
        and "Rounds in one" in line
        and "(default)" in line
        for line in lines
    )
    assert any(
        line.startswith("    learning_rate: 0.003") and "learning rate" in line for line in lines
    )
    assert any(line.startswith("base_run: null") for line in lines)
    # The lines are YAML that validates to the same tree.
    assert load_hyper_params(yaml.safe_load(out)) == hp

    code, out, _ = call_main(capsys, "config", "show", EXAMPLE, "--run-id", "mine")
    assert code == 0 and "# run id: mine" in out


def test_config_show_errors_name_the_override(capsys):
    code, out, err = call_main(capsys, "config", "show", EXAMPLE, "--set", "num_iteration=10")
    assert code == 2 and not out
    assert (
        "num_iteration: unknown field (from --set num_iteration=10); "
        "did you mean 'num_iterations'?" in err
    )


def test_an_incomplete_checkpoint_is_bad_with_or_without_digests(scored_run):
    incomplete = scored_run / "checkpoint_000040"
    incomplete.mkdir()
    (incomplete / "state.json").write_text("{}")
    for verify in (True, False):
        listing = list_run(str(scored_run), verify=verify)
        marks = {c.name: c.marks for c in listing.checkpoints}
        assert marks["checkpoint_000040"] == (MARK_BAD,), verify
        assert MARK_LATEST in marks["checkpoint_000020" if verify else "checkpoint_000030"]
