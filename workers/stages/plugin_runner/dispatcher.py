"""The plugin dispatcher: fans events out to the plugins' lanes and says when a record may be acknowledged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from emostream.plugins.api import PluginContext
from emostream.plugins.registry import ConfiguredPlugin
from emostream.schemas.event import EmotionEvent
from emostream.workers.runtime.stage_names import StageName
from emostream.workers.stages.plugin_runner.lanes import DeadLetterTarget, PendingEvent, PluginLane
from emostream.workers.stages.plugin_runner.ledger import DeliveryLedger
from emostream.workers.stages.plugin_runner.metrics import PluginMetrics
from emostream.workers.stages.plugin_runner.records import RecordRef

__all__ = ["PluginDispatcher"]

log = logging.getLogger(__name__)


class PluginDispatcher:
    """Fans events out to the plugins' lanes and tells when a record may be acknowledged.

    Framework-free (plain asyncio), so the faust agent below, a test or another consumer can drive
    it: `await start()`, then `await submit(event, record, on_done)` per record, `await stop()`.
    """

    def __init__(
        self,
        plugins: Sequence[ConfiguredPlugin],
        *,
        dead_letters: DeadLetterTarget,
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
            PluginLane(
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
        pending = PendingEvent(event, record, len(self._lanes), on_done, already)
        for lane in self._lanes:
            await lane.submit(pending)

    async def invalid_record(self, record: RecordRef, reason: str) -> None:
        self.metrics.invalid_records.inc()
        await self.dead_letters.send(record.dead_letter(stage=StageName.PLUGINS.value, reason=reason))

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
