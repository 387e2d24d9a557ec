"""`hoe` command line: thin argparse subcommands over library functions.

Each package has a torch-free `cli` module with `register(subparsers)`; every subcommand sets
`func(args) -> int`. Heavy imports happen inside the functions, so `hoe --help` and the runtime
commands work without the export extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hoe.core.errors import HoEError

from . import verbosity

# Modules that contribute subcommands (those not installed or not present are skipped).
CLI_MODULES = ("hoe.cli.cli_assemble", "hoe.cli.cli_train", "hoe.cli.cli_demo", "hoe.export.cli",
               "hoe.runtime.trt_cli", "hoe.runtime.cli", "hoe.serve.cli", "hoe.bench.cli")
VERBOSE_HELP = "every detail on stderr: our debug log, the libraries' INFO lines, warnings and progress bars"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoe", description="Deploy multi-objective-aligned LLMs built the HoE way (experts, routers, preferences)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_modules(subparsers, CLI_MODULES)
    _add_verbose(subparsers)
    return parser


def _add_verbose(subparsers) -> None:
    """`hoe COMMAND [SUBCOMMAND] -v` too; SUPPRESS keeps the value of a `hoe -v COMMAND`."""
    for command in subparsers.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        for action in command._actions:  # argparse has no public accessor for nested subcommands
            if isinstance(action, argparse._SubParsersAction):
                _add_verbose(action)


def register_modules(subparsers, module_names) -> None:
    """Let each module that exists add its subcommands (`module.register(subparsers)`); a module with
    SUBCOMMAND_MODULES (e.g. hoe.bench.cli) returns the subparsers those modules add theirs to."""
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        nested = module.register(subparsers)
        if getattr(module, "SUBCOMMAND_MODULES", None):
            register_modules(nested, module.SUBCOMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbosity.configure(args.verbose)
    try:
        return int(args.func(args) or 0)
    except HoEError as e:
        print(f"hoe {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: writes are atomic, nothing half-written is left behind
        print(f"hoe {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
