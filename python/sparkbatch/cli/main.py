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
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on a local Spark: CSV -> minibatch files -> distributed "
        "training -> evaluation and an HTML report",
    )
    demo.add_argument("--rows", type=int, default=50_000, help="rows of the generated CSV")
    demo.add_argument("--csv", help="your own CSV (path, URL or glob) instead of a generated one")
    demo.add_argument("--label-index", type=int, help="column of the class index (-1: last)")
    demo.add_argument("--num-classes", type=int, help="number of classes")
    demo.add_argument("--skip-lines", type=int, default=None, help="header lines per file")
    demo.add_argument("--out", default="sparkbatch-demo", help="output directory (local)")
    demo.add_argument("--workers", type=int, help="local Spark workers (default: all cores)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument(
        "--averaging-frequency",
        type=int,
        default=5,
        help="minibatches per worker between averagings (DL4J's default 5)",
    )
    demo.add_argument(
        "--exchange",
        choices=("socket", "spark"),
        default="socket",
        help="how workers average: 'socket' (one barrier job, averaging through the driver "
        "over TCP; default) or 'spark' (a Spark job per round, DL4J's way)",
    )
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
    if args.command == "demo":
        from sparkbatch.cli import demo
        from sparkbatch.errors import SparkbatchError

        try:
            return demo.run(
                rows=args.rows,
                csv=args.csv,
                label_index=args.label_index,
                num_classes=args.num_classes,
                skip_lines=args.skip_lines,
                out=args.out,
                workers=args.workers,
                epochs=args.epochs,
                batch_size=args.batch_size,
                averaging_frequency=args.averaging_frequency,
                exchange=args.exchange,
            )
        except (SparkbatchError, ValueError, OSError) as e:
            # bad input or storage: the message says what and where; a traceback adds nothing
            print(f"sparkbatch demo: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
