"""Read EmotionEvent results from the emotions topic as they arrive (the `emostream tail` client).

How it finds "new" results without trusting end offsets: it joins no consumer group, assigns every
partition of the topic itself, reads each from offset 0 (the earliest still kept, if retention has
removed older ones) and skips records whose timestamp is older than `since_ms` (default: when tail
started, minus a small allowance for clock skew). It never asks the broker for the end offset or
"latest": Tansu answers ListOffsets with a wrong end offset, and a real Kafka would be fine either
way. The price is that a start reads (and discards) the topic's history once.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from emostream.schemas.event import EmotionEvent
from emostream.schemas.settings import Settings
from emostream.workers.runtime.kafka_config import kafka_python_options
from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

__all__ = [
    "BadResult",
    "TailFilter",
    "default_since_ms",
    "format_event",
    "iter_events",
    "make_tail_consumer",
]

CLOCK_SKEW_ALLOWANCE_MS = 2_000  # results stamped this much before tail started still count as new
POLL_TIMEOUT_MS = 200
TOPIC_WAIT_POLL_S = 0.2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadResult:
    """A record on the emotions topic that is not a valid EmotionEvent."""

    partition: int
    offset: int
    problem: str


@dataclass(frozen=True)
class TailFilter:
    stream_id: str | None = None  # only events of this stream (EmotionEvent.stream_id); None = all
    since_ms: int | None = (
        None  # only records with a timestamp (Unix ms) at or after this; None = all
    )


def make_tail_consumer(settings: Settings, *, topic: str, wait_s: float) -> KafkaConsumer:
    """A group-less consumer assigned all partitions of `topic`, positioned at offset 0.

    Waits up to `wait_s` for the topic to exist (the stack may still be creating it).
    """
    consumer = KafkaConsumer(
        **kafka_python_options(settings.kafka, client_id="emostream-tail"),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # used only if offset 0 was deleted by retention
    )
    deadline = time.monotonic() + wait_s
    partitions = consumer.partitions_for_topic(topic)
    while not partitions and time.monotonic() < deadline:
        time.sleep(TOPIC_WAIT_POLL_S)
        consumer.topics()  # refreshes metadata
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        consumer.close()
        raise LookupError(
            f"topic {topic!r} not found at {settings.kafka.bootstrap_servers} within {wait_s:.0f} s"
        )
    assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
    consumer.assign(assigned)
    for partition in assigned:
        consumer.seek(partition, 0)
    return consumer


def iter_events(
    consumer: KafkaConsumer,
    *,
    selection: TailFilter,
    timeout_s: float | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[EmotionEvent | BadResult]:
    """Yield matching events as they arrive; stop after `timeout_s` in all, or `idle_timeout_s`
    without a matching event (None = never)."""
    began = time.monotonic()
    last_match = began
    while True:
        now = time.monotonic()
        if timeout_s is not None and now - began >= timeout_s:
            return
        if idle_timeout_s is not None and now - last_match >= idle_timeout_s:
            return
        batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        for records in batches.values():
            for record in records:
                if selection.since_ms is not None and record.timestamp < selection.since_ms:
                    continue
                try:
                    event = EmotionEvent.model_validate_json(record.value)
                except (ValidationError, ValueError, TypeError) as error:
                    yield BadResult(record.partition, record.offset, str(error).splitlines()[0])
                    continue
                if selection.stream_id is not None and event.stream_id != selection.stream_id:
                    continue
                last_match = time.monotonic()
                yield event


def format_event(event: EmotionEvent) -> str:
    """One human-readable line: stream, segment, times, label, top scores, model, latency."""
    top = sorted(event.scores.items(), key=lambda item: item[1], reverse=True)[:3]
    scores = ", ".join(f"{label} {score:.2f}" for label, score in top)
    line = (
        f"{event.stream_id} #{event.segment_index} {event.start_ms / 1000:7.2f}-{event.end_ms / 1000:7.2f} s "
        f"{event.label:<10} ({scores})  {event.model_name}@{event.model_version}"
    )
    if event.latency.total_ms is not None:
        line += f"  {event.latency.total_ms:.0f} ms"
    if event.transcript:
        line += f"  \u201c{event.transcript}\u201d"
    return line


def default_since_ms() -> int:
    return int(time.time() * 1000) - CLOCK_SKEW_ALLOWANCE_MS
