"""`hoe bench`: benchmark subcommands, one module each (parity, latency, pareto, ...).

Every module in BENCH_MODULES has a torch-free `register(subparsers)` that adds one `hoe bench NAME`
subcommand; heavy imports happen inside its `func(args) -> int`. Modules not present are skipped.
"""

from __future__ import annotations

from hoe.core.cli import register_modules

BENCH_MODULES = ("hoe.bench.parity", "hoe.bench.latency", "hoe.bench.pareto", "hoe.bench.serving")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks: parity across backends, latency against PyTorch and the peers, Pareto fronts",
        description="Measure and report: parity of every backend against the PyTorch reference, latency of our "
                    "runtime against PyTorch eager and the peers' ways of serving preferences, Pareto fronts.")
    register_modules(parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True), BENCH_MODULES)
