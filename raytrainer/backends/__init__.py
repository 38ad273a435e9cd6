"""Run backends: where reports and checkpoints go (in-process, Ray Train, Ray Tune)."""

from raytrainer.backends.base import Backend
from raytrainer.backends.local import LocalBackend

__all__ = ["Backend", "LocalBackend"]
