"""The in-process runner: the trainer runs in this process, so a breakpoint works."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Iterator

from raytrainer.build import build_trainer, local_settings
from raytrainer.params import HyperParameters
from raytrainer.runners.dry_run import dry_run
from raytrainer.runners.result import RunResult, mark_complete, prepare_run_folder
from raytrainer.settings import ExperimentSettings


def run_local(hyper_params: HyperParameters, settings: ExperimentSettings) -> RunResult:
    """Run the trainer in this process; resume the run if it has checkpoints.

    Checkpoints go to ``<storage>/<run id>/checkpoint_<n>``, the same layout as under Ray.
    Rerunning a finished run returns at once with ``already_complete=True``; rerunning it with
    a larger ``num_iterations`` continues it. ``settings.test_run`` makes it a dry run
    (:func:`raytrainer.runners.dry_run.dry_run`).

    Raises
    ------
    RunStopped
        On SIGTERM: the trainer saved a checkpoint at its next step and stopped; running
        again resumes there.
    """
    if settings.test_run:
        return dry_run(hyper_params, settings, run_local)
    started = time.perf_counter()
    settings = local_settings(hyper_params, settings)
    backend = settings.backend
    assert backend is not None
    done = prepare_run_folder(backend.storage_uri, hyper_params, settings)
    if done is not None:
        return done
    with stop_on_sigterm() as stop:
        settings = dataclasses.replace(settings, stop_requested=stop.is_set)
        trainer = build_trainer(hyper_params, settings)
        try:
            trainer.train()  # raises RunStopped after saving, on SIGTERM
        finally:
            unmirrored = trainer.close()
    result = RunResult(
        trainer.run_id,
        backend.storage_uri,
        trainer.iteration,
        dict(trainer.metrics),
        unmirrored=unmirrored,
    )
    mark_complete(result, hyper_params, settings, started)
    return result


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[threading.Event]:
    """An event that SIGTERM sets instead of killing the process, while the block runs.

    The trainer checks it every step (``settings.stop_requested``), then saves and stops. Only
    the main thread can take signals; elsewhere the event is never set.
    """
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)
