"""`hoe` command line: thin argparse subcommands over library functions.

Each package has a torch-free `cli` module with `register(subparsers)`; every subcommand sets
`func(args) -> int`. Heavy imports happen inside the functions, so `hoe --help` and the runtime
commands work without the export extra.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import HoEError

# Modules that contribute subcommands (those not installed or not present are skipped).
CLI_MODULES = ("hoe.core.cli_commands", "hoe.core.cli_train", "hoe.core.cli_demo", "hoe.export.cli",
               "hoe.export.trt_cli", "hoe.runtime.cli", "hoe.serve.cli", "hoe.bench.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoe", description="Deploy multi-objective-aligned LLMs built the HoE way (experts, routers, preferences)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    register_modules(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), CLI_MODULES)
    return parser


def register_modules(subparsers, module_names) -> None:
    """Let each module that exists add its subcommands (`module.register(subparsers)`)."""
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(subparsers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except HoEError as e:
        print(f"hoe {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
