"""Every name in a run folder: the checkpoint layout, its digests, and retention.

A run folder ``<storage root>/<run id>/`` holds::

    checkpoint_000100/      one checkpoint (below); the 6-digit number is the iteration
    checkpoint_000200/
    complete.json           written when the run finishes: a rerun has nothing to do
    artifacts/<name>/v<k>/  versions of the trainer's own artifacts, with manifest.json
    .wandb-staging/         hard links to files waiting for the W&B mirror (rank 0)
    .tmp-* .old-*           a checkpoint being written or replaced (never read)

A checkpoint is a directory named ``checkpoint_<iteration, 6 digits>``::

    metadata.json       package, versions, git sha, time, iteration, metrics, file digests
                        and sizes
    hyper_params.json   the run's hyper-parameters with their schema version
    state.json          the plain (JSON) entries of the trainer's state
    <key>.pt            one ``torch.save`` file per state entry holding tensors,
                        read back with ``torch.load(weights_only=True)``

``metadata.json`` is written last and lists a digest and size per file, so a partial or damaged
checkpoint is detected on load and never trusted. A digest is written ``"<algorithm>:<hex>"``:
``xxh3_128`` (XXH3-128) since schema version 2; schema-1 checkpoints recorded a bare SHA-256 hex
under ``sha256`` and are still read. Directories are written under a temporary name and renamed
into place when complete. This module is the only place that knows these names; everything else
imports them from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs
import torch
import xxhash

from raytrainer.errors import (
    CheckpointCorruptError,
    CheckPointNotFoundError,
    CheckpointSaveError,
    CheckpointStateError,
    CheckpointVersionError,
)

SCHEMA_VERSION = 2
"""Schema version of the layout. Increment if it changes; readers accept ``<=`` this.

Version 2 records file digests as ``{"digest": "<algorithm>:<hex>", "size": n}``; version 1
recorded ``{"sha256": "<hex>", "size": n}``.
"""

DIGEST_ALGORITHM = "xxh3_128"
"""The algorithm new checkpoints and artifact manifests fingerprint files with (XXH3-128).

The digests detect damage (truncation, bit rot, a partial copy); the metadata is not signed, so
no algorithm here would stop a deliberate edit.
"""

METADATA_FILE = "metadata.json"
PARAMS_FILE = "hyper_params.json"
STATE_FILE = "state.json"
TENSOR_SUFFIX = ".pt"

COMPLETE_FILE = "complete.json"
"""In the run folder when a run has finished; a rerun then reports it complete."""
RAY_CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"
"""In the run folder: Ray Train's list of the checkpoints reported to it; removed at each start."""
ARTIFACTS_DIR = "artifacts"
"""In the run folder: ``<name>/v<k>/``, versions of the trainer's own artifacts."""
ARTIFACT_MANIFEST_FILE = "manifest.json"
"""In an artifact version folder: its name, type, version, iteration and file digests."""
WANDB_STAGING_DIR = ".wandb-staging"
"""In the folder rank 0 writes into: hard links to files the W&B mirror has not uploaded yet."""
WANDB_OFFLINE_STAGING_DIR = "raytrainer-staging"
"""Beside an offline W&B run (``wandb/offline-run-*/``): mirrored files ``wandb sync`` reads."""
RESTORE_DIR = "restore"
"""In a Ray worker's staging folder: checkpoints downloaded from cloud storage to resume."""
BASE_RUN_DIR = "base-run"
"""In a temporary folder: a base run's checkpoint downloaded for a warm start."""

# A sweep folder, <storage root>/<sweep name>/, is Ray Tune's experiment folder (its trials'
# folders and state) plus the summary raytrainer writes when the sweep ends:
SWEEP_SUMMARY_FILE = "sweep_summary.json"
"""The best trial and one row per trial: values, status, iterations, metric, checkpoint."""
SWEEP_TABLE_FILE = "sweep_summary.csv"
"""The same rows as a table."""
SWEEP_PLOT_FILE = "sweep_metric.png"
"""The metric against iteration for every trial; stopped trials marked."""
TUNE_POINTER_FILE = "raytrainer_pointer.json"
"""In a multi-worker trial's Tune checkpoint: the run and checkpoint in storage it stands for."""
TEST_RUNS_DIR = "raytrainer-test-runs"
"""Under a cloud storage root: where ``--test-run`` dry runs live until they finish."""

_NAME_RE = re.compile(r"^checkpoint_(\d{6,})$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_PLAIN = (str, int, float, bool, type(None))
# Every algorithm a digest may name; SHA-256 for schema-1 checkpoints, written before XXH3-128.
_HASHERS: dict[str, Callable[[], Any]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


def checkpoint_dir_name(iteration: int) -> str:
    """Return the folder name of the checkpoint at ``iteration``: ``checkpoint_000042``."""
    return f"checkpoint_{iteration:06d}"


def artifact_version_name(version: int) -> str:
    """Return the folder name of an artifact version: ``v3``."""
    return f"v{version}"


def artifact_versions(artifact_dir: Path) -> list[int]:
    """Return the complete versions under ``artifacts/<name>/``, oldest first."""
    found = (p.name[1:] for p in Path(artifact_dir).glob("v*") if p.is_dir())
    return sorted(int(v) for v in found if v.isdigit())


def replaced_run_name(run_id: str, stamp: str) -> str:
    """The name a run folder is moved aside to when the run is restarted (``--restart``)."""
    return f"{run_id}-replaced-{stamp}"


def temporary_name(name: str) -> str:
    """Return the name a folder is written under before it is renamed to ``name``."""
    return f".tmp-{name}-{uuid.uuid4().hex[:8]}"


def parse_iteration(name: str) -> int | None:
    """Return the iteration encoded in a checkpoint folder name, or ``None``."""
    match = _NAME_RE.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint read into memory."""

    path: Path
    metadata: dict[str, Any]
    hyper_params: dict[str, Any]
    state: dict[str, Any]

    @property
    def iteration(self) -> int:
        """The iteration the checkpoint was saved at."""
        return int(self.metadata["iteration"])


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_has_tensor(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_tensor(v) for v in value)
    return False


def _check_saveable(value: Any, where: str, allow_tensors: bool) -> None:
    """Refuse anything that would need an arbitrary pickle to read back."""
    if isinstance(value, _PLAIN) or (allow_tensors and isinstance(value, torch.Tensor)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise CheckpointStateError(
                    f"state{where} has a key of type {type(key).__name__}; use str or int keys."
                )
            _check_saveable(item, f"{where}[{key!r}]", allow_tensors)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_saveable(item, f"{where}[{i}]", allow_tensors)
        return
    raise CheckpointStateError(
        f"state{where} is a {type(value).__name__}, which cannot be saved without pickling. "
        "Convert it to tensors (torch.as_tensor), plain numbers, strings, lists or dicts."
    )


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode()


def _new_hash(algorithm: str) -> Any:
    try:
        return _HASHERS[algorithm]()
    except KeyError:
        raise ValueError(
            f"unknown digest algorithm {algorithm!r}; known: {', '.join(sorted(_HASHERS))}."
        ) from None


def file_digest(path: Path, algorithm: str = DIGEST_ALGORITHM) -> str:
    """Return a file's digest as ``"<algorithm>:<hex>"``, read in 1 MiB blocks.

    Parameters
    ----------
    path : Path
        The file to read.
    algorithm : {"xxh3_128", "sha256"}
        The hash; XXH3-128 by default, SHA-256 to check schema-1 checkpoints.

    Returns
    -------
    str
        For example ``"xxh3_128:a96faf705af16834e6c632b61e964e1f"``.

    Raises
    ------
    ValueError
        If ``algorithm`` is not one of the above.
    """
    digest = _new_hash(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{algorithm}:{digest.hexdigest()}"


def bytes_digest(data: bytes, algorithm: str = DIGEST_ALGORITHM) -> str:
    """Return the digest of bytes in memory, in :func:`file_digest`'s ``"<algorithm>:<hex>"``."""
    digest = _new_hash(algorithm)
    digest.update(data)
    return f"{algorithm}:{digest.hexdigest()}"


def recorded_digest(entry: Mapping[str, Any]) -> str:
    """Return the ``"<algorithm>:<hex>"`` digest of one entry of a checkpoint's ``files``.

    Reads both forms: ``{"digest": "xxh3_128:<hex>", ...}`` (schema 2) and
    ``{"sha256": "<hex>", ...}`` (schema 1).

    Raises
    ------
    KeyError
        If the entry holds neither.
    ValueError
        If the digest is not a string of the form ``"<algorithm>:<hex>"``.
    """
    if "digest" not in entry:
        return f"sha256:{entry['sha256']}"
    digest = entry["digest"]
    if not isinstance(digest, str) or ":" not in digest:
        raise ValueError(f"digest {digest!r} is not '<algorithm>:<hex>'")
    return digest


def split_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a state dict into its plain entries (``state.json``) and its tensor entries.

    Raises
    ------
    CheckpointStateError
        If a key is not a safe file name, or a value cannot be saved without a pickle.
    """
    plain: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise CheckpointStateError(
                f"state key {key!r} must be a string of letters, digits, '_', '.', '-'."
            )
        has_tensor = _has_tensor(value)
        _check_saveable(value, f"[{key!r}]", allow_tensors=has_tensor)
        (tensors if has_tensor else plain)[key] = value
    return plain, tensors


class _HashingWriter:
    """A write-only file that hashes what passes through, so files are read once."""

    def __init__(self, path: Path, algorithm: str = DIGEST_ALGORITHM) -> None:
        self._algorithm = algorithm
        self._hash = _new_hash(algorithm)
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> dict[str, Any]:
        self._file.close()
        return {"digest": f"{self._algorithm}:{self._hash.hexdigest()}", "size": self.size}


def _write_file(path: Path, data: bytes | None = None, tensors: Any = None) -> dict[str, Any]:
    writer = _HashingWriter(path)
    try:
        if data is not None:
            writer.write(data)
        else:
            torch.save(tensors, writer)
    finally:
        info = writer.close()
    return info


def write_checkpoint(
    directory: Path,
    state: Mapping[str, Any],
    hyper_params: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a complete checkpoint at ``directory``, atomically.

    The files go into a temporary sibling folder; ``metadata.json`` (with the digests) is
    written last, then the folder is renamed into place. An existing folder of the same name —
    for example one left by a killed attempt — is replaced, never merged.

    Parameters
    ----------
    directory : Path
        The final checkpoint folder, usually ``<run>/checkpoint_<n>``.
    state : Mapping[str, Any]
        The trainer's state; see :func:`split_state`.
    hyper_params : Mapping[str, Any]
        The saved form of the hyper-parameters (``HyperParameters.to_saved()``).
    metadata : Mapping[str, Any]
        Must contain ``iteration``; ``schema_version`` and ``files`` are added here.

    Returns
    -------
    dict
        The metadata as written, with ``schema_version`` and ``files``: per file name,
        ``{"digest": "xxh3_128:<hex>", "size": <bytes>}``.
    """
    if "iteration" not in metadata:
        raise ValueError("checkpoint metadata needs an 'iteration'.")
    plain, tensors = split_state(state)  # refuses bad state before anything is written
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / temporary_name(directory.name)
    tmp.mkdir()
    try:
        files = {
            name: _write_file(tmp / name, data=_json_bytes(value))
            for name, value in ((STATE_FILE, plain), (PARAMS_FILE, hyper_params))
        }
        for key, value in tensors.items():
            files[key + TENSOR_SUFFIX] = _write_file(tmp / (key + TENSOR_SUFFIX), tensors=value)
        meta = {**metadata, "schema_version": SCHEMA_VERSION, "files": files}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if directory.exists():
            old = directory.parent / f".old-{directory.name}-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Check that a checkpoint is complete, readable by this code, and unaltered.

    Returns
    -------
    dict
        The checkpoint's metadata.

    Raises
    ------
    CheckPointNotFoundError
        If ``directory`` does not exist.
    CheckpointCorruptError
        If ``metadata.json`` is missing or unreadable, or a file is missing or its digest differs.
    CheckpointVersionError
        If the checkpoint's schema version, or a digest's algorithm, is newer than this code reads.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckPointNotFoundError(f"checkpoint {str(directory)!r} does not exist.")
    meta_path = directory / METADATA_FILE
    try:
        metadata = json.loads(meta_path.read_text())
        files = metadata["files"]
        version = int(metadata["schema_version"])
    except FileNotFoundError:
        raise CheckpointCorruptError(
            f"checkpoint {str(directory)!r} has no {METADATA_FILE}: it is incomplete."
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorruptError(
            f"checkpoint {str(directory)!r} has an unreadable {METADATA_FILE}: {exc}"
        ) from None
    if version > SCHEMA_VERSION:
        raise CheckpointVersionError(
            f"checkpoint {str(directory)!r} has schema version {version}, but this raytrainer "
            f"reads up to schema version {SCHEMA_VERSION}. Upgrade raytrainer to load it."
        )
    for name, info in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointCorruptError(f"checkpoint {str(directory)!r} is missing file {name!r}.")
        try:
            size = int(info["size"])
            expected = recorded_digest(info)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointCorruptError(
                f"checkpoint {str(directory)!r} has an unreadable {METADATA_FILE} entry for "
                f"{name!r}: {exc!r}"
            ) from None
        algorithm = expected.partition(":")[0]
        if algorithm not in _HASHERS:
            raise CheckpointVersionError(
                f"checkpoint {str(directory)!r}: file {name!r} has a digest of algorithm "
                f"{algorithm!r}, which this raytrainer cannot check. Upgrade raytrainer to load it."
            )
        # The size first: a truncated file is found without reading it.
        if path.stat().st_size != size or file_digest(path, algorithm) != expected:
            raise CheckpointCorruptError(
                f"checkpoint {str(directory)!r}: file {name!r} does not match its recorded "
                "digest (altered or truncated)."
            )
    return metadata


def read_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Verify and load a checkpoint. Tensors load with ``weights_only=True``."""
    directory = Path(directory)
    metadata = verify_checkpoint(directory)
    state: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
    for name in metadata["files"]:
        if name.endswith(TENSOR_SUFFIX):
            key = name[: -len(TENSOR_SUFFIX)]
            state[key] = torch.load(directory / name, map_location=map_location, weights_only=True)
    hyper_params = json.loads((directory / PARAMS_FILE).read_text())
    return LoadedCheckpoint(directory, metadata, hyper_params, state)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Return the run's visible checkpoint folders, oldest iteration first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(parse_iteration(p.name), p) for p in run_dir.iterdir() if p.is_dir()]
    return [p for it, p in sorted((it, p) for it, p in found if it is not None)]


def select_checkpoint(names: list[str], version: str | int, where: str) -> str:
    """Pick the folder name for ``version`` (``"latest"``, an iteration, a folder name).

    Raises
    ------
    CheckPointNotFoundError
        If no name matches; the message lists what there is.
    """
    ordered = sorted((n for n in names if parse_iteration(n) is not None), key=parse_iteration)
    if not ordered:
        raise CheckPointNotFoundError(f"no checkpoints under {where!r}.")
    if version == "latest":
        return ordered[-1]
    version = str(version)
    iteration = int(version) if version.isdigit() else parse_iteration(version)
    for name in ordered:
        if parse_iteration(name) == iteration:
            return name
    raise CheckPointNotFoundError(
        f"no checkpoint {version!r} under {where!r}; have {', '.join(ordered)}."
    )


def find_checkpoint(run_dir: Path, version: str | int = "latest") -> Path:
    """Return the local folder for ``version``: ``"latest"``, an iteration, or a folder name."""
    names = [p.name for p in list_checkpoints(run_dir)]
    return Path(run_dir) / select_checkpoint(names, version, str(run_dir))


def upload_checkpoint(
    local: Path, location: str, attempts: int = 3, backoff_s: float = 1.0
) -> None:
    """Copy a written checkpoint folder to storage, its metadata last; retry a failed copy.

    A folder already at ``location`` (left by a killed attempt) is replaced. Each file is
    copied whole, up to 8 at a time, and ``metadata.json`` after every other, so a reader
    that finds the metadata finds the rest, and an interrupted copy is a partial checkpoint
    that resuming skips. A failed copy is logged and started again after ``backoff_s``
    (doubling), ``attempts`` times in all.

    Raises
    ------
    CheckpointSaveError
        After the last failed attempt, naming the checkpoint, the location and the error.
    """
    import logging
    import time

    from raytrainer import storage  # pyarrow: only where storage is touched

    files = [p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()]
    rest = sorted(f for f in files if f != METADATA_FILE)
    logger = logging.getLogger("raytrainer")
    for attempt in range(1, attempts + 1):
        try:
            fs, path = storage.resolve(location)
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                fs.delete_dir(path)
            for folder in sorted({f"{path}/{f}".rsplit("/", 1)[0] for f in files}):
                fs.create_dir(folder, recursive=True)

            def copy(name: str, fs: pafs.FileSystem = fs, path: str = path) -> None:
                with (Path(local) / name).open("rb") as source:
                    with fs.open_output_stream(f"{path}/{name}") as out:
                        shutil.copyfileobj(source, out, 8 * 2**20)

            # The files side by side (each a round trip or more to a bucket), the metadata
            # once every one of them is complete.
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(copy, rest))
            if METADATA_FILE in files:
                copy(METADATA_FILE)
            return
        except OSError as exc:
            if attempt == attempts:
                raise CheckpointSaveError(
                    f"uploading {Path(local).name} to {location} failed {attempts} times, last "
                    f"with {type(exc).__name__}: {exc}"
                ) from exc
            wait = backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "uploading %s to %s failed (%s: %s); attempt %d of %d in %.0f s",
                Path(local).name,
                location,
                type(exc).__name__,
                exc,
                attempt + 1,
                attempts,
                wait,
            )
            time.sleep(wait)


def apply_retention(
    location: str | Path,
    num_to_keep: int | None,
    score_metric: str | None = None,
    score_order: Literal["max", "min"] | None = None,
) -> list[str]:
    """Delete checkpoints beyond ``num_to_keep`` in a run folder or URI; return their names.

    As Ray Train keeps them: without a score metric the newest ``num_to_keep``; with one, the
    ``num_to_keep`` best by that metric plus the newest (resuming needs it), so one more when
    the newest is not among the best. It counts what is in storage — whichever runner and
    attempt wrote it — and only complete checkpoints (metadata written, which comes last): a
    partial folder older than the newest complete one is deleted, a newer one left alone.
    """
    from raytrainer import storage  # pyarrow: only where storage is touched

    location = str(location)
    names = sorted(
        (n for n in storage.list_dirs(location) if parse_iteration(n) is not None),
        key=parse_iteration,
    )
    if num_to_keep is None or len(names) <= num_to_keep:
        return []
    metadata: dict[str, Any] = {}
    for name in names:
        try:
            metadata[name] = storage.read_json(storage.join(location, name, METADATA_FILE))
        except (OSError, ValueError):
            metadata[name] = None
    complete = [n for n in names if isinstance(metadata[n], dict)]
    if not complete:
        return []
    newest = complete[-1]
    if score_metric is None:
        keep = set(complete[-num_to_keep:])
    else:
        sign = -1.0 if score_order == "max" else 1.0

        def score(name: str) -> float:
            try:
                return sign * float(metadata[name].get("metrics", {})[score_metric])
            except (KeyError, TypeError, ValueError):
                return float("inf")  # unscored: first to go

        # Ties: the newer checkpoint first.
        ranked = sorted(complete, key=lambda n: (score(n), -(parse_iteration(n) or 0)))
        keep = {*ranked[:num_to_keep], newest}
    newest_iteration = parse_iteration(newest) or 0
    deleted = [n for n in names if n not in keep and (parse_iteration(n) or 0) < newest_iteration]
    for name in deleted:
        storage.delete_dir(storage.join(location, name))
    return deleted


def describe_checkpoint(directory: Path) -> dict[str, Any]:
    """Summarise a checkpoint for people: iteration, time, metrics, size and integrity."""
    directory = Path(directory)
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    summary: dict[str, Any] = {"path": str(directory), "size_bytes": size}
    try:
        metadata = verify_checkpoint(directory)
        summary["integrity"] = "ok"
    except (CheckpointCorruptError, CheckpointVersionError) as exc:
        summary["integrity"] = f"BAD: {exc}"
        try:
            metadata = json.loads((directory / METADATA_FILE).read_text())
        except (OSError, ValueError):
            metadata = {}
    for key in ("iteration", "created", "metrics", "package_version", "git_sha", "run_id"):
        summary[key] = metadata.get(key)
    summary["files"] = sorted(metadata.get("files", {}))
    return summary
