"""The Tune runner: a sweep of full raytrainer runs, scheduled by Ray Tune.

Process map: :func:`sweep` runs in the driver (it builds the ``Tuner``, or restores the sweep
if its folder already holds one, and writes the summary); :func:`trial` runs in each Tune trial.
A single-worker trial runs the trainer right there with a ``TuneBackend``; a multi-worker trial
drives a nested Ray Train run (``RunConfig(name=<sweep>-<trial id>)``) whose rank-0 metrics
reach Tune through ``TuneReportCallback``. Each trial is its own run: run id
``<sweep name>-<trial id>``, its own checkpoints and its own W&B run in the sweep's group.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import ray
from ray import tune
from ray.train import UserCallback
from ray.util.queue import Queue

from raytrainer import storage
from raytrainer.backends.tune import TuneBackend
from raytrainer.build import build_trainer, load_hyper_params
from raytrainer.checkpoint.layout import (
    METADATA_FILE,
    SWEEP_PLOT_FILE,
    SWEEP_SUMMARY_FILE,
    SWEEP_TABLE_FILE,
    TUNE_POINTER_FILE,
    parse_iteration,
)
from raytrainer.errors import ConfigError, RunFailedError
from raytrainer.runners.ray_train import job_runtime_env, torch_trainer, with_wandb_folders
from raytrainer.settings import ExperimentSettings
from raytrainer.sweep_config import PBTConfig, Sweep, load_sweep, override

NESTED_TRIAL_CPU = 0.01  # a trial that only drives a nested Train run; 0 is refused by Tune


@dataclass
class SweepResult:
    """What a finished sweep reports.

    Attributes
    ----------
    name, path : str
        The sweep's name and folder (``<storage root>/<name>``).
    best : dict
        The best trial's row of :attr:`trials`.
    trials : list of dict
        One row per trial: id, run id, the varied values, status, iterations, the last and
        best metric, whether the scheduler stopped it early, and its newest checkpoint.
    """

    name: str
    path: str
    metric: str
    mode: str
    best: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)


def sweep(
    config: str | Path | Mapping[str, Any] | Sweep,
    overrides: Iterable[str] = (),
    settings: ExperimentSettings | None = None,
    address: str | None = None,
) -> SweepResult:
    """Run (or continue) a sweep; return its summary.

    Runs on the driver. ``config`` is a sweep file, its contents, or a :class:`Sweep` from
    :func:`~raytrainer.sweep_config.load_sweep` (which validates everything before Ray starts);
    ``overrides`` apply to its base config and ``settings`` are shared by every trial. Connects
    to the Ray cluster at ``address`` (or the one Ray finds) or starts a local instance for the
    sweep. When ``<storage root>/<name>`` already holds this sweep (its driver died, or it was
    interrupted), it continues: finished trials are not rerun, unfinished ones resume from their
    checkpoints.

    Raises
    ------
    ConfigError
        For a bad sweep file, or a trial that needs more CPUs or GPUs than the cluster has.
    RunFailedError
        If every trial failed.
    """
    spec = config if isinstance(config, Sweep) else load_sweep(config, overrides, settings)
    settings = dataclasses.replace(
        spec.settings, storage_path=storage.root_of(spec.settings.storage_path)
    )
    root = str(settings.storage_path)
    storage_fs, storage_path = storage.resolve(root)  # a bad URI fails before Ray starts
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table reporter, trimmed below
    # Small trials checkpoint often; Tune's advice to checkpoint less is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = not ray.is_initialized()
    if started:
        # worker_env reaches every process of the sweep (nested runs' controllers too) by a
        # setup hook; Ray's default poll intervals are kept (see job_runtime_env).
        runtime_env = job_runtime_env(settings, controller_poll=False)
        ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env)
    try:
        settings = with_wandb_folders(settings, on_this_machine=started and address is None)
        spec = dataclasses.replace(spec, settings=settings)
        resources, concurrency = _trial_resources(spec)
        trainable = tune.with_resources(
            tune.with_parameters(trial, spec=_trial_spec(spec)), resources
        )
        path = storage.join(root, spec.name)
        if tune.Tuner.can_restore(path, storage_filesystem=storage_fs):
            settings.get_logger().info("continuing sweep %s from %s", spec.name, path)
            tuner = tune.Tuner.restore(
                path,
                trainable,
                resume_unfinished=True,
                resume_errored=True,
                storage_filesystem=storage_fs,
            )
        else:
            tuner = _new_tuner(spec, trainable, concurrency, storage_fs, storage_path)
        results = tuner.fit()
        return _summarise(spec, results, path)
    finally:
        if started:
            ray.shutdown()


def _trial_resources(spec: Sweep) -> tuple[dict[str, float], int]:
    """What one trial asks Tune for, and how many trials fit the cluster at once."""
    scaling = spec.scaling
    cluster = ray.cluster_resources()
    need_cpu = scaling.num_workers * scaling.cpus_per_worker
    need_gpu = scaling.num_workers * scaling.gpus_per_worker
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise ConfigError(
            f"a trial needs {need_cpu:g} CPU and {need_gpu:g} GPU (scaling: {scaling}), but the "
            f"Ray cluster has {have_cpu:g} CPU and {have_gpu:g} GPU; lower the scaling or add "
            "nodes."
        )
    fits = int(have_cpu // need_cpu)
    if need_gpu:
        fits = min(fits, int(have_gpu // need_gpu))
    concurrency = min(spec.config.max_concurrent_trials or fits, fits)
    if scaling.num_workers == 1:
        resources = {"cpu": scaling.cpus_per_worker, "gpu": scaling.gpus_per_worker}
    else:  # the nested Train run reserves the workers' resources itself
        resources = {"cpu": NESTED_TRIAL_CPU}
    return resources, max(concurrency, 1)


def _trial_spec(spec: Sweep) -> dict[str, Any]:
    """What every trial needs, as plain values (it crosses to the trial's process)."""
    return {
        "name": spec.name,
        "base": spec.base,
        "metric": spec.config.metric,
        "settings": spec.settings.to_worker_config(),
        "scaling": dataclasses.asdict(spec.scaling),
    }


def _domain(dist: dict[str, Any]) -> Any:
    ((kind, arg),) = dist.items()
    return {
        "grid": lambda: tune.grid_search(list(arg)),
        "choice": lambda: tune.choice(list(arg)),
        "uniform": lambda: tune.uniform(*arg),
        "loguniform": lambda: tune.loguniform(*arg),
        "randint": lambda: tune.randint(*arg),
    }[kind]()


def _new_tuner(
    spec: Sweep, trainable: Any, concurrency: int, storage_fs: Any, storage_path: str
) -> tune.Tuner:
    config = spec.config
    param_space = {path: _domain(dist) for path, dist in config.search.items()}
    scheduler: Any = None
    if config.scheduler.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="iteration",  # the trainer's own: Tune's training_iteration counts reports
            max_t=config.scheduler.max_t,
            grace_period=config.scheduler.grace_period,
            reduction_factor=config.scheduler.reduction_factor,
        )
    elif isinstance(config.scheduler, PBTConfig):
        from ray.tune.schedulers import PopulationBasedTraining

        mutations = {p: _domain(d) for p, d in config.scheduler.hyperparam_mutations.items()}
        scheduler = PopulationBasedTraining(
            time_attr="iteration",
            perturbation_interval=config.scheduler.perturbation_interval,
            hyperparam_mutations=mutations,
            quantile_fraction=config.scheduler.quantile_fraction,
            resample_probability=config.scheduler.resample_probability,
        )
    search_alg: Any = None
    if config.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=config.seed)
    else:
        from ray.tune.search import BasicVariantGenerator

        # A generator instance ignores TuneConfig(max_concurrent_trials): it takes its own.
        search_alg = BasicVariantGenerator(random_state=config.seed, max_concurrent=concurrency)
    settings = spec.settings
    num_to_keep = None if isinstance(config.scheduler, PBTConfig) else settings.num_to_keep
    reporter = tune.CLIReporter(
        parameter_columns={p: p.rsplit(".", 1)[-1] for p in spec.varied_paths},
        metric_columns={"iteration": "iter", config.metric: config.metric},
        max_report_frequency=15,
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=config.metric,
            mode=config.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=config.num_samples,
            # A Searcher (Optuna) is limited here; the variant generator limits itself.
            max_concurrent_trials=concurrency if config.search_alg == "optuna" else None,
            # A single-process trial reuses its actor (torch already imported): PBT restarts
            # trials at every exploit. A nested Train run's controller dies with its actor.
            reuse_actors=spec.scaling.num_workers == 1,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=num_to_keep),
            failure_config=tune.FailureConfig(max_failures=max(settings.max_failures, 0)),
            progress_reporter=reporter,
            verbose=1,
        ),
    )


def trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """One sweep trial: a full raytrainer run of the base config with ``config``'s values.

    Runs in the trial's Tune actor. ``config`` maps dotted paths to this trial's values (PBT
    changes them between restarts); ``spec`` is what every trial shares.
    """
    run_id = f"{spec['name']}-{tune.get_context().get_trial_id()}"
    overrides = [override(path, value) for path, value in config.items()]
    hyper_params = load_hyper_params(spec["base"], overrides)
    plain = {**spec["settings"], "run_id": run_id}
    # worker_env (W&B folders among them: a trial's cwd is Ray's session folder) reaches a
    # single-process trial here; a nested run's workers get it through Ray Train.
    os.environ.update(plain.get("worker_env", {}))
    # A stopped trial's actor is reused once its thread ends; give that thread time to flush
    # the trial's W&B run (Tune waits 2 s by default, then starts a new actor).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    scaling = spec["scaling"]
    if scaling["num_workers"] == 1:
        backend = TuneBackend(run_id, spec["metric"])
        settings = ExperimentSettings(
            **plain,
            device="cuda" if scaling["gpus_per_worker"] else "cpu",
            backend=backend,
            progress_bar_factory=None,  # Tune's table shows progress
        )
        trainer = build_trainer(hyper_params, settings)
        try:
            trainer.train()
            if backend.reports == 0 and trainer.iteration > 0:
                # Restored at its end (say, a PBT donor's final checkpoint): nothing to train,
                # but Tune must see the state the trial ends with.
                trainer.save_checkpoint()
        finally:
            trainer.close()
            backend.cleanup()
        return
    _nested_train_run(hyper_params, plain, spec)


def _nested_train_run(hyper_params: Any, plain: dict[str, Any], spec: dict[str, Any]) -> None:
    """Drive a Ray Train run for a multi-worker trial, reporting each checkpoint to Tune.

    Tune gets a small checkpoint that points at the Train run's checkpoint in storage, so PBT
    can exploit multi-worker trials too: a trial that Tune restarts with another trial's
    pointer starts a new Train run, ``<run id>-from-<donor trial>-<iteration>``, from that
    checkpoint (the base-run path, digests checked) with its mutated hyper-parameters. With its
    own pointer it continues its own run, which Ray Train resumes by name.
    """
    from raytrainer.params import BaseRunParameters
    from raytrainer.settings import Scaling

    settings = ExperimentSettings(**plain)
    root = storage.join(str(settings.storage_path), spec["name"])
    pointer = _read_pointer(tune.get_checkpoint())
    run_id = plain["run_id"]
    if pointer is not None and pointer["run_id"].startswith(run_id):
        run_id = pointer["run_id"]  # our own line, maybe begun at an earlier exploit
    elif pointer is not None:  # PBT: continue from another trial's checkpoint
        donor = pointer["run_id"].removeprefix(spec["name"] + "-")
        run_id = f"{plain['run_id']}-from-{donor}-{pointer['iteration']}"
        hyper_params = hyper_params.model_copy(
            update={
                "base_run": BaseRunParameters(
                    run_id=pointer["run_id"], storage_path=root, version=pointer["checkpoint"]
                )
            }
        )
    settings = dataclasses.replace(settings, run_id=run_id, storage_path=root)
    storage_fs, storage_path = storage.resolve(root)
    scaling = Scaling(**spec["scaling"])
    # This trial's own actor holds NESTED_TRIAL_CPU; it comes out of its workers' share, so a
    # trial needs exactly num_workers * cpus_per_worker (2 workers fit a 2-CPU machine).
    share = scaling.cpus_per_worker - NESTED_TRIAL_CPU / scaling.num_workers
    reports: Queue = Queue(actor_options={"num_cpus": 0})
    trainer = torch_trainer(
        hyper_params,
        settings,
        dataclasses.replace(scaling, cpus_per_worker=share),
        storage_fs,
        storage_path,
        callbacks=[_ForwardReports(reports)],
    )
    outcome: list[Any] = []

    def fit() -> None:
        try:
            outcome.append(trainer.fit())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's thread
            outcome.append(exc)

    thread = threading.Thread(target=fit, name="raytrainer-nested-fit", daemon=True)
    thread.start()
    reported = -1
    while thread.is_alive() or not reports.empty():
        try:
            metrics, checkpoint_path = reports.get(timeout=1)
        except Empty:
            continue
        _report_with_pointer(metrics, checkpoint_path, run_id, root)
        reported = int(metrics.get("iteration", reported))
    if isinstance(outcome[0], BaseException):
        raise RunFailedError(f"trial run {run_id} failed: {outcome[0]}") from outcome[0]
    # What the callback passed on may lag: the controller can finish before its callback runs,
    # and a run resumed at its end (finished before Tune restarted the trial) reports nothing.
    # Tune must see the state the trial ends with: the run's newest checkpoint in storage, else
    # (restored from a donor's final checkpoint) the one it started from.
    run_uri = storage.join(root, run_id)
    names = [n for n in storage.list_dirs(run_uri) if parse_iteration(n) is not None]
    newest = max(names, key=parse_iteration) if names else None
    if newest is not None and parse_iteration(newest) > reported:
        meta = storage.read_json(storage.join(run_uri, newest, METADATA_FILE)) or {}
        _report_with_pointer(dict(meta.get("metrics", {})), newest, run_id, root)
    elif newest is None and pointer and "metrics" in pointer:
        _report_with_pointer(pointer["metrics"], pointer["checkpoint"], pointer["run_id"], root)


class _ForwardReports(UserCallback):
    """Runs on the nested run's Train controller: hands rank 0's reports to the trial."""

    def __init__(self, reports: Queue) -> None:
        self.reports = reports

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        """Queue rank 0's metrics and the persisted checkpoint's path (blocks while full)."""
        self.reports.put((dict(metrics[0]), checkpoint.path if checkpoint else None))


def _report_with_pointer(
    metrics: dict[str, Any], checkpoint_path: str | None, run_id: str, root: str
) -> None:
    if checkpoint_path is None:
        tune.report(metrics)
        return
    pointer = {
        "run_id": run_id,
        "storage_path": root,
        "checkpoint": checkpoint_path.rstrip("/").rsplit("/", 1)[-1],
        "iteration": metrics.get("iteration"),
        "metrics": metrics,
    }
    with tempfile.TemporaryDirectory(prefix="raytrainer-pointer-") as folder:
        (Path(folder) / TUNE_POINTER_FILE).write_text(json.dumps(pointer))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _checkpoint_uri(checkpoint: Any) -> str | None:
    """Where a trial's checkpoint is: Tune's own, or the Train checkpoint a pointer names."""
    pointer = _read_pointer(checkpoint)
    if pointer is not None:
        return storage.join(pointer["storage_path"], pointer["run_id"], pointer["checkpoint"])
    return checkpoint.path if checkpoint is not None else None


def _read_pointer(checkpoint: Any) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / TUNE_POINTER_FILE
        return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------- results


def _summarise(spec: Sweep, results: Any, path: str) -> SweepResult:
    config = spec.config
    sign = 1 if config.mode == "min" else -1
    rows = []
    histories: dict[str, tuple[list[float], list[float], bool]] = {}
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        values = {p: result.config.get(p) for p in spec.varied_paths}
        frame = result.metrics_dataframe
        history: list[float] = []
        iterations: list[float] = []
        if frame is not None and config.metric in frame and "iteration" in frame:
            frame = frame.dropna(subset=[config.metric, "iteration"])
            history = [float(v) for v in frame[config.metric]]
            iterations = [float(v) for v in frame["iteration"]]
        target = spec.target_iterations(values)
        last_iteration = int(metrics.get("iteration", 0) or 0)
        stopped = result.error is None and last_iteration < target
        checkpoint = _checkpoint_uri(result.checkpoint)
        rows.append(
            {
                "trial_id": trial_id,
                "run_id": f"{spec.name}-{trial_id}",
                **{f"config.{p}": v for p, v in values.items()},
                "status": "ERROR" if result.error else ("STOPPED" if stopped else "DONE"),
                "iteration": last_iteration,
                f"{config.metric}_last": metrics.get(config.metric),
                f"{config.metric}_best": (
                    min(history, key=lambda v: sign * v) if history else None
                ),
                "stopped_early": stopped,
                "checkpoint": checkpoint,
                "error": _last_line(result.error) if result.error else None,
            }
        )
        histories[trial_id] = (iterations, history, stopped)
    finished = [
        r for r in rows if r[f"{config.metric}_last"] is not None and r["status"] != "ERROR"
    ]
    if not finished:
        raise RunFailedError(
            f"every trial of sweep {spec.name} failed; see {path}. First error: "
            f"{rows[0]['error'] if rows else 'no trials ran'}"
        )
    best = min(finished, key=lambda r: sign * float(r[f"{config.metric}_last"]))
    summary = SweepResult(spec.name, path, config.metric, config.mode, best, rows)
    _write_summary(summary, histories)
    return summary


def _last_line(error: BaseException) -> str:
    """The line of a (remote) traceback that says what went wrong, without colour codes."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()]
    return next((ln for ln in reversed(lines) if ln), type(error).__name__)


def _write_summary(summary: SweepResult, histories: dict[str, Any]) -> None:
    """Write ``sweep_summary.json``/``.csv`` and the metric plot into the sweep folder."""
    storage.write_json(
        storage.join(summary.path, SWEEP_SUMMARY_FILE),
        dataclasses.asdict(summary),
    )
    columns = list(dict.fromkeys(k for row in summary.trials for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(summary.trials)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / SWEEP_TABLE_FILE).write_text(text.getvalue())
        _plot(summary, histories, Path(tmp) / SWEEP_PLOT_FILE)
        for name in (SWEEP_TABLE_FILE, SWEEP_PLOT_FILE):
            storage.upload_file(Path(tmp) / name, storage.join(summary.path, name))


def _plot(summary: SweepResult, histories: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for trial_id, (iterations, history, stopped) in sorted(histories.items()):
        if not history:
            continue
        best = trial_id == summary.best["trial_id"]
        (line,) = ax.plot(iterations, history, lw=2.5 if best else 1.2, label=trial_id)
        if stopped:
            ax.plot(iterations[-1], history[-1], "x", color=line.get_color(), ms=9, mew=2)
    values = [v for _, h, _ in histories.values() for v in h if v > 0 and math.isfinite(v)]
    if values and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(summary.metric)
    ax.set_title(f"sweep {summary.name}: x = stopped early, thick = best")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def format_summary(summary: SweepResult) -> str:
    """The lines ``raytrainer sweep`` prints at the end."""
    best = summary.best
    values = ", ".join(f"{k[7:]}={v}" for k, v in best.items() if k.startswith("config."))
    counts = {
        s: sum(r["status"] == s for r in summary.trials) for s in ("DONE", "STOPPED", "ERROR")
    }
    return "\n".join(
        [
            f"sweep {summary.name}: {len(summary.trials)} trials "
            f"({counts['DONE']} done, {counts['STOPPED']} stopped early, {counts['ERROR']} failed)",
            f"best trial {best['trial_id']} ({values}): {summary.metric}="
            f"{best[summary.metric + '_last']} at iteration {best['iteration']}",
            f"best checkpoint: {best['checkpoint']}",
            f"summary: {storage.join(summary.path, SWEEP_SUMMARY_FILE)} (.csv, {SWEEP_PLOT_FILE})",
        ]
    )
