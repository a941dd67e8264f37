"""The plugin-runner stage's faust glue: the agent on the emotions topic, the Redis client, the dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from emostream.plugins.api import PluginContext
from emostream.plugins.registry import ConfiguredPlugin
from emostream.schemas.event import EmotionEvent
from emostream.workers.runtime.app import WorkerContext
from emostream.workers.stages.plugin_runner.dispatcher import PluginDispatcher
from emostream.workers.stages.plugin_runner.ledger import RedisDeliveryLedger
from emostream.workers.stages.plugin_runner.metrics import PluginMetrics
from emostream.workers.stages.plugin_runner.records import record_from_faust
from pydantic import ValidationError

__all__ = ["AGENT_NAME", "PluginStage", "build"]

AGENT_NAME = "emostream-plugins"


class PluginStage:
    """Registers the plugin-runner agent on a worker's app (`emostream worker plugins`)."""

    def __init__(self, ctx: WorkerContext, plugins: Sequence[ConfiguredPlugin] | None = None) -> None:
        from emostream.plugins.connections import async_redis_client
        from emostream.plugins.registry import build_plugins

        settings = ctx.settings
        self.ctx = ctx
        # Options are validated here, at start-up: a bad configuration stops the worker, naming the plugin.
        configured = list(plugins) if plugins is not None else build_plugins(settings.plugins)
        self.redis = async_redis_client(settings.redis, plugin="plugin runner")
        self.dispatcher = PluginDispatcher(
            configured,
            dead_letters=ctx.dead_letters,
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
                    self.ctx.liveness.took(event.message.tp, event.message.offset)
                    await self.on_event(event)
            finally:
                await asyncio.shield(dispatcher.stop())

        self.ctx.app.agent(self.ctx.topics.emotions, name=AGENT_NAME)(plugins)

    async def on_event(self, event: Any) -> None:
        record = record_from_faust(event)
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
