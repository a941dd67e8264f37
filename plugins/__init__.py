"""emostream.plugins: the `on_emotion` hook and its adapters (callback, webhook, Rasa, analytics).

Writing a plugin: subclass `Plugin`, declare its options as a pydantic model, implement
`on_emotion`. Options are validated at start-up; a bad one fails with the plugin and option named.

    from emostream.plugins import EmotionEvent, Plugin, PluginOptions

    class SlackOptions(PluginOptions):
        channel: str
        labels: list[str] = ["angry", "fearful"]

    class SlackAlert(Plugin[SlackOptions]):
        Options = SlackOptions
        kind = "slack"

        async def on_emotion(self, event: EmotionEvent) -> None:
            if event.label in self.options.labels:
                print(f"#{self.options.channel}: {event.call_id} sounds {event.label}")

Register it in your package's pyproject.toml, then list it in the plugin configuration
(`EMOSTREAM_PLUGINS__CONFIG_PATH=plugins.json`, see `emostream.plugins.registry`):

    [project.entry-points."emostream.plugins"]
    slack = "my_package.slack:SlackAlert"

    {"plugins": [{"type": "slack", "options": {"channel": "supervisors",
                  "decision": {"confidence_threshold": 0.5, "hysteresis_segments": 2}}}]}

Or, in-process without the plugin runner, follow one stream's results from Redis:

    from emostream.plugins import CallbackPlugin, subscribe

    async def on_emotion(event: EmotionEvent) -> None:
        print(event.segment_index, event.label)

    async with subscribe("call-42:customer", CallbackPlugin.wrap(on_emotion)) as subscription:
        await subscription.wait_closed()
"""

from emostream.plugins.api import (
    AsyncEmotionHandler,
    EmotionHandler,
    Plugin,
    PluginConfigError,
    PluginContext,
    PluginDeliveryError,
    PluginOptions,
    SyncEmotionHandler,
    SyncPlugin,
    as_async_handler,
    effective_role,
)
from emostream.plugins.callback import CallbackPlugin
from emostream.plugins.decision import UNCERTAIN_LABEL, DecisionOptions, DecisionState
from emostream.plugins.delivery import DeliveryOutcome, DeliveryPolicy, deliver_with_retries
from emostream.schemas.event import EmotionEvent

__all__ = [
    "UNCERTAIN_LABEL",
    "AsyncEmotionHandler",
    "CallbackPlugin",
    "DecisionOptions",
    "DecisionState",
    "DeliveryOutcome",
    "DeliveryPolicy",
    "EmotionEvent",
    "EmotionHandler",
    "Plugin",
    "PluginConfigError",
    "PluginContext",
    "PluginDeliveryError",
    "PluginOptions",
    "SyncEmotionHandler",
    "SyncPlugin",
    "as_async_handler",
    "deliver_with_retries",
    "effective_role",
    "subscribe",
]


def __getattr__(name: str):  # lazy: `subscribe` needs redis, imported only when used
    if name == "subscribe":
        from emostream.plugins.subscriber import subscribe

        return subscribe
    raise AttributeError(f"module 'emostream.plugins' has no attribute {name!r}")
