"""Create emostream's topics explicitly, each with its partition count (kafka-python admin client).

Never rely on broker auto-creation: Tansu auto-creates with 4 partitions and a real cluster may
auto-create with 1 or refuse. `ensure_topics` creates what is missing, accepts topics that already
exist with enough partitions, and fails, naming the topic, when an existing one has fewer partitions
than asked (keys would map to other partitions than the workers expect after a resize).
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass

from emostream.schemas.settings import KafkaSettings, Settings
from emostream.workers.runtime.kafka_config import kafka_python_options
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

__all__ = ["TopicError", "TopicSpec", "ensure_topics", "stack_topics", "topic_partitions"]

METADATA_WAIT_S = 10.0  # how long to wait for created topics to show up in metadata
METADATA_POLL_INTERVAL_S = 0.05


class TopicError(RuntimeError):
    """A topic could not be created or has the wrong shape; the message names it."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1


def stack_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the pipeline uses: audio, segments, emotions, alerts, dead letters."""
    topics = settings.topics
    names = (topics.audio, topics.segments, topics.emotions, topics.alerts, topics.dead_letters)
    return [
        TopicSpec(name, topics.partitions, topics.replication_factor)
        for name in dict.fromkeys(names)
    ]


def topic_partitions(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition count of each named topic that exists (missing topics are left out)."""
    found: dict[str, int] = {}
    for description in admin.describe_topics(names):
        if description.get("error_code", 0) == 0 and description.get("partitions"):
            found[description.get("name") or description["topic"]] = len(description["partitions"])
    return found


def ensure_topics(
    kafka: KafkaSettings, specs: list[TopicSpec], *, timeout_s: float = METADATA_WAIT_S
) -> dict[str, int]:
    """Create missing topics, wait until metadata lists them all; return name -> partition count."""
    if not specs:
        return {}
    wanted: Mapping[str, TopicSpec] = {spec.name: spec for spec in specs}
    admin = KafkaAdminClient(**kafka_python_options(kafka, client_id="emostream-topics"))
    try:
        existing = topic_partitions(admin, list(wanted))
        missing = [spec for name, spec in wanted.items() if name not in existing]
        if missing:
            new_topics = [
                NewTopic(spec.name, spec.partitions, spec.replication_factor) for spec in missing
            ]
            try:
                admin.create_topics(new_topics, raise_errors=True)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process: checked below like any existing one
        deadline = time.monotonic() + timeout_s
        while True:
            existing = topic_partitions(admin, list(wanted))
            if len(existing) == len(wanted) or time.monotonic() > deadline:
                break
            time.sleep(METADATA_POLL_INTERVAL_S)
    finally:
        admin.close()
    problems = []
    for name, spec in wanted.items():
        if name not in existing:
            problems.append(f"topic {name!r}: not in metadata {timeout_s:.0f} s after creation")
        elif existing[name] < spec.partitions:
            problems.append(
                f"topic {name!r}: exists with {existing[name]} partitions, {spec.partitions} wanted; "
                f"delete it or set EMOSTREAM_TOPICS__PARTITIONS={existing[name]}"
            )
    if problems:
        raise TopicError(f"at {kafka.bootstrap_servers}: " + "; ".join(problems))
    return existing
