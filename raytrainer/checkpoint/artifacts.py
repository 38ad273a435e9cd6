"""A trainer's own artifacts: local, versioned folders that the W&B mirror uploads.

``artifacts/<name>/v<k>/`` in the folder rank 0 writes into holds version ``k`` of artifact
``name``: the previous version's files plus the one just added, and a ``manifest.json`` of
digests (``"xxh3_128:<hex>"`` per file, as :func:`~raytrainer.checkpoint.layout.file_digest`
writes them; bare SHA-256 hex before). Versions are written under a temporary name and renamed
into place when complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from raytrainer.checkpoint.layout import (
    ARTIFACT_MANIFEST_FILE,
    ARTIFACTS_DIR,
    artifact_version_name,
    artifact_versions,
    file_digest,
    temporary_name,
)
from raytrainer.errors import ConfigError


def add_file_version(
    base_dir: Path, artifact_name: str, artifact_type: str, file_path: Path, iteration: int
) -> Path:
    """Write a new version of artifact ``artifact_name`` holding ``file_path``; return its folder.

    Runs on rank 0, on the training thread (a copy of the file and its digests).

    Parameters
    ----------
    base_dir : Path
        The local folder this process writes into (``Trainer.checkpoint_base_dir``).
    artifact_name, artifact_type : str
        The artifact's name (no version, alias or path) and W&B type.
    file_path : Path
        The file to add; a file of the same name in the previous version is replaced.
    iteration : int
        Recorded in the manifest.

    Raises
    ------
    ConfigError
        If the name holds a version, alias or path.
    FileNotFoundError
        If ``file_path`` is not a file.
    """
    if ":" in artifact_name or "/" in artifact_name:
        raise ConfigError(
            f"artifact name {artifact_name!r} must not contain a version, alias or path."
        )
    file_path = Path(file_path)
    if not file_path.is_file():
        raise FileNotFoundError(f"cannot add {str(file_path)!r} to an artifact: no such file.")
    root = base_dir / ARTIFACTS_DIR / artifact_name
    versions = artifact_versions(root)
    new = root / artifact_version_name(versions[-1] + 1 if versions else 0)
    tmp = root / temporary_name(new.name)
    if versions:
        shutil.copytree(root / artifact_version_name(versions[-1]), tmp)
        (tmp / ARTIFACT_MANIFEST_FILE).unlink(missing_ok=True)
    else:
        tmp.mkdir(parents=True)
    shutil.copy2(file_path, tmp / file_path.name)
    manifest = {
        "name": artifact_name,
        "type": artifact_type,
        "version": new.name,
        "iteration": iteration,
        "files": {p.name: file_digest(p) for p in sorted(tmp.iterdir())},
    }
    (tmp / ARTIFACT_MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    tmp.rename(new)
    return new
