"""`tunerd` command line: one sub-command per module under tunerd.commands."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..daemon.journal import configure_logging, error_line
from ..errors import TunerdError

# Each module exposes register(subparsers) which adds its sub-command(s) and sets `func`.
COMMAND_MODULES = [
    "tunerd.commands.model",
    "tunerd.commands.bench",
    "tunerd.commands.platform",
    "tunerd.commands.hints",
    "tunerd.commands.calibrate",
    "tunerd.commands.simulate",
    "tunerd.commands.serve",
    "tunerd.commands.keygen",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunerd",
        description="Pipelined CNN inference for heterogeneous CPUs, tuned online.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    configure_logging(level, sys.stderr, replace=False)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TunerdError as err:
        print(error_line(f"tunerd {args.command}: {err}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tunerd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
