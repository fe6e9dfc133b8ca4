"""Argument parsing for the ``sparkbatch`` command; each sub-command lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkbatch",
        description="Deep-learning minibatches from Apache Spark: prepare, store, train.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="print the version, native build features and dependencies")
    inspect = commands.add_parser(
        "inspect", help="describe minibatch files (shapes, dtypes, checks)"
    )
    inspect.add_argument("paths", nargs="+", help="minibatch files (local paths or fsspec URLs)")
    inspect.add_argument("--no-verify", action="store_true", help="skip the CRC32C check")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "info":
        from sparkbatch.cli import info

        return info.run()
    if args.command == "inspect":
        from sparkbatch.cli import inspect

        return inspect.run(args.paths, verify=not args.no_verify)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
