"""Shared options of the commands that talk to Kafka directly (send, tail)."""

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emostream.schemas.settings import Settings


def add_kafka_arguments(parser: argparse.ArgumentParser, topic_kind: str) -> None:
    parser.add_argument("--topic", default=None, help=f"{topic_kind} topic (default: settings)")
    parser.add_argument(
        "--bootstrap-servers", default=None, help="host:port[,host:port] (default: settings)"
    )


def settings_from_args(args: argparse.Namespace) -> "Settings":
    """The environment's settings, with --bootstrap-servers applied if given."""
    from emostream.schemas.settings import Settings

    settings = Settings()
    if args.bootstrap_servers:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
        settings = settings.model_copy(update={"kafka": kafka})
    return settings


def broker_unreachable(command: str, settings: "Settings", error: Exception) -> str:
    """The one line a command prints when its Kafka client cannot bootstrap."""
    return f"emostream {command}: cannot reach the broker at {settings.kafka.bootstrap_servers} ({error})"
