"""The Ray Train runner: the trainer runs as Ray Train workers (DDP; gloo on CPU).

Process map: :func:`run` and :class:`DriverProgress` run in the driver; :func:`train_worker`
is the function Ray calls in every worker (it builds the trainer with a ``RayTrainBackend``);
:class:`RunStatusActor` is a small actor through which rank 0 tells the driver its progress and
what W&B missed. It lives on the driver's node, so losing a worker node never takes it along;
a worker that cannot reach it anyway trains on without it and says so once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train.v2._internal.execution.context import get_train_context

from raytrainer import storage
from raytrainer.backends.ray_train import RayTrainBackend
from raytrainer.build import build_trainer, load_hyper_params, resolve_settings, run_uri
from raytrainer.errors import ConfigError, NodePreempted, RunFailedError, RunStopped
from raytrainer.params import HyperParameters
from raytrainer.progress import ProgressBar, ProgressBarFactory
from raytrainer.runners.dry_run import dry_run
from raytrainer.runners.local import stop_on_sigterm
from raytrainer.runners.result import RunResult, mark_complete, prepare_run_folder
from raytrainer.settings import ExperimentSettings, Scaling


def run(
    hyper_params: HyperParameters,
    settings: ExperimentSettings,
    scaling: Scaling | None = None,
    address: str | None = None,
) -> RunResult:
    """Run the trainer as Ray Train workers; resume the run if its storage has checkpoints.

    Runs on the driver. Connects to the Ray cluster at ``address`` (or the one Ray finds:
    ``RAY_ADDRESS``, a running local head, the cluster of a ``ray job``), or starts a local
    instance for the run and stops it afterwards. The run is ``RunConfig(name=run_id)`` under
    ``settings.storage_path``, so rerunning the same command after the driver dies resumes it.

    Raises
    ------
    ConfigError
        Before Ray starts, for a bad scaling or a batch size the workers cannot share.
    RunFailedError
        When the workers fail more than ``settings.max_failures`` times; it carries the
        workers' error.
    """
    scaling = scaling or Scaling()
    scaling.check_batch_size(hyper_params.batch_size)
    if settings.test_run:
        return dry_run(hyper_params, settings, lambda hp, s: run(hp, s, scaling, address=address))
    began = time.perf_counter()
    settings = resolve_settings(hyper_params, settings)
    storage_fs, storage_path = storage.resolve(str(settings.storage_path))  # before Ray starts
    done = prepare_run_folder(run_uri(settings), hyper_params, settings)
    if done is not None:
        return done
    # The folder is settled: a worker group Ray restarts must resume, not start over.
    settings = dataclasses.replace(settings, do_not_load_checkpoint=False, restart=False)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints shown once
    started = not ray.is_initialized()
    settings = with_wandb_folders(settings, on_this_machine=started and address is None)
    if started:
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        ray.init(
            address=address,
            logging_level="WARNING",
            log_to_driver=True,
            runtime_env=job_runtime_env(settings),
        )
    try:
        result = _fit(hyper_params, settings, scaling, storage_fs, storage_path)
    finally:
        if started:
            ray.shutdown()
    mark_complete(result, hyper_params, settings, began)
    return result


# Ray Train's controller collects reports when it polls the workers (every 2 s by default) and a
# worker's second report waits for its first to be collected: a save every few seconds blocked
# for up to 2 s. Polling every 0.1 s costs the controller a few small calls per second. Node
# drains (preemption notices) are polled every second instead of 5: a cloud's notice gives
# 30 s to 2 min.
_CONTROLLER_POLL = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
}


def job_runtime_env(settings: ExperimentSettings, controller_poll: bool = True) -> dict[str, Any]:
    """The runtime env of the Ray job this driver starts or connects: every process of the run.

    ``settings.worker_env`` (credentials for the storage, say) is set by a
    ``worker_process_setup_hook``, which every process of the job runs as it starts: Ray Train's
    controller, which writes to storage too, as well as the workers. Ray keeps the hook in its
    GCS and logs only its name, where it writes the values of ``env_vars`` into
    ``runtime_env_agent.log``; so only the controller's poll intervals (defaults, not secrets;
    left out with ``controller_poll=False``) go there. A variable the submitted ``ray job``
    already sets is left to it (Ray refuses to merge two values of one variable).
    """
    # A driver started by `ray job submit` gets the job's config in this variable.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
    poll = _CONTROLLER_POLL if controller_poll else {}
    poll = {k: v for k, v in poll.items() if k not in os.environ and k not in job_env}
    runtime_env: dict[str, Any] = {"env_vars": poll}
    private = {k: v for k, v in settings.worker_env.items() if k not in job_env}
    if private and "worker_process_setup_hook" not in (job.get("runtime_env") or {}):
        runtime_env["worker_process_setup_hook"] = _environment_setter(private)
    return runtime_env


def _environment_setter(env: dict[str, str]) -> Callable[[], None]:
    """A setup hook giving a Ray process ``env``; Ray pickles it with its values by value."""

    def set_run_environment() -> None:
        os.environ.update(env)

    return set_run_environment


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when no Ray cluster listens at ``host:port``.

    Ray itself retries an unreachable GCS for minutes. ``auto``, ``local`` and ``ray://``
    addresses are left to Ray.

    Raises
    ------
    ConfigError
        If nothing accepts a connection at the address.
    """
    if not address or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({exc}); start one with `ray start --head`, "
            "or leave out --address (and RAY_ADDRESS) to start a local one for the run."
        ) from None


_WANDB_FOLDERS = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")


def with_wandb_folders(settings: ExperimentSettings, on_this_machine: bool) -> ExperimentSettings:
    """Give rank 0 the driver's W&B folders: a Ray worker's cwd is a temporary session folder.

    The driver's ``WANDB_*DIR`` variables are passed on; on a Ray instance this driver started
    (one machine), ``WANDB_DIR`` defaults to the driver's working directory, as in-process.
    Entries of ``settings.worker_env`` win. The API key is never passed on by raytrainer.
    """
    if settings.wandb_mode == "disabled":
        return settings
    env = {name: os.environ[name] for name in _WANDB_FOLDERS if os.environ.get(name)}
    if on_this_machine:
        env.setdefault("WANDB_DIR", os.getcwd())
    return dataclasses.replace(settings, worker_env={**env, **settings.worker_env})


def torch_trainer(
    hyper_params: HyperParameters,
    settings: ExperimentSettings,
    scaling: Scaling,
    storage_fs: Any,
    storage_path: str,
    status_actor: str | None = None,
    callbacks: list[Any] | None = None,
) -> ray.train.torch.TorchTrainer:
    """The ``TorchTrainer`` of a resolved run: ``RunConfig(name=run_id)`` under the storage root.

    Runs on the driver (or in a sweep trial that drives a nested run). Retention and failure
    limits come from ``settings``, and ``train_worker`` sets its ``worker_env``;
    ``status_actor`` names the actor rank 0 reports progress to; ``callbacks`` run on Ray
    Train's controller.
    """
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={
            "hyper_params": hyper_params.to_saved(),
            "settings": settings.to_worker_config(),
            "status_actor": status_actor,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": scaling.cpus_per_worker,
                **({"GPU": scaling.gpus_per_worker} if scaling.gpus_per_worker else {}),
            },
        ),
        run_config=RunConfig(
            name=settings.run_id,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            # Ray keeps every checkpoint reported; rank 0 applies the run's retention to what
            # is in storage (RayTrainBackend), which also counts earlier attempts' checkpoints.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            # Worker errors are retried max_failures times; a controller that cannot start
            # the workers at all fails the run instead of retrying forever.
            failure_config=FailureConfig(
                max_failures=settings.max_failures, controller_failure_limit=3
            ),
            callbacks=callbacks,
            # Ray Train logs every report and checkpoint of every rank at INFO.
            logging_config=LoggingConfig(log_level="INFO" if settings.verbose else "WARNING"),
        ),
    )


def _fit(
    hyper_params: HyperParameters,
    settings: ExperimentSettings,
    scaling: Scaling,
    storage_fs: Any,
    storage_path: str,
) -> RunResult:
    run_id, uri = str(settings.run_id), run_uri(settings)
    actor_name = f"raytrainer-status-{run_id}-{uuid.uuid4().hex[:6]}"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: a node lost under the workers must not take the driver's helper.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = RunStatusActor.options(name=actor_name, scheduling_strategy=here).remote()
    trainer = torch_trainer(hyper_params, settings, scaling, storage_fs, storage_path, actor_name)
    try:
        with (
            stop_on_sigterm() as stop,
            _forward_stop(stop, actor),
            DriverProgress(actor, settings.progress_bar_factory, desc=run_id),
        ):
            result = trainer.fit()
        unmirrored, stopped_at = ray.get(actor.get_outcome.remote())
    except SystemExit as exc:
        # Ray Train's SIGINT handler aborts the controller and exits; to the caller this is
        # a Ctrl-C like any other (the last checkpoint is intact; rerunning resumes).
        raise KeyboardInterrupt from exc
    except ray.train.TrainingFailedError as exc:
        raise RunFailedError(
            f"run {run_id} failed after {settings.max_failures} restart(s); the last good "
            f"checkpoint is in {uri}. Workers reported:\n{exc}"
        ) from exc
    finally:
        ray.kill(actor)
    if stopped_at is not None:  # the workers saved and returned: not complete
        raise RunStopped(run_id, stopped_at)
    final = dict(result.metrics or {})  # reported with the last checkpoint
    iteration = int(final.pop("iteration", 0))
    return RunResult(run_id, uri, iteration, final, unmirrored=unmirrored)


@contextlib.contextmanager
def _forward_stop(stop: threading.Event, actor: Any) -> Iterator[None]:
    """Pass a stop request (SIGTERM on the driver) to the workers, through the status actor.

    A thread does it: the signal handler only sets ``stop``, as Ray calls from inside a
    handler could re-enter the one the main thread is in.
    """
    done = threading.Event()

    def forward() -> None:
        while not done.is_set():
            if stop.wait(0.2):
                actor.request_stop.remote()
                return

    thread = threading.Thread(target=forward, name="raytrainer-stop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def train_worker(config: dict[str, Any]) -> None:
    """The per-worker training function: build the scenario and the trainer, call ``train()``.

    Runs in every Ray Train worker; Ray imports it from the installed package. ``config`` holds
    the saved hyper-parameters, the plain settings and the status actor's name (or ``None``).
    """
    # Also set at the process's start when raytrainer started or connected Ray (the job's
    # setup hook); this covers a Ray instance the caller started. Never through Ray's
    # runtime env, whose values Ray logs.
    os.environ.update(config["settings"]["worker_env"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if not config["settings"].get("verbose"):
        _quiet_report_lines()
    hyper_params = load_hyper_params(config["hyper_params"])
    named = config["status_actor"]
    status = _find_status_actor(named) if rank == 0 and named else None
    plain = config["settings"]
    backend = RayTrainBackend(
        plain["run_id"],
        plain["storage_path"],
        plain["num_to_keep"],
        plain["checkpoint_score_metric"],
        plain["checkpoint_score_order"],
        asynchronous=not plain["sync_saves"],
    )
    settings = ExperimentSettings(
        **plain,
        device=str(ray.train.torch.get_device()),
        world_rank=rank,
        local_rank=context.get_local_rank(),
        world_size=context.get_world_size(),
        backend=backend,
        progress_bar_factory=_remote_bar_factory(status) if status is not None else None,
        # Rank 0 asks the driver; every rank takes the answer from the step's all-reduce.
        stop_requested=_StopPoll(status) if status is not None else None,
        preempted=_preemption_notice,
    )
    trainer = build_trainer(hyper_params, settings)
    try:
        stopped_at = None
        try:
            trainer.train()
        except RunStopped as exc:  # saved; return normally, or Ray would restart the group
            stopped_at = exc.iteration
        except NodePreempted as exc:  # saved; Ray Train restarts the group on other nodes
            trainer.close()  # the W&B mirror sends what it has before the node goes
            _wait_for_restart(exc, rank)
        unmirrored = trainer.close()
        if status is not None:
            try:
                ray.get(status.set_outcome.remote(unmirrored, stopped_at), timeout=30)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                _logger.warning(_STATUS_LOST, type(exc).__name__)
    finally:
        trainer.close()
        backend.cleanup()


_logger = logging.getLogger("raytrainer")
_STATUS_LOST = (
    "the driver's status actor is unreachable (%s): training goes on; the driver's progress "
    "bar stops and the end-of-run W&B summary may be missing"
)


def _preemption_notice() -> bool:
    """Whether Ray Train told this worker that a node of its group is being drained.

    Read from the worker's own context, without a collective: the trainer's per-step
    all-reduce makes every rank agree (``ray.train.get_preemption_info`` would add a
    synchronisation through an actor at every step).
    """
    return get_train_context().preemption_context.preemption_info is not None


def _wait_for_restart(notice: NodePreempted, rank: int) -> None:
    """Idle until Ray Train tears the group down at the drain's deadline, then restarts it.

    Training on would only make steps the restarted group repeats: the checkpoint is at the
    notice. Should the deadline pass by a minute with the worker still alive, this raises, so
    the group restarts from that checkpoint anyway.
    """
    info = get_train_context().preemption_context.preemption_info
    deadline_s = (info.deadline_ms / 1000) if info and info.deadline_ms else None
    if rank == 0:
        nodes = ", ".join(info.preempted_node_ids) if info else "?"
        left = f"{deadline_s - time.time():.0f} s" if deadline_s else "no deadline given"
        _logger.warning(
            "%s Node(s) %s are draining (%s); waiting for Ray Train to restart the workers.",
            notice,
            nodes,
            left,
        )
    # Without a deadline Ray Train waits its default 120 s from the notice.
    give_up = (deadline_s or time.time() + 120) + 60
    while time.time() < give_up:
        time.sleep(1.0)  # the controller ends this process at the deadline
    raise RunFailedError(
        f"{notice} Ray Train did not restart the workers within a minute of the drain's "
        "deadline; this attempt fails so that the next one resumes from that checkpoint."
    )


def _find_status_actor(name: str) -> Any:
    try:
        return ray.get_actor(name)
    except ValueError as exc:  # gone with its node, or the driver is gone
        _logger.warning(_STATUS_LOST, exc)
        return None


def _quiet_report_lines() -> None:
    """Drop Ray Train's "Reporting training result ..." line, logged by every rank per report.

    RunConfig's LoggingConfig quiets Ray Train's loggers, but this one is named after its file.
    """
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: its lines stay
        return
    logger = getattr(train_context, "logger", None)
    if isinstance(logger, logging.Logger):
        logger.setLevel(logging.WARNING)


@ray.remote(num_cpus=0)
class RunStatusActor:
    """What rank 0 tells the driver: progress as it goes, and what W&B missed at the end."""

    def __init__(self) -> None:
        self.total = 0
        self.initial = 0
        self.n = 0
        self.postfix: dict[str, str] = {}
        self.unmirrored: list[str] = []
        self.stop = False
        self.stopped_at: int | None = None

    def request_stop(self) -> None:
        """Ask the workers to save and stop (the driver got SIGTERM)."""
        self.stop = True

    def stop_requested(self) -> bool:
        """Whether :meth:`request_stop` was called."""
        return self.stop

    def set_outcome(self, unmirrored: list[str], stopped_at: int | None) -> None:
        """Record what the W&B mirror could not upload, and where the run stopped if it did."""
        self.unmirrored = list(unmirrored)
        self.stopped_at = stopped_at

    def get_outcome(self) -> tuple[list[str], int | None]:
        """Return what :meth:`set_outcome` recorded."""
        return self.unmirrored, self.stopped_at

    def start(self, total: int, initial: int) -> None:
        """Set the total and the starting position (a resumed run starts where it was)."""
        self.total, self.initial, self.n = total, initial, initial

    def update(self, n: int) -> None:
        """Advance by ``n``."""
        self.n += n

    def set_postfix(self, postfix: dict[str, str]) -> None:
        """Set the latest metrics, as the bar shows them."""
        self.postfix = dict(postfix)

    def get(self) -> tuple[int, int, int, dict[str, str]]:
        """Return ``(total, initial, n, postfix)``."""
        return self.total, self.initial, self.n, self.postfix


class _StopPoll:
    """Rank 0's view of the driver's stop request: the status actor, asked without waiting."""

    def __init__(self, actor: Any) -> None:
        self._actor: Any = actor
        self._pending = actor.stop_requested.remote()
        self._asked = False

    def __call__(self) -> bool:
        if self._asked or self._actor is None:
            return self._asked
        try:
            done, asked = _result_if_done(self._pending)
        except ray.exceptions.RayError:
            self._actor = None  # the bar's warning says so once
            return False
        if done:
            self._asked = bool(asked)
            if not self._asked:
                self._pending = self._actor.stop_requested.remote()
        return self._asked


def _result_if_done(ref: Any) -> tuple[bool, Any]:
    """Whether an actor call has finished, and its result, without waiting.

    Raises ``ray.exceptions.RayError`` if it failed (its actor died, say).
    """
    ready, _ = ray.wait([ref], timeout=0)
    return (True, ray.get(ready[0])) if ready else (False, None)


class _RemoteBar:
    """What rank 0's progress-bar factory returns: updates go to the actor, unawaited.

    The previous call's result is checked without waiting; once the actor is found dead the
    bar logs it once and sends nothing more (training goes on).
    """

    def __init__(self, actor: Any, total: int, initial: int) -> None:
        self._actor: Any = actor
        self._last = actor.start.remote(total, initial)

    def _send(self, method: str, *args: Any) -> None:
        if self._actor is None:
            return
        try:
            _result_if_done(self._last)
        except ray.exceptions.RayError as exc:
            _logger.warning(_STATUS_LOST, type(exc).__name__)
            self._actor = None
            return
        self._last = getattr(self._actor, method).remote(*args)

    def update(self, n: int = 1) -> None:
        self._send("update", n)

    def set_postfix(self, postfix: dict[str, str], refresh: bool = False) -> None:
        self._send("set_postfix", postfix)

    def close(self) -> None:
        pass


def _remote_bar_factory(actor: Any) -> ProgressBarFactory:
    def factory(total: int, initial: int = 0, desc: str = "") -> ProgressBar:
        return _RemoteBar(actor, total, initial)

    return factory


class DriverProgress:
    """A driver thread that draws one bar from the :class:`RunStatusActor`.

    Parameters
    ----------
    actor : ActorHandle
        The run's status actor.
    factory : ProgressBarFactory or None
        Builds the driver's bar; ``None`` draws nothing.
    desc : str
        The bar's label.
    interval : float
        Seconds between reads of the actor.
    """

    def __init__(
        self, actor: Any, factory: ProgressBarFactory | None, desc: str, interval: float = 0.5
    ) -> None:
        self._actor = actor
        self._factory = factory
        self._desc = desc
        self._interval = interval
        self._stop = threading.Event()
        self._bar: ProgressBar | None = None
        self._shown = 0
        self._thread = threading.Thread(target=self._loop, name="raytrainer-progress", daemon=True)

    def __enter__(self) -> DriverProgress:
        if self._factory is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._factory is None:
            return
        self._stop.set()
        self._thread.join()
        self._refresh()  # the last counts, after the run
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._refresh()

    def _refresh(self) -> None:
        try:
            total, initial, n, postfix = ray.get(self._actor.get.remote(), timeout=10)
        except (ray.exceptions.RayError, TimeoutError):
            return
        if total == 0:
            return
        if self._bar is None:
            assert self._factory is not None
            self._bar = self._factory(total=total, initial=initial, desc=self._desc)
            self._shown = initial
        set_postfix = getattr(self._bar, "set_postfix", None)
        if postfix and set_postfix is not None:  # already formatted by rank 0
            set_postfix(postfix, refresh=False)
        if n != self._shown:
            self._bar.update(n - self._shown)
            self._shown = n
