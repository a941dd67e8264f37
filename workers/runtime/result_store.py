"""The Redis side of the pipeline: results per segment, latest per stream, event log, live notice,
and the VAD stage's per-stream resume checkpoints.

The key layout is `emostream.schemas.redis_keys` (the one place it is written down).

Outages: a failed write never raises into the worker. Results go to a bounded in-memory backlog
(`outage_backlog_max`, oldest dropped first and counted) and `available` turns false; a background
task (`run_recovery`) probes Redis every `retry_interval_s` and writes the backlog when it answers.
While Redis is down, look-ups answer "not cached" at once (no timeout per batch).
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from emostream.plugins.connections import async_redis_client
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redaction import redact_url
from emostream.schemas.redis_keys import (
    checkpoint_key,
    events_key,
    latest_key,
    result_key,
    results_channel,
)
from emostream.schemas.settings import RedisSettings
from redis.exceptions import RedisError

__all__ = ["ResultStore", "StoreUnavailable", "connect"]

log = logging.getLogger(__name__)

# KEYS: seg, latest, events. ARGV: event json, segment index, ttl s, events cap, channel.
WRITE_RESULT_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
local index = tonumber(ARGV[2])
local current = redis.call('GET', KEYS[2])
if (not current) or (cjson.decode(current)['segment_index'] <= index) then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
end
redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], tostring(index + 1) .. '-0', 'event', ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 1
"""


# KEYS: checkpoint. ARGV: checkpoint json, next seq, boundary sample, ttl s, epoch.
# Checkpoints only move forward, ordered by (epoch, next seq, boundary sample): a late write of an
# older one (e.g. from a worker that just lost the partition) must not send a later resume behind
# offsets that are already committed.
SAVE_CHECKPOINT_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  local stored = cjson.decode(current)
  local seq, sample, epoch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
  local stored_epoch = stored['position']['epoch'] or 0
  local stored_seq = stored['position']['next_seq']
  if stored_epoch > epoch then
    return 0
  end
  if stored_epoch == epoch and (stored_seq > seq or (stored_seq == seq and stored['boundary']['sample'] > sample)) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
return 1
"""


class StoreUnavailable(RuntimeError):
    """Redis did not answer; the message says what was attempted."""


def connect(settings: RedisSettings) -> aioredis.Redis:
    """The stages' asyncio Redis client: the settings' short socket timeout (an outage is noticed fast)."""
    client: aioredis.Redis = async_redis_client(settings, socket_timeout_s=settings.socket_timeout_s)
    return client


class ResultStore:
    """Async Redis access for both stages; see the module docstring for the layout and outages."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self._redis = connect(settings)
        self._write_result = self._redis.register_script(WRITE_RESULT_LUA)
        self._save_checkpoint = self._redis.register_script(SAVE_CHECKPOINT_LUA)
        self._backlog: deque[EmotionEvent] = deque()
        self.available = True
        self.backlog_dropped = 0
        self._down_since: float | None = None

    @property
    def backlog_size(self) -> int:
        return len(self._backlog)

    async def close(self) -> None:
        await self._redis.aclose()

    def _mark_down(self, what: str, error: BaseException) -> None:
        if self.available:
            log.warning(
                "redis %s: %s failed (%s); results go to the topic, cache writes wait",
                redact_url(self.settings.url),
                what,
                error,
            )
        self.available = False
        self._down_since = self._down_since or time.monotonic()

    # results -------------------------------------------------------------------------------

    async def cached_results(self, keys: Sequence[tuple[str, int]]) -> list[EmotionEvent | None]:
        """The stored event of each (stream id, segment index); None where absent or Redis is down."""
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream_id, index in keys:
                    pipe.get(result_key(self.prefix, stream_id, index))
                raw = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            self._mark_down("result look-up", error)
            return [None] * len(keys)
        found: list[EmotionEvent | None] = []
        for text in raw:
            try:
                found.append(EmotionEvent.model_validate_json(text) if text else None)
            except ValueError:
                found.append(None)  # unreadable cache entry: infer again and overwrite it
        return found

    async def write_results(self, events: Iterable[EmotionEvent]) -> bool:
        """Write results; on failure keep them in the backlog. True when they are in Redis now."""
        batch = list(events)
        if not self.available:
            self._to_backlog(batch)
            return False
        try:
            await self._write(batch)
            return True
        except (TimeoutError, RedisError, OSError) as error:
            self._mark_down("result write", error)
            self._to_backlog(batch)
            return False

    async def _write(self, batch: Sequence[EmotionEvent]) -> None:
        if not batch:
            return
        settings = self.settings
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in batch:
                stream_id, index = event.stream_id, event.segment_index
                await self._write_result(
                    keys=[
                        result_key(self.prefix, stream_id, index),
                        latest_key(self.prefix, stream_id),
                        events_key(self.prefix, stream_id),
                    ],
                    args=[
                        event.model_dump_json(),
                        index,
                        settings.result_ttl_s,
                        settings.events_max_len,
                        results_channel(self.prefix),
                    ],
                    client=pipe,
                )
            await pipe.execute()

    def _to_backlog(self, batch: Sequence[EmotionEvent]) -> None:
        limit = self.settings.outage_backlog_max
        for event in batch:
            if len(self._backlog) >= limit:
                if not self._backlog:
                    self.backlog_dropped += 1
                    continue
                self._backlog.popleft()
                self.backlog_dropped += 1
            self._backlog.append(event)

    async def run_recovery(self) -> None:
        """Forever: while Redis is down, probe it; when it answers, write the backlog and resume."""
        while True:
            await asyncio.sleep(self.settings.retry_interval_s)
            if self.available and not self._backlog:
                continue
            try:
                await self._redis.ping()
                while self._backlog:
                    batch = [self._backlog[i] for i in range(min(500, len(self._backlog)))]
                    await self._write(batch)
                    for _ in batch:
                        self._backlog.popleft()
            except (TimeoutError, RedisError, OSError) as error:
                self._mark_down("probe", error)
                continue
            if not self.available:
                down_s = time.monotonic() - (self._down_since or time.monotonic())
                log.warning(
                    "redis %s is back after %.1f s; cache writes resumed", redact_url(self.settings.url), down_s
                )
            self.available = True
            self._down_since = None

    # VAD checkpoints ------------------------------------------------------------------------

    async def load_checkpoint(self, stream_id: str) -> str | None:
        """The stream's checkpoint JSON, None if it has none; StoreUnavailable when Redis is down."""
        try:
            raw = await self._redis.get(checkpoint_key(self.prefix, stream_id))
        except (TimeoutError, RedisError, OSError) as error:
            self._mark_down("checkpoint read", error)
            raise StoreUnavailable(
                f"stream {stream_id}: checkpoint read from {redact_url(self.settings.url)} failed: {error}"
            ) from None
        return raw.decode() if isinstance(raw, bytes) else raw

    async def save_checkpoints(self, checkpoints: dict[str, tuple[str, int, int, int]]) -> None:
        """Store stream id -> (checkpoint JSON, next seq, boundary sample, epoch), never moving one back.

        Raises StoreUnavailable when Redis is down.
        """
        if not checkpoints:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream_id, (text, next_seq, boundary_sample, epoch) in checkpoints.items():
                    await self._save_checkpoint(
                        keys=[checkpoint_key(self.prefix, stream_id)],
                        args=[text, next_seq, boundary_sample, self.settings.checkpoint_ttl_s, epoch],
                        client=pipe,
                    )
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            self._mark_down("checkpoint write", error)
            raise StoreUnavailable(
                f"checkpoint write of {len(checkpoints)} streams to {redact_url(self.settings.url)} failed: {error}"
            ) from None
