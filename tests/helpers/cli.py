"""The ``raytrainer`` command called in this process, for input that fails before any work.

Spawning the command costs a torch import (about 3 s on 2 cores) per call; a bad-input case
needs only what ``main`` prints and returns. One case per command still runs as a real process
(the tests beside the parametrized ones), for the exit status and the absence of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from raytrainer.cli import main


def call_main(
    args: Sequence[object],
    cwd: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str, str]:
    """``raytrainer ARGS`` run from ``cwd``: its exit status, stdout and stderr."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the cwd on sys.path
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
