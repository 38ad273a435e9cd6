"""The ``raytrainer`` command: ``run``, ``sweep`` and ``checkpoints``.

The flags of ``run`` that set :class:`~raytrainer.settings.ExperimentSettings` and
:class:`~raytrainer.settings.Scaling` are generated from those classes' fields — name, type,
help and default — so a new setting is declared once. A flag that is not given leaves the
field's own default (which may read an environment variable) in place. Nothing here imports
torch or Ray until a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from raytrainer._version import __version__
from raytrainer.errors import ConfigError, RayTrainerError, RunFailedError, RunStopped
from raytrainer.settings import ExperimentSettings, Scaling, sweep_settings


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    # Annotations are strings (postponed evaluation), evaluated in the module of the class
    # that declares the field; a CLI field's names all live there, so no torch or Ray import.
    if not isinstance(f.type, str):
        return f.type
    owner = next(c for c in cls.__mro__ if f.name in vars(c).get("__annotations__", {}))
    return eval(f.type, vars(sys.modules[owner.__module__]))  # noqa: S307


def _parse_optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE``, or ``KEY`` alone for this process's value (a secret off the command line)."""
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE or KEY")
    if not sep:
        if key not in os.environ:
            raise argparse.ArgumentTypeError(
                f"{key} is not set in this environment; export it, or pass {key}=VALUE"
            )
        value = os.environ[key]
    return key, value


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    only: Collection[str] | None = None,
) -> None:
    """Add a flag for every command-line field of the dataclass ``cls`` to ``parser``.

    ``--field-name`` (plus the field's extra spellings), with the type, choices and help the
    field declares. Flags default to "not given": the dataclass's own default then applies.
    ``only`` limits the flags to those fields.
    """
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", False) or (only is not None and f.name not in only):
            continue
        kind = _field_type(cls, f)
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        names = [f"--{f.name.replace('_', '-')}", *f.metadata.get("flags", ())]
        default = f.metadata.get("default_doc") or (
            f.default if f.default is not dataclasses.MISSING else None
        )
        help_text = f"{f.metadata.get('doc', '')} (default: {default})".replace("%", "%%")
        options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.metadata.get("parse") is not None:
            options.update(type=_flag_reader(f.metadata["parse"]), metavar="N|MIN-MAX")
        elif kind is bool:
            options["action"] = "store_true"
        elif origin is typing.Literal:
            options["choices"] = list(args)
        elif origin is tuple:
            options.update(action="append", metavar="VALUE")
        elif origin is Mapping or kind is Mapping:
            options.update(action="append", type=_key_value, metavar="KEY[=VALUE]")
        elif type(None) in args:  # X | None
            (inner,) = [a for a in args if a is not type(None)]
            if typing.get_origin(inner) is typing.Literal:
                options["choices"] = list(typing.get_args(inner))
            else:
                options.update(type=_parse_optional(inner), metavar=_METAVARS[inner])
        else:
            options.update(type=kind, metavar=_METAVARS[kind])
        group.add_argument(*names, **options)


def _flag_reader(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a setting's parser so argparse shows its message (it hides a ValueError's)."""

    def read(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return read


def dataclass_from_flags(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """Build ``cls`` from the flags that were given (and ``extra``); the rest keep defaults."""
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            origin = typing.get_origin(_field_type(cls, f))
            given[f.name] = (
                tuple(value) if origin is tuple else dict(value) if origin is Mapping else value
            )
    return cls(**given, **extra)


def _add_set_and_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a hyper-parameter (of a sweep: of its base config) by dotted path; "
        "repeatable",
    )
    parser.add_argument(
        "--address", help="Ray cluster to use (default: RAY_ADDRESS, a running one, or a new one)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytrainer", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"raytrainer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a trainer from a config file")
    run.add_argument("config", type=Path, help="hyper-parameters, YAML or JSON")
    _add_set_and_address(run)
    run.add_argument("--local", action="store_true", help="run in this process (debuggable)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument(
        "--test-run",
        nargs="?",
        type=int,
        const=DEFAULT_TEST_RUN_ITERATIONS,
        default=0,
        metavar="N",
        help="a dry run of N iterations (default %(const)s) under a throwaway run id in a "
        "temporary folder, W&B disabled, saving and resuming a checkpoint; the real run is "
        "never read or written",
    )
    add_dataclass_flags(run, Scaling, "Ray workers (not with --local)")
    add_dataclass_flags(run, ExperimentSettings, "settings")

    sweep = sub.add_parser("sweep", help="run (or continue) a Ray Tune sweep from a sweep file")
    sweep.add_argument("sweep_file", type=Path, help="the sweep: base config, space, scheduler")
    _add_set_and_address(sweep)
    add_dataclass_flags(
        sweep, ExperimentSettings, "settings shared by every trial", only=sweep_settings()
    )

    ckpt = sub.add_parser("checkpoints", help="list and describe checkpoints")
    ckpt_sub = ckpt.add_subparsers(dest="action", required=True)
    ls = ckpt_sub.add_parser(
        "ls", help="list a run's checkpoints, marking the latest, the best and BAD ones"
    )
    ls.add_argument("run", help="a run id (under the storage root), a run folder or a URI")
    show = ckpt_sub.add_parser(
        "show", help="describe one checkpoint and verify its digests (exit 1 if it fails)"
    )
    show.add_argument(
        "checkpoint",
        help="a checkpoint folder or URI, RUN_ID/checkpoint_<n>, or a run (its newest checkpoint)",
    )
    for action in (ls, show):
        action.add_argument(
            "--storage-path",
            help="storage root to look a run id up in (default: RAYTRAINER_STORAGE, else "
            "./raytrainer_runs)",
        )
    ls.add_argument(
        "--score-metric",
        metavar="NAME",
        help="the metric 'best' is decided by "
        "(default: the run's checkpoint_score_metric, from the checkpoint metadata)",
    )
    ls.add_argument(
        "--score-order",
        choices=("min", "max"),
        help="whether a lower or a higher score is better (default: the run's own order)",
    )
    ls.add_argument(
        "--no-verify",
        action="store_true",
        help="read only each metadata.json; skip digests (and downloads from URIs)",
    )
    ls.add_argument("--json", action="store_true", help="print the listing as JSON")

    config = sub.add_parser(
        "config", help="show a config's validated hyper-parameters and the run id they map to"
    )
    config_sub = config.add_subparsers(dest="action", required=True)
    config_show = config_sub.add_parser(
        "show", help="every hyper-parameter with its default and description, and the run id"
    )
    config_show.add_argument("config", type=Path, help="hyper-parameters, YAML or JSON")
    config_show.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a hyper-parameter by dotted path; repeatable",
    )
    config_show.add_argument("--run-id", help="the run id `run --run-id` would be given")
    config_show.add_argument(
        "--storage-path", help="the storage root `run --storage-path` would be given"
    )
    return parser


DEFAULT_TEST_RUN_ITERATIONS = 4


def _check_runner_flags(args: argparse.Namespace) -> None:
    """Refuse flags of the other runner: silently ignoring them hides a mistake."""
    runner = "local" if args.local else "ray"
    wrong = [
        f"--{f.name.replace('_', '-')}"
        for cls in (Scaling, ExperimentSettings)
        for f in dataclasses.fields(cls)
        if f.metadata.get("runner") not in (None, runner) and hasattr(args, f.name)
    ]
    if args.local and args.address is not None:
        wrong.append("--address")
    if wrong:
        fix = "drop them or --local" if args.local else "drop them, or add --local"
        where = "Ray runs" if args.local else "in-process runs (--local)"
        raise ConfigError(f"{', '.join(wrong)}: only for {where}; {fix}.")


def _run(args: argparse.Namespace) -> int:
    import contextlib

    from tqdm.contrib.logging import logging_redirect_tqdm

    from raytrainer.build import load_hyper_params, resolve_settings, run_uri

    _check_runner_flags(args)
    hyper_params = load_hyper_params(args.config, args.overrides)
    extra = {"progress_bar_factory": None} if args.no_progress else {}
    settings = dataclass_from_flags(ExperimentSettings, args, **extra)  # --test-run included
    runner = "in-process" if args.local else "Ray"
    if args.local:
        from raytrainer.build import resolve_device

        resolve_device(settings.device)  # before anything is printed or started
    else:
        scaling = dataclass_from_flags(Scaling, args)  # validated before Ray is imported
        scaling.check_batch_size(hyper_params.batch_size)
    if not settings.test_run:
        resolved = resolve_settings(hyper_params, settings)
        wandb = settings.wandb_mode
        if wandb != "disabled":
            wandb += f", files in {Path(os.environ.get('WANDB_DIR') or '.').absolute()}/wandb"
        print(f"run {resolved.run_id} ({runner}): storage {run_uri(resolved)}; W&B {wandb}")
    # Log lines go above the bar instead of through it.
    redirect = logging_redirect_tqdm() if not args.no_progress else contextlib.nullcontext()
    with redirect:
        if args.local:
            from raytrainer.runners.local import run_local

            result = run_local(hyper_params, settings)
        else:
            from raytrainer.runners.ray_train import run

            result = run(hyper_params, settings, scaling, address=args.address)
    if result.unmirrored:
        print(f"not mirrored to W&B (safe in storage): {', '.join(result.unmirrored)}")
    if settings.test_run:
        print(f"test run passed ({settings.test_run} iterations, checkpoint saved and resumed)")
    else:
        print(result.summary())
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from raytrainer.sweep_config import load_sweep

    # Flags on the command line win over the sweep file's settings, which win over defaults.
    given = dataclass_from_flags(ExperimentSettings, args)
    flags = {f.name for f in dataclasses.fields(ExperimentSettings) if hasattr(args, f.name)}
    spec = load_sweep(args.sweep_file, args.overrides, given, flags)
    from raytrainer.runners.tune import format_summary, sweep

    print(format_summary(sweep(spec, address=args.address)))
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    from raytrainer.inspection import format_listing, list_run, show_checkpoint

    if args.action == "show":
        info = show_checkpoint(args.checkpoint, args.storage_path)
        print(json.dumps(info, indent=1))
        if info["integrity"] != "ok":
            reason = str(info["integrity"]).removeprefix("BAD: ")
            print(f"raytrainer: checkpoint fails verification: {reason}", file=sys.stderr)
            return 1
        return 0
    listing = list_run(
        args.run, args.storage_path, args.score_metric, args.score_order, not args.no_verify
    )
    print(json.dumps(listing.to_dict(), indent=1) if args.json else format_listing(listing))
    return 0


def _config(args: argparse.Namespace) -> int:
    from raytrainer.build import load_hyper_params, resolve_settings, run_uri
    from raytrainer.params import describe_hyper_params

    hyper_params = load_hyper_params(args.config, args.overrides)
    # The same resolution `run` does, so the id and folder are the ones a run would use.
    wanted = ExperimentSettings(run_id=args.run_id, storage_path=args.storage_path)
    resolved = resolve_settings(hyper_params, wanted)
    params_cls = type(hyper_params)
    print(f"# {args.config}: {params_cls.__module__}.{params_cls.__qualname__}, defaults filled in")
    print(f"# run id: {resolved.run_id}")
    print(f"# run folder: {run_uri(resolved)}")
    print("\n".join(describe_hyper_params(hyper_params)))
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
        command = {
            "run": _run,
            "sweep": _sweep,
            "checkpoints": _checkpoints,
            "config": _config,
        }[args.command]
        return command(args)
    except RunStopped as exc:
        print(f"raytrainer: {exc}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports a process it ended
    except RunFailedError as exc:
        print(f"raytrainer: error: {exc}", file=sys.stderr)
        return 1
    except (RayTrainerError, ConfigError) as exc:
        print(f"raytrainer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raytrainer: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
