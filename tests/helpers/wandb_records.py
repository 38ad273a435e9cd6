"""Reads an offline W&B run file (``run-<id>.wandb``): wandb 0.31 ships no reader.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks
of records, each with a 7-byte header (crc32, length, type: full/first/middle/last); every
record is a serialised ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import wandb
from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a run file, once this process's W&B runs are on disk.

    ``run.finish()`` only tells wandb-core that a run is done (``inform_finish`` is published,
    not awaited), so the run file's tail can still sit in wandb-core's buffer when it returns.
    ``wandb.teardown()`` waits for wandb-core to close every run and exit (nothing to wait for
    when this process started none); the next ``wandb.init`` starts a new one.
    """
    wandb.teardown()
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def artifact_records(run_dir: Path) -> list:
    """The artifact records of every ``run-*.wandb`` file under an offline run folder."""
    return [
        r.artifact
        for path in sorted(Path(run_dir).rglob("run-*.wandb"))
        for r in read_records(path)
        if r.WhichOneof("record_type") == "artifact"
    ]
