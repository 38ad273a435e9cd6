"""Where a base run's checkpoint comes from: a storage folder/URI, or its W&B artifact."""

from __future__ import annotations

from pathlib import Path

from raytrainer import storage
from raytrainer.checkpoint.layout import BASE_RUN_DIR, parse_iteration, select_checkpoint
from raytrainer.checkpoint.wandb_mirror import WandbClient
from raytrainer.params import BaseRunParameters


def wandb_artifact_path(base: BaseRunParameters, version: str) -> str:
    """The W&B path of a base run's checkpoint: ``entity/project/state_<run_id>:<alias>``.

    ``version`` is ``"latest"``, ``"best"``, ``"v3"``, an iteration (``"20"`` → ``iter-20``)
    or a folder name (``"checkpoint_000020"`` → ``iter-20``).
    """
    iteration = int(version) if version.isdigit() else parse_iteration(version)
    alias = f"iter-{iteration}" if iteration is not None else version
    prefix = "/".join(p for p in (base.entity, base.project) if p)
    return f"{prefix}/state_{base.run_id}:{alias}"


def fetch_base_run_checkpoint(
    base: BaseRunParameters, version: str, client: WandbClient, workdir: Path
) -> Path:
    """Return a local folder holding the base run's checkpoint ``version``.

    From W&B when the base run names a project (and no storage path), else from its storage
    (``storage_path``, default the default storage root), downloading from a URI into
    ``workdir``. The caller verifies the digests.
    """
    if base.storage_path is None and base.project is not None:
        return client.download_artifact(wandb_artifact_path(base, version), workdir / BASE_RUN_DIR)
    run_location = storage.join(storage.root_of(base.storage_path), base.run_id)
    name = select_checkpoint(storage.list_dirs(run_location), version, run_location)
    location = storage.join(run_location, name)
    if not storage.is_uri(location):
        return Path(location)
    return storage.download_dir(location, workdir / BASE_RUN_DIR / name)
