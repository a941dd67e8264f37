"""The delivery ledger: which (plugin, idempotency key) pairs were delivered, so a replay skips them.

The Redis key is `schemas.redis_keys.delivered_key` (`<prefix>:{<stream id>}:delivered`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import delivered_key

__all__ = ["LEDGER_FLUSH_INTERVAL_S", "DeliveryLedger", "RedisDeliveryLedger"]

log = logging.getLogger(__name__)

LEDGER_FLUSH_INTERVAL_S = 0.05  # delivery marks are written in one pipeline this often


class DeliveryLedger(Protocol):
    """Which (plugin, idempotency key) pairs were delivered: lets a replay skip them."""

    def delivered_to(self, event: EmotionEvent, plugin_names: Sequence[str]) -> asyncio.Future[set[str]]: ...

    def mark_delivered(self, plugin_name: str, event: EmotionEvent) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RedisDeliveryLedger:
    """`emo:v1:{<stream id>}:delivered`: a hash per stream, field `<plugin>/<segment>/<model>@<version>`.

    Look-ups are coalesced: the HMGETs (one per event, all plugins at once) of the events read
    while the previous batch was in flight go to Redis in one pipeline, so the consumer never waits
    for Redis (a lane waits for its event's answer before delivering). Marks are buffered and
    written every `flush_interval_s` in one pipeline (a crash loses at most that window: a few
    duplicates).
    Redis trouble never blocks delivery: a failed look-up counts as "not delivered" (at-least-once).
    """

    def __init__(self, redis: Any, *, key_prefix: str, ttl_s: int, flush_interval_s: float = LEDGER_FLUSH_INTERVAL_S) -> None:
        self._redis = redis
        self._key_prefix = key_prefix
        self._ttl_s = ttl_s
        self._flush_interval_s = flush_interval_s
        self._marks: dict[str, dict[str, int]] = {}  # key -> field -> delivered at (Unix ms)
        self._flusher: asyncio.Task[None] | None = None
        self._lookups: list[tuple[str, list[str], list[str], set[str], asyncio.Future[set[str]]]] = []
        self._lookup_task: asyncio.Task[None] | None = None

    def key(self, stream_id: str) -> str:
        return delivered_key(self._key_prefix, stream_id)

    @staticmethod
    def field(plugin_name: str, event: EmotionEvent) -> str:
        return f"{plugin_name}/{event.segment_index}/{event.model_name}@{event.model_version}"

    def delivered_to(self, event: EmotionEvent, plugin_names: Sequence[str]) -> asyncio.Future[set[str]]:
        """A future of the plugins (of `plugin_names`) that already received `event`."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[set[str]] = loop.create_future()
        if not plugin_names:
            answer.set_result(set())
            return answer
        key = self.key(event.stream_id)
        fields = [self.field(name, event) for name in plugin_names]
        buffered = self._marks.get(key, {})
        marked_here = {name for name, field in zip(plugin_names, fields) if field in buffered}
        self._lookups.append((key, list(plugin_names), fields, marked_here, answer))
        if self._lookup_task is None or self._lookup_task.done():
            self._lookup_task = loop.create_task(self._run_lookups(), name="delivery-ledger-lookup")
        return answer

    async def _run_lookups(self) -> None:
        while self._lookups:
            await asyncio.sleep(0)  # let the consumer add the events it already has
            batch, self._lookups = self._lookups, []
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, _names, fields, _marked, _answer in batch:
                        pipe.hmget(key, fields)
                    results = await pipe.execute()
            except Exception as error:  # noqa: BLE001 - Redis down: deliver anyway
                log.warning("delivery ledger look-up of %d event(s) failed (%s); delivering them", len(batch), error)
                results = [[None] * len(item[2]) for item in batch]
            for (_key, names, _fields, marked, answer), found in zip(batch, results):
                if not answer.done():
                    answer.set_result(marked | {name for name, value in zip(names, found) if value is not None})

    def mark_delivered(self, plugin_name: str, event: EmotionEvent) -> None:
        self._marks.setdefault(self.key(event.stream_id), {})[self.field(plugin_name, event)] = int(time.time() * 1000)

    async def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever(), name="delivery-ledger")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        marks, self._marks = self._marks, {}
        if not marks:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, fields in marks.items():
                    pipe.hset(key, mapping=fields)
                    pipe.expire(key, self._ttl_s)
                await pipe.execute()
        except Exception as error:  # noqa: BLE001 - a lost ledger entry only costs a duplicate
            log.warning("delivery ledger write of %d stream(s) failed: %s", len(marks), error)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            await self.flush()
