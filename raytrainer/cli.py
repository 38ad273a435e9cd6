"""The ``raytrainer`` command: ``run`` and ``checkpoints``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from raytrainer.checkpoint import describe_checkpoint, list_checkpoints
from raytrainer.errors import ConfigError, RayTrainerError, RunFailedError
from raytrainer.settings import ExperimentSettings, default_storage_root, tqdm_progress_bar


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytrainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a trainer from a config file")
    run.add_argument("config", type=Path, help="hyper-parameters, YAML or JSON")
    run.add_argument("--local", action="store_true", help="run in this process (debuggable)")
    run.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    run.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per Ray worker")
    run.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per Ray worker")
    run.add_argument(
        "--address", help="Ray cluster to use (default: RAY_ADDRESS, a running one, or a new one)"
    )
    run.add_argument("--max-failures", type=int, default=0, help="worker-group restarts allowed")
    run.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for every Ray worker; repeatable",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a hyper-parameter by dotted path; repeatable",
    )
    run.add_argument("--run-id", help="run id (default: a hash of the hyper-parameters)")
    run.add_argument(
        "--storage-path",
        help="where checkpoints are kept (default: $RAYTRAINER_STORAGE or ./raytrainer_runs)",
    )
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    run.add_argument("--checkpoint-period", type=int, default=100, help="iterations per checkpoint")
    run.add_argument("--num-to-keep", type=int, default=3, help="checkpoints kept (0: all)")
    run.add_argument("--score-metric", help="rank checkpoints by this metric")
    run.add_argument("--score-order", choices=["max", "min"], default="max")
    run.add_argument("--test-run", action="store_true", help="quick check; loads no checkpoint")
    run.add_argument("--no-load", action="store_true", help="start from scratch")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    run.add_argument(
        "--wandb-mode",
        choices=["online", "offline", "disabled"],
        default=os.environ.get("WANDB_MODE", "offline"),
        help="W&B mode (default: $WANDB_MODE, else offline)",
    )
    run.add_argument("--wandb-project", default=os.environ.get("WANDB_PROJECT"))
    run.add_argument("--wandb-entity", default=os.environ.get("WANDB_ENTITY"))
    run.add_argument("--wandb-group", default=os.environ.get("WANDB_RUN_GROUP"))
    run.add_argument(
        "--wandb-tag", dest="wandb_tags", action="append", default=[], help="repeatable"
    )
    run.add_argument(
        "--wandb-digest",
        choices=["XXH128", "MD5"],
        default="XXH128",
        help="file digests of mirrored artifacts (MD5 for an old self-hosted W&B server)",
    )

    ckpt = sub.add_parser("checkpoints", help="list and describe checkpoints")
    ckpt_sub = ckpt.add_subparsers(dest="action", required=True)
    ls = ckpt_sub.add_parser("ls", help="list a run's checkpoints")
    ls.add_argument("run", help="a run id (under --storage-path) or a run folder")
    ls.add_argument("--storage-path", help="storage root holding the run")
    show = ckpt_sub.add_parser("show", help="describe one checkpoint folder")
    show.add_argument("checkpoint", type=Path)
    return parser


def _run(args: argparse.Namespace) -> int:
    from raytrainer.runner import Scaling, load_hyper_params, run, run_local

    hyper_params = load_hyper_params(args.config, args.overrides)
    worker_env = dict(item.split("=", 1) for item in args.worker_env if "=" in item)
    if len(worker_env) != len(args.worker_env):
        raise ConfigError("--worker-env takes KEY=VALUE pairs.")
    settings = ExperimentSettings(
        device=args.device,
        run_id=args.run_id,
        storage_path=args.storage_path,
        checkpoint_period=args.checkpoint_period,
        num_to_keep=args.num_to_keep or None,
        checkpoint_score_metric=args.score_metric,
        checkpoint_score_order=args.score_order,
        progress_bar_factory=None if args.no_progress else tqdm_progress_bar,
        test_run=args.test_run,
        do_not_load_checkpoint=args.no_load,
        max_failures=args.max_failures,
        worker_env=worker_env,
        wandb_mode=args.wandb_mode,
        wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
        wandb_group=args.wandb_group,
        wandb_tags=tuple(args.wandb_tags),
        wandb_digest_algorithm=args.wandb_digest,
    )
    if args.local:
        result = run_local(hyper_params, settings)
    else:
        scaling = Scaling(args.num_workers, args.gpus_per_worker, args.cpus_per_worker)
        result = run(hyper_params, settings, scaling, address=args.address)
    if result.unmirrored:
        print(f"not mirrored to W&B (safe in storage): {', '.join(result.unmirrored)}")
    state = "already complete" if result.already_complete else "complete"
    print(f"run {result.run_id} {state} at iteration {result.iteration}: {result.storage_uri}")
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    if args.action == "show":
        print(json.dumps(describe_checkpoint(args.checkpoint), indent=1))
        return 0
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        root = Path(args.storage_path) if args.storage_path else default_storage_root()
        run_dir = root / args.run
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        print(f"no checkpoints under {run_dir}", file=sys.stderr)
        return 1
    print(f"{'checkpoint':<20} {'iteration':>9} {'created':<26} {'size':>10}  integrity  metrics")
    for path in checkpoints:
        info = describe_checkpoint(path)
        ok = "ok" if info["integrity"] == "ok" else "BAD"
        metrics = json.dumps(info["metrics"] or {}, sort_keys=True)
        print(
            f"{path.name:<20} {info['iteration']!s:>9} {info['created']!s:<26} "
            f"{info['size_bytes']:>10}  {ok:<9}  {metrics}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``raytrainer`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RAYTRAINER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Import paths in configs ("examples.regression:RegressionTrainer") resolve from here,
    # as they would under `python -m` or `ray job submit --working-dir .`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return _run(args) if args.command == "run" else _checkpoints(args)
    except RunFailedError as exc:
        print(f"raytrainer: error: {exc}", file=sys.stderr)
        return 1
    except RayTrainerError as exc:
        print(f"raytrainer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raytrainer: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
