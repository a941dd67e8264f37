"""One plugin's lane: its queues (FIFO per stream), its delivery tasks, its bounded backlog."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from emostream.plugins.delivery import DeliveryOutcome, deliver_with_retries
from emostream.plugins.registry import ConfiguredPlugin
from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.event import EmotionEvent
from emostream.workers.stages.plugin_runner.ledger import DeliveryLedger
from emostream.workers.stages.plugin_runner.metrics import PluginMetrics
from emostream.workers.stages.plugin_runner.records import RecordRef

__all__ = ["DeadLetterTarget", "PendingEvent", "PluginLane"]

log = logging.getLogger(__name__)


class DeadLetterTarget(Protocol):
    """Where given-up events go; `emostream.workers.runtime.dead_letters.DeadLetterSink` in a worker."""

    async def send(self, dead_letter: DeadLetter) -> bool | None:
        """On the topic when it returns; False (or an exception) when it could not be sent."""
        ...


class PendingEvent:
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


class PluginLane:
    """One plugin's queues: FIFO per stream, streams concurrently up to a limit."""

    def __init__(
        self,
        configured: ConfiguredPlugin,
        *,
        dead_letters: DeadLetterTarget,
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
        self._queues: dict[str, deque[PendingEvent]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_events = 0
        self._room = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending_events(self) -> int:
        return self._pending_events

    async def submit(self, pending: PendingEvent) -> None:
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

    async def _deliver(self, pending: PendingEvent) -> None:
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
                if await self._dead_letters.send(dead_letter) is not False:
                    return
                problem = "the sink reported a failure"
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep trying: the offset waits for it
                problem = repr(error)
            log.error("plugin %r: dead letter not sent (%s); retrying in %.1f s", self.name, problem, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
