"""Looking into runs and checkpoints: what ``raytrainer checkpoints ls`` and ``show`` print.

A run or a checkpoint is named by a run id (looked up under ``--storage-path``, else the
default storage root, ``$RAYTRAINER_STORAGE``), a local folder, or a URI (``s3://bucket/runs/x``)
read through :mod:`raytrainer.storage`. Digests are verified with
:func:`~raytrainer.checkpoint.layout.verify_checkpoint`; a checkpoint in cloud storage is first
downloaded, one at a time, into a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs

from raytrainer import storage
from raytrainer.checkpoint.layout import (
    METADATA_FILE,
    describe_checkpoint,
    list_checkpoints,
    parse_iteration,
)
from raytrainer.errors import CheckPointNotFoundError, ConfigError, RayTrainerError

MARK_LATEST = "latest"
"""The newest checkpoint that verifies: the one a resumed run restores."""
MARK_BEST = "best"
"""The checkpoint that verifies with the best value of the score metric (earliest on ties)."""
MARK_BAD = "BAD"
"""A checkpoint that fails verification: incomplete, altered, or of a newer schema."""

_SUMMARY_KEYS = ("iteration", "created", "metrics", "package_version", "git_sha", "run_id")


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of a listing.

    Attributes
    ----------
    name : str
        The folder name, ``checkpoint_<iteration>``.
    summary : dict
        :func:`~raytrainer.checkpoint.layout.describe_checkpoint`'s summary, with ``path`` the
        checkpoint's location (a folder or a URI); ``integrity`` is ``"ok"``, ``"BAD: <why>"``
        or ``"unchecked"``.
    metadata : dict
        The checkpoint's ``metadata.json`` (empty when unreadable).
    marks : tuple of str
        Any of :data:`MARK_LATEST`, :data:`MARK_BEST`, :data:`MARK_BAD`.
    """

    name: str
    summary: dict[str, Any]
    metadata: dict[str, Any]
    marks: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        """Whether the checkpoint verified (or was not checked): it can be latest or best."""
        return not str(self.summary["integrity"]).startswith(MARK_BAD)


@dataclass(frozen=True)
class RunListing:
    """A run's checkpoints, oldest first, with the score metric used for ``best``.

    Attributes
    ----------
    location : str
        The run folder or URI.
    checkpoints : list of CheckpointEntry
        Oldest iteration first.
    score_metric, score_order : str or None, {"max", "min"}
        The metric ``best`` is decided by, and its direction; ``None``: no ``best``.
    score_from : str
        Where the metric came from: ``"checkpoint metadata"``, ``"--score-metric"`` or ``""``.
    """

    location: str
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    score_metric: str | None = None
    score_order: Literal["max", "min"] = "max"
    score_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the listing as plain JSON values (``checkpoints ls --json``)."""
        return {
            "location": self.location,
            "score_metric": self.score_metric,
            "score_order": self.score_order if self.score_metric else None,
            "score_from": self.score_from or None,
            "checkpoints": [
                {"name": e.name, "marks": list(e.marks), **e.summary} for e in self.checkpoints
            ],
        }


@contextlib.contextmanager
def _reading(location: str) -> Iterator[None]:
    """Turn a storage failure (network, credentials) into one error that says what to check."""
    try:
        yield
    except RayTrainerError:
        raise
    except OSError as exc:  # pyarrow's IO errors; a missing file is reported before this
        raise ConfigError(
            f"cannot read {location!r}: {exc}. Check the path and, for cloud storage, the "
            "credentials and endpoint (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...)."
        ) from None


def _is_dir(location: str) -> bool:
    fs, path = storage.resolve(location)
    with _reading(location):
        return fs.get_file_info(path).type == pafs.FileType.Directory


def locate(target: str, storage_path: str | None = None) -> str:
    """Return the folder or URI that ``target`` names: a run or a checkpoint.

    Tried in order: ``target`` as a URI; ``<storage_path>/<target>`` when ``storage_path`` is
    given; ``target`` as a local folder; ``<default storage root>/<target>``.
    ``target`` may be a run id or ``<run id>/checkpoint_<n>``.

    Raises
    ------
    CheckPointNotFoundError
        If none of these exists; the message lists where it looked.
    """
    if storage.is_uri(target):
        if not _is_dir(target):
            raise CheckPointNotFoundError(f"nothing at {target!r}; check the URI.")
        return target.rstrip("/")
    tried: list[str] = []
    candidates = []
    if storage_path:
        candidates.append(storage.join(storage.root_of(storage_path), target))
    candidates.append(str(Path(target.removeprefix("file://")).expanduser().absolute()))
    if not storage_path:
        candidates.append(storage.join(storage.root_of(None), target))
    for candidate in candidates:
        if _is_dir(candidate):
            return candidate
        tried.append(candidate)
    hint = (
        "check the run id and --storage-path"
        if storage_path
        else f"pass --storage-path or set {storage.STORAGE_ENV_VAR} to the run's storage root"
    )
    raise CheckPointNotFoundError(
        f"no run or checkpoint {target!r}: looked at {', '.join(map(repr, tried))}; {hint}."
    )


def _checkpoint_names(location: str) -> list[str]:
    """The checkpoint folder names directly under ``location``, oldest iteration first."""
    if not storage.is_uri(location):
        return [p.name for p in list_checkpoints(Path(location))]
    with _reading(location):
        names = [n for n in storage.list_dirs(location) if parse_iteration(n) is not None]
    return sorted(names, key=lambda n: parse_iteration(n) or 0)


def _read_local_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _unchecked_summary(location: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A summary from ``metadata.json`` alone: the recorded file sizes, digests not checked."""
    files = metadata.get("files")
    files = files if isinstance(files, dict) else {}
    size = sum(
        info["size"]
        for info in files.values()
        if isinstance(info, dict) and isinstance(info.get("size"), int)
    )
    # Without a readable metadata.json a checkpoint is incomplete, checked or not.
    integrity = (
        "unchecked"
        if metadata
        else f"{MARK_BAD}: checkpoint {location!r} has no readable {METADATA_FILE}."
    )
    summary: dict[str, Any] = {"path": location, "size_bytes": size, "integrity": integrity}
    summary.update({key: metadata.get(key) for key in _SUMMARY_KEYS})
    summary["files"] = sorted(files)
    return summary


def _describe(location: str, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(summary, metadata)`` of the checkpoint at a folder or URI."""
    if not verify:
        with _reading(location):
            try:
                metadata = storage.read_json(storage.join(location, METADATA_FILE)) or {}
            except ValueError:  # unparsable: reported as BAD below
                metadata = {}
        metadata = metadata if isinstance(metadata, dict) else {}
        return _unchecked_summary(location, metadata), metadata
    if not storage.is_uri(location):
        summary = describe_checkpoint(Path(location))
        return summary, _read_local_json(Path(location) / METADATA_FILE)
    # Verifying digests needs the bytes: one checkpoint at a time in a folder removed after.
    with tempfile.TemporaryDirectory(prefix="raytrainer-inspect-") as tmp:
        local = Path(tmp) / location.rsplit("/", 1)[-1]
        with _reading(location):
            storage.download_dir(location, local)
        summary = describe_checkpoint(local)
        metadata = _read_local_json(local / METADATA_FILE)
    summary["path"] = location
    summary["integrity"] = str(summary["integrity"]).replace(str(local), location)
    return summary, metadata


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _score_metric(
    entries: Sequence[CheckpointEntry], metric: str | None, order: str | None
) -> tuple[str | None, Literal["max", "min"], str]:
    """The metric and order for ``best``: the flags, else the newest checkpoint's metadata.

    Raises
    ------
    ConfigError
        If ``metric`` is not the run's own and no ``order`` says which way is better.
    """
    newest = next((e.metadata for e in reversed(entries) if e.metadata), {})
    saved_metric, saved_order = newest.get("score_metric"), newest.get("score_order")
    if metric:
        # The saved order belongs to the saved metric; for another one, guessing could mark
        # the worst checkpoint best.
        chosen = order or (saved_order if saved_metric == metric else None)
        if chosen not in ("max", "min"):
            raise ConfigError(
                f"--score-metric {metric}: say whether a lower or a higher value is better "
                "with --score-order min|max."
            )
        return metric, chosen, "--score-metric"
    if saved_metric:
        chosen = order or saved_order or "max"
        return str(saved_metric), "min" if chosen == "min" else "max", "checkpoint metadata"
    return None, "max", ""


def _marked(
    entries: list[CheckpointEntry], metric: str | None, order: Literal["max", "min"]
) -> list[CheckpointEntry]:
    usable = [e for e in entries if e.usable]
    latest = usable[-1].name if usable else None
    best = None
    if metric is not None:
        sign = 1.0 if order == "min" else -1.0
        scored = [
            (sign * s, e.name)
            for e in usable
            if (s := _score((e.summary.get("metrics") or {}).get(metric))) is not None
        ]
        # min() keeps the first of equal scores: the earliest checkpoint that reached it.
        best = min(scored, key=lambda item: item[0])[1] if scored else None
    marked = []
    for entry in entries:
        marks = [
            mark
            for mark, applies in (
                (MARK_LATEST, entry.name == latest),
                (MARK_BEST, entry.name == best),
                (MARK_BAD, not entry.usable),
            )
            if applies
        ]
        marked.append(CheckpointEntry(entry.name, entry.summary, entry.metadata, tuple(marks)))
    return marked


def list_run(
    target: str,
    storage_path: str | None = None,
    score_metric: str | None = None,
    score_order: Literal["max", "min"] | None = None,
    verify: bool = True,
) -> RunListing:
    """List a run's checkpoints with their marks: latest, best and BAD.

    Parameters
    ----------
    target : str
        A run id, a run folder or a URI; see :func:`locate`.
    storage_path : str or None
        The storage root to look up a run id in (default: the default root).
    score_metric, score_order : str or None, {"max", "min"} or None
        The metric ``best`` is decided by, overriding the ``score_metric`` / ``score_order``
        recorded in the newest checkpoint's metadata. Without either, nothing is ``best``.
    verify : bool
        Check every file's digest (downloading checkpoints in cloud storage); ``False`` reads
        only each ``metadata.json`` and marks nothing ``BAD``.

    Raises
    ------
    CheckPointNotFoundError
        If the run is not found or holds no checkpoints.
    """
    location = locate(target, storage_path)
    names = _checkpoint_names(location)
    if not names:
        if parse_iteration(location.rstrip("/").rsplit("/", 1)[-1]) is not None:
            raise CheckPointNotFoundError(
                f"{location!r} is a checkpoint, not a run; use `raytrainer checkpoints show`."
            )
        raise CheckPointNotFoundError(
            f"no checkpoints under {location!r}; is it a run folder (<storage root>/<run id>)?"
        )
    entries = []
    for name in names:
        summary, metadata = _describe(storage.join(location, name), verify)
        entries.append(CheckpointEntry(name, summary, metadata))
    metric, order, source = _score_metric(entries, score_metric, score_order)
    return RunListing(location, _marked(entries, metric, order), metric, order, source)


def show_checkpoint(target: str, storage_path: str | None = None) -> dict[str, Any]:
    """Describe one checkpoint, its digests verified; a run stands for its newest checkpoint.

    Parameters
    ----------
    target : str
        A checkpoint folder or URI, ``<run id>/checkpoint_<n>``, or a run (id, folder or URI).
    storage_path : str or None
        The storage root to look up a run id in (default: the default root).

    Returns
    -------
    dict
        :func:`~raytrainer.checkpoint.layout.describe_checkpoint`'s summary, with ``path`` the
        folder or URI and ``integrity`` ``"ok"`` or ``"BAD: <why>"``.

    Raises
    ------
    CheckPointNotFoundError
        If nothing is found, or a run holds no checkpoints.
    """
    location = locate(target, storage_path)
    if parse_iteration(location.rstrip("/").rsplit("/", 1)[-1]) is None:
        names = _checkpoint_names(location)
        if not names:
            raise CheckPointNotFoundError(
                f"{location!r} is neither a checkpoint (checkpoint_<n>) nor a run with checkpoints."
            )
        location = storage.join(location, names[-1])
    return _describe(location)[0]


def _size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _metrics(metrics: Any) -> str:
    if not isinstance(metrics, dict):
        return "-"
    parts = [
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(metrics.items())
        if k != "iteration"  # already a column
    ]
    return " ".join(parts) or "-"


def format_listing(listing: RunListing) -> str:
    """Return the listing as a table, then how ``best`` was chosen and why any is ``BAD``."""
    lines = [
        f"run: {listing.location}",
        f"{'checkpoint':<20} {'iteration':>9}  {'created':<25} {'size':>9}  {'marks':<11} metrics",
    ]
    for entry in listing.checkpoints:
        info = entry.summary
        lines.append(
            f"{entry.name:<20} {info['iteration']!s:>9}  {info['created']!s:<25} "
            f"{_size(info['size_bytes']):>9}  {','.join(entry.marks) or '-':<11} "
            f"{_metrics(info['metrics'])}"
        )
    if listing.score_metric is None:
        lines.append(
            "best: no score metric in the checkpoints' metadata; pass --score-metric NAME "
            "[--score-order min|max]"
        )
    else:
        word = "lowest" if listing.score_order == "min" else "highest"
        lines.append(f"best: {word} {listing.score_metric!r} (from {listing.score_from})")
    if any(e.summary["integrity"] == "unchecked" for e in listing.checkpoints):
        lines.append("digests not checked (--no-verify)")
    for entry in listing.checkpoints:
        if not entry.usable:
            reason = str(entry.summary["integrity"]).removeprefix(f"{MARK_BAD}: ")
            # The row names the checkpoint; drop the path the verifier's message starts with.
            reason = reason.removeprefix(f"checkpoint {entry.summary['path']!r}: ")
            lines.append(f"{MARK_BAD} {entry.name}: {reason}")
    return "\n".join(lines)
