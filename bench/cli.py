"""`hoe bench`: benchmark subcommands, one module each (parity, latency, pareto, ...).

Every module in SUBCOMMAND_MODULES has a torch-free `register(subparsers)` that adds one `hoe bench NAME`
subcommand; heavy imports happen inside its `func(args) -> int`. The command line (hoe.cli) registers them
into the subparsers `register` returns; modules not present are skipped.
"""

from __future__ import annotations

SUBCOMMAND_MODULES = ("hoe.bench.parity", "hoe.bench.latency", "hoe.bench.pareto", "hoe.bench.serving")


def register(subparsers):
    """Add `hoe bench`; -> its subparsers, where the modules of SUBCOMMAND_MODULES add theirs."""
    parser = subparsers.add_parser(
        "bench", help="benchmarks: parity across backends, latency against PyTorch and the peers, Pareto fronts",
        description="Measure and report: parity of every backend against the PyTorch reference, latency of our "
                    "runtime against PyTorch eager and the peers' ways of serving preferences, Pareto fronts.")
    return parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
