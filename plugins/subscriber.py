"""In-process subscription: a chatbot that embeds emostream follows one stream's results from Redis
and gets `on_emotion` calls, without running the plugin runner.

    async with subscribe("call-42:user", CallbackPlugin.wrap(on_emotion)) as subscription:
        ...  # your bot runs; on_emotion is called per result, in segment order
    # or: subscription = await subscribe(...).start(); ...; await subscription.close()

Sources (the layout is `emostream.schemas.redis_keys`, written by the inference stage):
- `mode="stream"` (default): the stream's event log `emo:v1:{<stream id>}:events` (XREAD, blocking).
  Ordered, survives reconnects without a gap (it resumes after the last entry id it handled), and
  `from_start=True` replays what the log still holds (capped, `redis.events_max_len`).
- `mode="pubsub"`: the live results channel `emo:v1:results`, filtered to this stream. Lowest
  latency, but results published while disconnected are lost.

Each event goes through the plugin's decision helpers and `deliver_with_retries` (timeout, retries
with backoff), like in the runner; a failure is reported to `on_failure` (default: logged) and the
subscription goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal, Self

from emostream.plugins.api import EmotionHandler, Plugin, PluginContext
from emostream.plugins.callback import CallbackPlugin
from emostream.plugins.connections import async_redis_client
from emostream.plugins.delivery import DeliveryOutcome, DeliveryPolicy, deliver_with_retries
from emostream.schemas.event import EmotionEvent
from emostream.schemas.settings import Settings

__all__ = ["Subscription", "subscribe"]

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1_000  # one XREAD waits at most this long (so close() is prompt)
RECONNECT_BACKOFF_MAX_S = 5.0

SubscriptionMode = Literal["stream", "pubsub"]


def _events_key(prefix: str, stream_id: str) -> str:
    from emostream.schemas.redis_keys import events_key

    return events_key(prefix, stream_id)


def _results_channel(prefix: str) -> str:
    from emostream.schemas.redis_keys import results_channel

    return results_channel(prefix)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class Subscription:
    """One stream's results delivered to one plugin. Use `subscribe(...)` to make one."""

    def __init__(
        self,
        stream_id: str,
        plugin: Plugin[Any],
        *,
        settings: Settings,
        redis: Any | None,
        mode: SubscriptionMode,
        from_start: bool,
        policy: DeliveryPolicy,
        on_failure: Callable[[DeliveryOutcome], Any] | None,
    ) -> None:
        self.stream_id = stream_id
        self.plugin = plugin
        self.settings = settings
        self.mode = mode
        self.from_start = from_start
        self.policy = policy
        self.on_failure = on_failure
        self.delivered = 0
        self.failures: list[DeliveryOutcome] = []
        self.last_entry_id: str | None = None  # stream mode: the last log entry handled
        self._redis = redis
        self._owns_redis = redis is None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = False

    async def start(self) -> Self:
        """Start the plugin and the reader; returns once the reader is listening."""
        if self._redis is None:
            self._redis = async_redis_client(self.settings.redis, plugin=self.plugin.name)
        await self.plugin.start(PluginContext(settings=self.settings, redis=self._redis))
        reader = self._read_stream if self.mode == "stream" else self._read_pubsub
        self._task = asyncio.get_running_loop().create_task(reader(), name=f"subscribe:{self.stream_id}")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()  # raise the reader's error
        return self

    async def close(self) -> None:
        """Stop reading, then stop the plugin."""
        if self._task is not None:
            # The flag ends the read loop within one READ_BLOCK_MS; cancel() alone is not enough
            # (redis-py's asyncio pub/sub can swallow a CancelledError raised inside a read).
            self._closing = True
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2 * READ_BLOCK_MS / 1000 + 1)
            self._task = None
        await self.plugin.stop()
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def wait_closed(self) -> None:
        """Wait until the subscription ends (close() from elsewhere, or the task is cancelled)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _handle(self, raw: bytes | str) -> None:
        try:
            event = EmotionEvent.model_validate_json(raw)
        except ValueError as error:
            log.warning("stream %s: skipping a result that is not an EmotionEvent: %s", self.stream_id, error)
            return
        if event.stream_id != self.stream_id:
            return
        outcome = await deliver_with_retries(self.plugin, event, self.policy)
        if outcome.ok:
            self.delivered += 1
            return
        self.failures.append(outcome)
        if self.on_failure is None:
            log.error("%s", outcome.error)
        else:
            result = self.on_failure(outcome)
            if asyncio.iscoroutine(result):
                await result

    async def _read_stream(self) -> None:
        redis = self._redis
        assert redis is not None, "start() opens the client"
        key = _events_key(self.settings.redis.key_prefix, self.stream_id)
        if self.from_start:
            last_id = "0-0"
        else:
            newest = await redis.xrevrange(key, count=1)
            last_id = _text(newest[0][0]) if newest else "0-0"
        self.last_entry_id = last_id
        self._ready.set()
        backoff_s = 0.1
        while not self._closing:
            try:
                batches = await redis.xread({key: last_id}, count=100, block=READ_BLOCK_MS)
                backoff_s = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - Redis down / failover: retry from the same entry, no gap
                log.warning("stream %s: reading %s failed (%s); retrying in %.1f s", self.stream_id, key, error, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            for _key, entries in batches or []:
                for entry_id, fields in entries:
                    raw = fields.get(b"event", fields.get("event"))
                    if raw is not None:
                        await self._handle(raw)
                    last_id = self.last_entry_id = _text(entry_id)

    async def _read_pubsub(self) -> None:
        channel = _results_channel(self.settings.redis.key_prefix)
        assert self._redis is not None, "start() opens the client"
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        self._ready.set()
        try:
            while not self._closing:
                message = await pubsub.get_message(timeout=READ_BLOCK_MS / 1000)
                if message is not None and message.get("type") == "message":
                    await self._handle(message["data"])
        finally:
            await pubsub.aclose()


def subscribe(
    stream_id: str,
    target: Plugin[Any] | EmotionHandler,
    *,
    settings: Settings | None = None,
    redis: Any | None = None,
    mode: SubscriptionMode = "stream",
    from_start: bool = False,
    policy: DeliveryPolicy | None = None,
    on_failure: Callable[[DeliveryOutcome], Any] | None = None,
) -> Subscription:
    """Follow one stream's results; `target` is a Plugin or a plain (sync or async) function.

    `settings` default: `Settings()` (the environment); `redis`: a `redis.asyncio.Redis` to share
    (default: one opened from the settings and closed with the subscription).
    """
    chosen_settings = settings or Settings()
    plugin = target if isinstance(target, Plugin) else CallbackPlugin.wrap(target, name=f"subscriber:{stream_id}")
    return Subscription(
        stream_id,
        plugin,
        settings=chosen_settings,
        redis=redis,
        mode=mode,
        from_start=from_start,
        policy=policy or DeliveryPolicy.from_settings(chosen_settings.plugins),
        on_failure=on_failure,
    )
