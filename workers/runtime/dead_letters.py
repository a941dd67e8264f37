"""Dead letters: a record that failed validation or processing goes to the dead-letter topic with the
reason and its origin (topic, partition, offset); the worker then acknowledges it and goes on.

The value is a `schemas.DeadLetter` JSON (the original value base64-encoded for inspection and
replay); the key is the original key, so one stream's dead letters stay together.
"""

import logging
import time
from collections.abc import Awaitable
from typing import Any

from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.headers import headers_to_text
from emostream.workers.runtime.metrics import WorkerMetrics
from faust.types import EventT, TopicT

__all__ = ["DeadLetterSink", "dead_letter_for"]

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 2_000


def _safe_headers(headers: Any) -> dict[str, str]:
    try:
        return headers_to_text(headers or [])
    except ValueError:
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        return {str(name): (raw or b"").decode("utf-8", errors="replace") for name, raw in items}


def dead_letter_for(
    *,
    stage: str,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    headers: Any,
    value: bytes | None,
) -> DeadLetter:
    return DeadLetter(
        stage=stage,
        reason=reason[:MAX_REASON_CHARS],
        origin_topic=topic,
        origin_partition=partition,
        origin_offset=offset,
        key=None if key is None else key.decode("utf-8", errors="replace"),
        headers=_safe_headers(headers),
        value_b64=DeadLetter.encode_value(value),
        failed_at_ms=int(time.time() * 1000),
    )


class DeadLetterSink:
    """Sends dead letters of one stage; `send` returns the delivery future (await it before acking)."""

    def __init__(self, topic: TopicT, *, stage: str, metrics: WorkerMetrics) -> None:
        self.topic = topic
        self.stage = stage
        self.metrics = metrics

    async def send(self, event: EventT, reason: str) -> Awaitable[Any]:
        message = event.message
        letter = dead_letter_for(
            stage=self.stage,
            reason=reason,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key
            if isinstance(message.key, (bytes, type(None)))
            else str(message.key).encode(),
            headers=message.headers,
            value=message.value
            if isinstance(message.value, (bytes, type(None)))
            else str(message.value).encode(),
        )
        log.warning(
            "dead letter from %s[%d]@%d: %s",
            message.topic,
            message.partition,
            message.offset,
            letter.reason,
        )
        self.metrics.dead_letters.inc()
        return await self.topic.send(key=message.key, value=letter.model_dump_json().encode())
