"""The `burstgpt` command. Thin: each part registers its own subcommands in its `commands` module."""

from __future__ import annotations

import argparse
import importlib
import sys

from burstgpt import __version__
from burstgpt.errors import BurstGPTError

#: Modules that define `register(subparsers)`; each adds its subcommands with `set_defaults(func=...)`,
#: where `func(args) -> int | None` is the exit status.
COMMAND_MODULES = (
    "burstgpt.trace.commands",  # trace download / trace info
    "burstgpt.analysis.commands",  # analyze
    "burstgpt.workload.commands",  # workload fit / generate / inspect
    "burstgpt.client.commands",  # bench
    "burstgpt.sim.commands",  # simulate
    "burstgpt.server.commands",  # serve-sim
    "burstgpt.report.commands",  # report
    "burstgpt.demo",  # demo
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
