"""The `emostream` console command: one sub-command per module listed in COMMAND_MODULES.

Each module defines `register(subcommands: argparse._SubParsersAction) -> None`, adding its parser
and setting `handler=callable(args) -> int`. Modules import heavy dependencies (torch, faust)
inside their handlers so `emostream --help` stays fast.
"""

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "emostream.workers.cli.commands.analyze",
    "emostream.workers.cli.commands.models",
    "emostream.workers.cli.commands.evaluate",
    "emostream.workers.cli.commands.train",
    "emostream.workers.cli.commands.asr",
    "emostream.workers.cli.commands.worker",
    "emostream.workers.cli.commands.report",
    "emostream.workers.cli.commands.up",
    "emostream.workers.cli.commands.send",
    "emostream.workers.cli.commands.tail",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emostream", description="Streaming speech-emotion recognition for voice bots and call centres."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
