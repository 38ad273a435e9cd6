"""Checkpoints: the directory layout with digests, retention, and where they are read from."""

from raytrainer.checkpoint.layout import (
    SCHEMA_VERSION,
    LoadedCheckpoint,
    apply_retention,
    checkpoint_dir_name,
    describe_checkpoint,
    find_checkpoint,
    list_checkpoints,
    read_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)

__all__ = [
    "SCHEMA_VERSION",
    "LoadedCheckpoint",
    "apply_retention",
    "checkpoint_dir_name",
    "describe_checkpoint",
    "find_checkpoint",
    "list_checkpoints",
    "read_checkpoint",
    "verify_checkpoint",
    "write_checkpoint",
]
