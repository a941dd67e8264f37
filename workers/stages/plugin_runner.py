"""The plugin-runner stage: consumes the emotions topic and hands each event to every configured
plugin's `on_emotion`.

Guarantees
- Isolation: each plugin has its own lane (queues + tasks). A slow or failing plugin only fills its
  own lane; the others keep delivering. The consumer waits only when one lane holds
  `plugins.max_pending_events` events (bounded memory); per-attempt timeouts keep lanes draining.
- Ordering: within a lane, the events of one stream are delivered one at a time in the order read
  (= segment order, since the topic is keyed by stream id); different streams run concurrently,
  at most `plugins.max_concurrent_streams` at once per plugin.
- Retries: per attempt `timeout_s`, `max_attempts` with exponential backoff (per plugin, see
  `emostream.plugins.delivery`); a non-retryable error (e.g. webhook 4xx) is not retried. An event
  a plugin gave up on goes to the dead-letter topic (stage `plugin:<name>`, the plugin's error) and
  the others are not affected.
- At-least-once: a record's offset is acknowledged only when every plugin has delivered or
  dead-lettered it; faust commits the highest contiguous acknowledged offset, so a crash replays
  what was in flight. A Redis ledger of delivered idempotency keys (per plugin; one HMGET per event,
  marks written in batches every `LEDGER_FLUSH_INTERVAL_S`) makes a replay skip what a plugin
  already received, so a plugin sees duplicates only if Redis lost the ledger or the crash hit
  within that interval after its delivery. Plugins with side effects should still deduplicate on
  `event.idempotency_key` (the webhook sends it as `Idempotency-Key`).
- Metrics per plugin (Prometheus, on the worker's /metrics), see `PluginMetrics`.

Run it with `emostream worker plugins`; the plugins come from `EMOSTREAM_PLUGINS__CONFIG_PATH` /
`EMOSTREAM_PLUGINS__CONFIG_JSON` (see `emostream.plugins.registry`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from emostream.plugins.api import PluginContext
from emostream.plugins.delivery import DeliveryOutcome, deliver_with_retries
from emostream.plugins.registry import ConfiguredPlugin
from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.event import EmotionEvent
from emostream.workers.runtime.app import WorkerContext
from emostream.workers.runtime.dead_letters import dead_letter_for
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

__all__ = [
    "DeadLetterSink",
    "DeliveryLedger",
    "PluginDispatcher",
    "PluginMetrics",
    "PluginStage",
    "RecordRef",
    "RedisDeliveryLedger",
    "TopicDeadLetters",
    "build",
]

log = logging.getLogger(__name__)

STAGE_NAME = "plugins"
AGENT_NAME = "emostream-plugins"
LEDGER_SUFFIX = "delivered"
LEDGER_FLUSH_INTERVAL_S = 0.05  # delivery marks are written in one pipeline this often

class PluginMetrics:
    """Per-plugin metrics, on the worker's registry (so they appear on its /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.events = Counter(
            "emostream_plugin_events",
            "events handled per plugin, by outcome (delivered, dead_lettered, duplicate)",
            ["plugin", "outcome"],
            registry=r,
        )
        self.attempt_failures = Counter(
            "emostream_plugin_attempt_failures", "failed delivery attempts per plugin (retried or not)", ["plugin"], registry=r
        )
        self.delivery_seconds = Histogram(
            "emostream_plugin_delivery_seconds",
            "dispatch -> done per plugin, retries included",
            ["plugin"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.pending_events = Gauge(
            "emostream_plugin_pending_events", "events queued or in flight per plugin", ["plugin"], registry=r
        )
        self.invalid_records = Counter(
            "emostream_plugin_invalid_records", "records on the emotions topic that are not an EmotionEvent", registry=r
        )


@dataclass(frozen=True)
class RecordRef:
    """Where an event came from, to name it in a dead letter and let an operator replay it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)

    def dead_letter(self, *, stage: str, reason: str) -> DeadLetter:
        return dead_letter_for(
            stage=stage,
            reason=reason,
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            key=self.key,
            headers=self.headers,
            value=self.value,
        )


class DeadLetterSink(Protocol):
    async def send(self, dead_letter: DeadLetter) -> None: ...


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
        return f"{self._key_prefix}:{{{stream_id}}}:{LEDGER_SUFFIX}"

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


class _PendingEvent:
    """One record in flight: done when every plugin has delivered or dead-lettered it."""

    def __init__(
        self,
        event: EmotionEvent,
        record: RecordRef,
        plugins_left: int,
        on_done: Callable[[], Any],
        already_delivered_to: asyncio.Future[set[str]] | None,
    ) -> None:
        self.event = event
        self.record = record
        self.already_delivered_to = already_delivered_to
        self._plugins_left = plugins_left
        self._on_done = on_done

    async def plugin_finished(self) -> None:
        self._plugins_left -= 1
        if self._plugins_left == 0:
            result = self._on_done()
            if asyncio.iscoroutine(result):
                await result


class _PluginLane:
    """One plugin's queues: FIFO per stream, streams concurrently up to a limit."""

    def __init__(
        self,
        configured: ConfiguredPlugin,
        *,
        dead_letters: DeadLetterSink,
        ledger: DeliveryLedger | None,
        max_pending_events: int,
        max_concurrent_streams: int,
        metrics: PluginMetrics,
    ) -> None:
        self.configured = configured
        self._metrics = metrics
        self.name = configured.name
        self._dead_letters = dead_letters
        self._ledger = ledger
        self._max_pending_events = max_pending_events
        self._stream_slots = asyncio.Semaphore(max_concurrent_streams)
        self._queues: dict[str, deque[_PendingEvent]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_events = 0
        self._room = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending_events(self) -> int:
        return self._pending_events

    async def submit(self, pending: _PendingEvent) -> None:
        """Queue an event; waits while this lane is full (the only way one plugin slows the consumer)."""
        async with self._room:
            await self._room.wait_for(lambda: self._pending_events < self._max_pending_events)
            self._pending_events += 1
        self._metrics.pending_events.labels(self.name).set(self._pending_events)
        self._idle.clear()
        stream_id = pending.event.stream_id
        queue = self._queues.get(stream_id)
        if queue is not None:
            queue.append(pending)  # its drain task is running and will reach it in order
            return
        self._queues[stream_id] = deque([pending])
        task = asyncio.get_running_loop().create_task(self._drain(stream_id), name=f"plugin:{self.name}:{stream_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, stream_id: str) -> None:
        queue = self._queues[stream_id]
        try:
            while queue:
                pending = queue[0]
                async with self._stream_slots:
                    try:
                        await self._deliver(pending)
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:
                        log.exception("plugin %r: delivering %s failed unexpectedly", self.name, pending.event.idempotency_key)
                        await self._send_dead_letter(
                            pending.record.dead_letter(
                                stage=f"plugin:{self.name}", reason=f"plugin {self.name!r}: internal error: {error!r}"
                            )
                        )
                queue.popleft()
                async with self._room:
                    self._pending_events -= 1
                    self._room.notify_all()
                self._metrics.pending_events.labels(self.name).set(self._pending_events)
                await pending.plugin_finished()
        finally:
            self._queues.pop(stream_id, None)
            if not self._queues:
                self._idle.set()

    async def _deliver(self, pending: _PendingEvent) -> None:
        event, plugin = pending.event, self.configured.plugin
        already = await pending.already_delivered_to if pending.already_delivered_to is not None else set()
        if self.name in already:  # a replay this plugin already received
            self._metrics.events.labels(self.name, "duplicate").inc()
            return

        def count_failure(_attempt: int, _error: BaseException) -> None:
            self._metrics.attempt_failures.labels(self.name).inc()

        outcome: DeliveryOutcome = await deliver_with_retries(
            plugin, event, self.configured.policy, on_attempt_failed=count_failure
        )
        self._metrics.delivery_seconds.labels(self.name).observe(outcome.duration_s)
        if outcome.ok:
            self._metrics.events.labels(self.name, "delivered").inc()
            if self._ledger is not None:
                self._ledger.mark_delivered(self.name, event)
            return
        self._metrics.events.labels(self.name, "dead_lettered").inc()
        reason = f"{outcome.error} (gave up after {outcome.attempts} attempt(s))"
        log.warning("%s", reason)
        await self._send_dead_letter(pending.record.dead_letter(stage=f"plugin:{self.name}", reason=reason))

    async def _send_dead_letter(self, dead_letter: DeadLetter) -> None:
        """The dead-letter topic must get it before the offset is acknowledged: retry until sent."""
        delay_s = 0.1
        while True:
            try:
                await self._dead_letters.send(dead_letter)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep trying: the offset waits for it
                log.error("plugin %r: dead letter not sent (%s); retrying in %.1f s", self.name, error, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class PluginDispatcher:
    """Fans events out to the plugins' lanes and tells when a record may be acknowledged.

    Framework-free (plain asyncio), so the faust agent below, a test or another consumer can drive
    it: `await start()`, then `await submit(event, record, on_done)` per record, `await stop()`.
    """

    def __init__(
        self,
        plugins: Sequence[ConfiguredPlugin],
        *,
        dead_letters: DeadLetterSink,
        context: PluginContext,
        ledger: DeliveryLedger | None = None,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.metrics = metrics or PluginMetrics()
        names = [configured.name for configured in plugins]
        if len(set(names)) != len(names):
            raise ValueError(f"plugin names must be unique, got {names}")
        self.plugins = list(plugins)
        self.context = context
        self.dead_letters = dead_letters
        self._ledger = ledger
        settings = context.settings.plugins
        self._lanes = [
            _PluginLane(
                configured,
                dead_letters=dead_letters,
                ledger=ledger,
                max_pending_events=settings.max_pending_events,
                max_concurrent_streams=settings.max_concurrent_streams,
                metrics=self.metrics,
            )
            for configured in plugins
        ]
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start every plugin (idempotent). A plugin that fails to start stops the stage, naming it."""
        async with self._start_lock:
            if self._started:
                return
            for configured in self.plugins:
                try:
                    await configured.plugin.start(self.context)
                except Exception as error:
                    raise RuntimeError(f"plugin {configured.name!r} failed to start: {error}") from error
            if self._ledger is not None:
                await self._ledger.start()
            self._started = True
            log.info("plugin stage: %s", ", ".join(repr(configured.name) for configured in self.plugins) or "no plugins")

    async def submit(self, event: EmotionEvent, record: RecordRef, on_done: Callable[[], Any]) -> None:
        """Hand one event to every plugin; `on_done()` runs once all of them are finished with it."""
        if not self._lanes:
            result = on_done()
            if asyncio.iscoroutine(result):
                await result
            return
        names = [lane.name for lane in self._lanes]
        already = self._ledger.delivered_to(event, names) if self._ledger is not None else None
        pending = _PendingEvent(event, record, len(self._lanes), on_done, already)
        for lane in self._lanes:
            await lane.submit(pending)

    async def invalid_record(self, record: RecordRef, reason: str) -> None:
        self.metrics.invalid_records.inc()
        await self.dead_letters.send(record.dead_letter(stage=STAGE_NAME, reason=reason))

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait until every lane is empty."""
        await asyncio.wait_for(asyncio.gather(*(lane.wait_idle() for lane in self._lanes)), timeout_s)

    async def stop(self, *, drain_timeout_s: float = 5.0) -> None:
        """Let in-flight deliveries finish (up to the timeout), then stop every plugin."""
        if not self._started:
            return
        try:
            await self.drain(drain_timeout_s)
        except TimeoutError:
            log.warning("plugin stage: lanes not empty after %.1f s; unfinished events will be replayed", drain_timeout_s)
        for lane in self._lanes:
            await lane.cancel()
        if self._ledger is not None:
            await self._ledger.stop()
        for configured in self.plugins:
            try:
                await configured.plugin.stop()
            except Exception as error:  # noqa: BLE001 - one plugin's stop must not skip the others'
                log.warning("plugin %r failed to stop cleanly: %s", configured.name, error)
        self._started = False

    def pending_events(self) -> dict[str, int]:
        return {lane.name: lane.pending_events for lane in self._lanes}


def _record_from_faust(event: Any) -> RecordRef:
    message = event.message
    headers = {name: raw for name, raw in (message.headers or []) if raw is not None}
    value = message.value if isinstance(message.value, bytes) else bytes(message.value or b"")
    return RecordRef(
        topic=message.topic, partition=message.partition, offset=message.offset, key=message.key, value=value, headers=headers
    )


class TopicDeadLetters:
    """Dead letters through the app's producer: JSON, keyed like the origin record; awaited."""

    def __init__(self, topic: Any, counter: Any | None = None) -> None:
        self._topic = topic
        self._counter = counter

    async def send(self, dead_letter: DeadLetter) -> None:
        key = dead_letter.key.encode("utf-8") if dead_letter.key is not None else None
        delivery = await self._topic.send(key=key, value=dead_letter.model_dump_json().encode("utf-8"))
        await delivery  # on the topic before the origin record is acknowledged
        if self._counter is not None:
            self._counter.inc()


class PluginStage:
    """Registers the plugin-runner agent on a worker's app (`emostream worker plugins`)."""

    def __init__(self, ctx: WorkerContext, plugins: Sequence[ConfiguredPlugin] | None = None) -> None:
        from emostream.plugins.registry import build_plugins
        from emostream.workers.runtime.result_store import connect

        settings = ctx.settings
        self.ctx = ctx
        # Options are validated here, at start-up: a bad configuration stops the worker, naming the plugin.
        configured = list(plugins) if plugins is not None else build_plugins(settings.plugins)
        self.redis = connect(settings.redis.model_copy(update={"socket_timeout_s": max(settings.redis.socket_timeout_s, 5.0)}))
        self.dispatcher = PluginDispatcher(
            configured,
            dead_letters=TopicDeadLetters(ctx.topics.dead_letters, ctx.metrics.dead_letters),
            context=PluginContext(settings=settings, redis=self.redis),
            ledger=RedisDeliveryLedger(self.redis, key_prefix=settings.redis.key_prefix, ttl_s=settings.plugins.delivered_ttl_s),
            metrics=PluginMetrics(ctx.metrics.registry),
        )

    def register(self) -> None:
        dispatcher = self.dispatcher

        async def plugins(stream: Any) -> None:
            await dispatcher.start()
            try:
                async for event in stream.noack().events():
                    await self.on_event(event)
            finally:
                await asyncio.shield(dispatcher.stop())

        self.ctx.app.agent(self.ctx.topics.emotions, name=AGENT_NAME)(plugins)

    async def on_event(self, event: Any) -> None:
        record = _record_from_faust(event)
        try:
            emotion = EmotionEvent.model_validate_json(record.value)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in error.errors())
            await self.dispatcher.invalid_record(
                record, f"{record.topic}[{record.partition}]@{record.offset}: not an EmotionEvent: {problems}"
            )
            event.ack()
            return
        await self.dispatcher.submit(emotion, record, on_done=event.ack)

    def health(self) -> dict[str, object]:
        return {"plugins": self.dispatcher.pending_events()}


def build(ctx: WorkerContext) -> PluginStage:
    stage = PluginStage(ctx)
    stage.register()
    return stage
