"""`emostream worker STAGE`: run one pipeline stage (a faust worker) until SIGTERM / Ctrl-C.

The stage runner is `emostream.workers.stages.runner` (the local stack starts the same code as
`python -m emostream.workers.stages STAGE`). Configuration comes only from `EMOSTREAM_*`
environment variables (`schemas.settings.Settings`).
"""

import argparse

from emostream.workers.runtime.stage_names import StageName

__all__ = ["register"]


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "worker",
        help="run one pipeline stage as a Kafka consumer-group worker",
        description="Run one pipeline stage. Settings come from EMOSTREAM_* environment variables.",
    )
    parser.add_argument(
        "stage", choices=[stage.value for stage in StageName], help="which stage this worker runs"
    )
    parser.add_argument(
        "--no-create-topics",
        action="store_true",
        help="do not create missing topics at start (they must exist with their partition counts)",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from emostream.workers.stages.runner import run_worker

    return run_worker(args.stage, create_topics=not args.no_create_topics)
