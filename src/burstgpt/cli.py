"""The `burstgpt` command. Thin: each subcommand lives in `burstgpt.commands.<name>` (glue that may import any part)."""

from __future__ import annotations

import argparse
import importlib
import sys

from burstgpt import __version__
from burstgpt.errors import BurstGPTError

#: Modules that define `register(subparsers)`; each adds its subcommands with `set_defaults(func=...)`,
#: where `func(args) -> int | None` is the exit status.
COMMAND_MODULES = (
    "burstgpt.commands.trace",  # trace download / trace info
    "burstgpt.commands.analyze",  # analyze
    "burstgpt.commands.workload",  # workload fit / generate / inspect
    "burstgpt.commands.bench",  # bench
    "burstgpt.commands.simulate",  # simulate
    "burstgpt.commands.serve_sim",  # serve-sim
    "burstgpt.commands.profile",  # profile (fit the step-time model to a server)
    "burstgpt.commands.calibrate",  # calibrate (fit it to bench runs)
    "burstgpt.commands.report",  # report
    "burstgpt.commands.demo",  # demo
    "burstgpt.commands.sweep",  # sweep (grids, rate finding)
    "burstgpt.commands.plan",  # plan (replicas per GPU preset, autoscaling)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="burstgpt",
        description="Face LLM serving systems with real-world bursty load (after the BurstGPT paper).",
    )
    parser.add_argument("--version", action="version", version=f"burstgpt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = args.func(args)
    except BurstGPTError as exc:
        print(f"burstgpt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("burstgpt: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
