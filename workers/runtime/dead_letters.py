"""Dead letters: a record that failed validation or processing goes to the dead-letter topic with the
reason and its origin (topic, partition, offset); the worker then acknowledges it and goes on.

The value is a `schemas.DeadLetter` JSON; the key is the original key, so one stream's dead letters
stay together. A dead letter must fit the broker whatever the record was: only the first
`MAX_DEAD_LETTER_VALUE_BYTES` of the original value are copied (base64), with its full size
(`value_size_bytes`) and `value_truncated`; headers and reason are capped likewise.

`DeadLetterSink` is the one sink of every stage (VAD, inference, plugin runner). Sending never raises
out of a stage: `submit` returns the delivery as an awaitable that resolves to True (on the topic) or
False (not sent: logged and counted in `emostream_dead_letter_failures`); `send` awaits it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.headers import headers_to_text
from emostream.workers.runtime.metrics import WorkerMetrics
from faust.types import EventT, TopicT

__all__ = [
    "MAX_DEAD_LETTER_VALUE_BYTES",
    "DeadLetterSink",
    "dead_letter_for",
    "dead_letter_for_event",
]

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 2_000
MAX_HEADER_VALUE_CHARS = 256  # per header; a gateway's header is a few bytes
MAX_HEADERS = 32
# 64 KiB of the original value (~87 KiB base64): far below the 1 MiB default max message size of
# Kafka brokers and clients, and enough to see what the record was.
MAX_DEAD_LETTER_VALUE_BYTES = 64 * 1024


def _safe_headers(headers: Any) -> dict[str, str]:
    try:
        text = headers_to_text(headers or [])
    except ValueError:
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        text = {str(name): (raw or b"").decode("utf-8", errors="replace") for name, raw in items}
    return {
        name[:MAX_HEADER_VALUE_CHARS]: value[:MAX_HEADER_VALUE_CHARS]
        for name, value in list(text.items())[:MAX_HEADERS]
    }


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()


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
    """A dead letter of one record; the copied value is capped at MAX_DEAD_LETTER_VALUE_BYTES."""
    kept = None if value is None else value[:MAX_DEAD_LETTER_VALUE_BYTES]
    return DeadLetter(
        stage=stage,
        reason=reason[:MAX_REASON_CHARS],
        origin_topic=topic,
        origin_partition=partition,
        origin_offset=offset,
        key=None if key is None else key[:MAX_HEADER_VALUE_CHARS].decode("utf-8", errors="replace"),
        headers=_safe_headers(headers),
        value_b64=DeadLetter.encode_value(kept),
        value_size_bytes=None if value is None else len(value),
        value_truncated=value is not None and len(value) > MAX_DEAD_LETTER_VALUE_BYTES,
        failed_at_ms=int(time.time() * 1000),
    )


def dead_letter_for_event(event: EventT, *, stage: str, reason: str) -> DeadLetter:
    message = event.message
    return dead_letter_for(
        stage=stage,
        reason=reason,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=_as_bytes(message.key),
        headers=message.headers,
        value=_as_bytes(message.value),
    )


async def _resolved(result: bool) -> bool:
    return result


class DeadLetterSink:
    """Sends the dead letters of one stage to the dead-letter topic; never raises into the stage."""

    def __init__(self, topic: TopicT, *, stage: str, metrics: WorkerMetrics) -> None:
        self.topic = topic
        self.stage = stage
        self.metrics = metrics

    async def submit(self, letter: DeadLetter) -> Awaitable[bool]:
        """Queue `letter`; the awaitable resolves True once it is on the topic, False if it failed."""
        log.warning(
            "dead letter from %s[%d]@%d (%s): %s",
            letter.origin_topic,
            letter.origin_partition,
            letter.origin_offset,
            letter.stage,
            letter.reason,
        )
        key = None if letter.key is None else letter.key.encode("utf-8")
        try:
            delivery = await self.topic.send(key=key, value=letter.model_dump_json().encode())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a dead letter never takes a stage down
            self._failed(letter, error)
            return _resolved(False)
        return self._confirm(letter, delivery)

    async def _confirm(self, letter: DeadLetter, delivery: Awaitable[Any]) -> bool:
        try:
            await delivery
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - reported, counted; the caller decides
            self._failed(letter, error)
            return False
        self.metrics.dead_letters.inc()
        return True

    def _failed(self, letter: DeadLetter, error: BaseException) -> None:
        self.metrics.dead_letter_failures.inc()
        log.error(
            "dead letter of %s[%d]@%d not sent: %s: %s",
            letter.origin_topic,
            letter.origin_partition,
            letter.origin_offset,
            type(error).__name__,
            error,
        )

    async def send(self, letter: DeadLetter) -> bool:
        """Send and wait: True once on the topic, False if it could not be sent (logged, counted)."""
        return await (await self.submit(letter))

    async def submit_for(self, event: EventT, reason: str) -> Awaitable[bool]:
        """`submit` a dead letter of `event`, in this sink's stage."""
        return await self.submit(dead_letter_for_event(event, stage=self.stage, reason=reason))
