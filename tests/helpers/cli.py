"""The ``raytrainer`` command called in this process.

Spawning the command costs a torch import (about 3 s on 2 cores) per call; a case that needs
only what ``main`` prints and returns calls it here. The tests that need the real process (its
exit status, no traceback, signals) spawn it.
"""

from __future__ import annotations

import pytest

from raytrainer.cli import main


def call_main(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """``raytrainer ARGS`` in this process: its exit status, stdout and stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
