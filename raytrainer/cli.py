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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raytrainer._version import __version__
from raytrainer.errors import ConfigError, RayTrainerError, RunFailedError
from raytrainer.settings import ExperimentSettings, Scaling


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
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """Add a flag for every command-line field of the dataclass ``cls`` to ``parser``.

    ``--field-name`` (plus the field's extra spellings), with the type, choices and help the
    field declares. Flags default to "not given": the dataclass's own default then applies.
    """
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", False):
            continue
        kind = _field_type(cls, f)
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        names = [f"--{f.name.replace('_', '-')}", *f.metadata.get("flags", ())]
        default = f.metadata.get("default_doc") or (
            f.default if f.default is not dataclasses.MISSING else None
        )
        help_text = f"{f.metadata.get('doc', '')} (default: {default})".replace("%", "%%")
        options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            options["action"] = "store_true"
        elif origin is typing.Literal:
            options["choices"] = list(args)
        elif origin is tuple:
            options.update(action="append", metavar="VALUE")
        elif origin is Mapping or kind is Mapping:
            options.update(action="append", type=_key_value, metavar="KEY=VALUE")
        elif type(None) in args:  # X | None
            (inner,) = [a for a in args if a is not type(None)]
            options.update(type=_parse_optional(inner), metavar=_METAVARS[inner])
        else:
            options.update(type=kind, metavar=_METAVARS[kind])
        group.add_argument(*names, **options)


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
    add_dataclass_flags(run, Scaling, "Ray workers (ignored with --local)")
    add_dataclass_flags(run, ExperimentSettings, "settings")

    sweep = sub.add_parser("sweep", help="run (or continue) a Ray Tune sweep from a sweep file")
    sweep.add_argument("sweep_file", type=Path, help="the sweep: base config, space, scheduler")
    _add_set_and_address(sweep)
    add_dataclass_flags(sweep, ExperimentSettings, "settings shared by every trial")

    ckpt = sub.add_parser("checkpoints", help="list and describe checkpoints")
    ckpt_sub = ckpt.add_subparsers(dest="action", required=True)
    ls = ckpt_sub.add_parser("ls", help="list a run's checkpoints")
    ls.add_argument("run", help="a run id (under --storage-path) or a run folder")
    ls.add_argument("--storage-path", help="storage root holding the run")
    show = ckpt_sub.add_parser("show", help="describe one checkpoint folder")
    show.add_argument("checkpoint", type=Path)
    return parser


def _run(args: argparse.Namespace) -> int:
    from raytrainer.build import load_hyper_params

    hyper_params = load_hyper_params(args.config, args.overrides)
    extra = {"progress_bar_factory": None} if args.no_progress else {}
    settings = dataclass_from_flags(ExperimentSettings, args, **extra)
    if args.local:
        from raytrainer.runners.local import run_local

        result = run_local(hyper_params, settings)
    else:
        scaling = dataclass_from_flags(Scaling, args)  # validated before Ray is imported
        from raytrainer.runners.ray_train import run

        result = run(hyper_params, settings, scaling, address=args.address)
    if result.unmirrored:
        print(f"not mirrored to W&B (safe in storage): {', '.join(result.unmirrored)}")
    state = "already complete" if result.already_complete else "complete"
    print(f"run {result.run_id} {state} at iteration {result.iteration}: {result.storage_uri}")
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
    from raytrainer.checkpoint import describe_checkpoint, list_checkpoints
    from raytrainer.storage import default_root

    if args.action == "show":
        print(json.dumps(describe_checkpoint(args.checkpoint), indent=1))
        return 0
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        root = Path(args.storage_path) if args.storage_path else default_root()
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
        command = {"run": _run, "sweep": _sweep, "checkpoints": _checkpoints}[args.command]
        return command(args)
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
