"""Storage locations as pyarrow filesystems: a local folder or a URI (``s3://``, ``gs://``).

Credentials and endpoints come from the usual environment variables of each filesystem
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for S3).
The default storage root — where runs go when no ``storage_path`` is given — is decided here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from raytrainer.errors import ConfigError

STORAGE_ENV_VAR = "RAYTRAINER_STORAGE"
"""Environment variable that sets the default storage root (default ``./raytrainer_runs``)."""


def default_location() -> str:
    """Return the default storage root: ``$RAYTRAINER_STORAGE`` or ``./raytrainer_runs``.

    A URI (``s3://bucket/runs``) is returned as it is, a folder as an absolute path.
    """
    location = os.environ.get(STORAGE_ENV_VAR) or "raytrainer_runs"
    return location if is_uri(location) else str(Path(location).absolute())


def default_root() -> Path:
    """Return the default storage root as a local folder.

    Raises
    ------
    ConfigError
        If ``$RAYTRAINER_STORAGE`` is a URI, which a local ``Path`` cannot hold.
    """
    location = default_location()
    if is_uri(location):
        raise ConfigError(
            f"{STORAGE_ENV_VAR}={location!r} is a URI; this needs a local folder. "
            "Pass the URI as storage_path instead."
        )
    return Path(location)


def root_of(storage_path: str | None) -> str:
    """Return the storage root a run uses: ``storage_path``, or the default root.

    A local folder comes back absolute (a Ray job's working directory is temporary).
    """
    location = storage_path or default_location()
    return location if is_uri(location) else str(Path(location.removeprefix("file://")).absolute())


def is_uri(path: str) -> bool:
    """Whether ``path`` names a remote location (``scheme://...``) rather than a local folder."""
    return "://" in path and not path.startswith("file://")


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and the path within it for a folder or a URI.

    For S3, ``AWS_ENDPOINT_URL`` (an S3-compatible server such as MinIO) overrides the endpoint.

    Raises
    ------
    ConfigError
        If the URI's scheme has no pyarrow filesystem or it cannot be set up.
    """
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location.removeprefix("file://")).absolute())
    parsed = urlparse(location)
    try:
        if parsed.scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL")
            kwargs: dict[str, Any] = {}
            if endpoint:
                url = urlparse(endpoint)
                kwargs = {
                    "endpoint_override": url.netloc or url.path,
                    "scheme": url.scheme or "https",
                }
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                kwargs["region"] = region
            fs = pafs.S3FileSystem(**kwargs)
            return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path.rstrip("/")
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError)
        raise ConfigError(f"storage_path={location!r} cannot be opened: {exc}") from exc


def join(location: str, *parts: str) -> str:
    """Join path parts onto a folder or URI."""
    return "/".join([location.rstrip("/"), *parts])


def read_json(location: str) -> dict[str, Any] | None:
    """Read a small JSON file; ``None`` when it does not exist."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


def write_json(location: str, data: dict[str, Any]) -> None:
    """Write a small JSON file, creating parent folders."""
    fs, path = resolve(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(data, indent=1).encode())


def list_dirs(location: str) -> list[str]:
    """Return the names of the folders directly under ``location`` (empty if it is missing)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def download_dir(location: str, local: Path) -> Path:
    """Copy a folder from storage into the local folder ``local``; return ``local``."""
    fs, path = resolve(location)
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return local


def upload_file(local: Path, location: str) -> None:
    """Copy one local file to ``location`` (a path or URI), creating parent folders."""
    fs, path = resolve(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with open(local, "rb") as source, fs.open_output_stream(path) as stream:
        stream.write(source.read())


def move_dir(location: str, destination: str) -> None:
    """Move a folder to ``destination`` on the same storage (copy then delete on S3)."""
    fs, path = resolve(location)
    _, target = resolve(destination)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(path, target)  # a rename: atomic
        return
    pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=fs)
    fs.delete_dir(path)


def delete_file(location: str) -> None:
    """Delete one file; a missing file is fine."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def delete_dir(location: str) -> None:
    """Delete a folder and everything in it; a missing folder is fine."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
