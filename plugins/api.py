"""The `on_emotion` hook: the Plugin base class, its options model and the errors it raises.

Layering: `emostream.plugins` imports `emostream.schemas` only (never `workers`), so a chatbot can
embed a plugin without faust. Heavy or optional dependencies (aiohttp, redis, aiokafka) are
imported by the adapters that need them, guarded by `require()` with an actionable message.

Life cycle of a plugin, whoever runs it (the plugin runner, `subscribe()`, or your own loop):

    plugin = MyPlugin.from_options({"greeting": "hi"}, name="my-bot")  # validated here
    await plugin.start(PluginContext())
    await plugin.deliver(event)        # decision helpers, then on_emotion(event)
    await plugin.stop()
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

from emostream.plugins.decision import DecisionOptions, DecisionState
from emostream.schemas.audio import ChannelRole
from emostream.schemas.event import EmotionEvent
from emostream.schemas.settings import Settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "AsyncEmotionHandler",
    "EmotionHandler",
    "Plugin",
    "PluginConfigError",
    "PluginContext",
    "PluginDeliveryError",
    "PluginOptions",
    "SyncEmotionHandler",
    "SyncPlugin",
    "as_async_handler",
    "effective_role",
    "require",
]

AsyncEmotionHandler = Callable[[EmotionEvent], Awaitable[None]]
SyncEmotionHandler = Callable[[EmotionEvent], None]
EmotionHandler = AsyncEmotionHandler | SyncEmotionHandler


_ROLE_NAMES = {role.value for role in ChannelRole}


def effective_role(event: EmotionEvent) -> ChannelRole:
    """The event's channel role; when the gateway sent none (`unknown`), the stream id's channel
    suffix if it names a role (`call-42:customer` -> customer)."""
    if event.role is not ChannelRole.UNKNOWN:
        return event.role
    suffix = event.stream_id.rsplit(":", 1)[-1] if ":" in event.stream_id else ""
    return ChannelRole(suffix) if suffix in _ROLE_NAMES else ChannelRole.UNKNOWN


class PluginConfigError(ValueError):
    """A plugin's configuration is wrong; the message names the plugin, the option and the problem."""


class PluginDeliveryError(RuntimeError):
    """A plugin could not handle an event.

    `retryable=False` tells the runner not to retry (e.g. a webhook receiver answered 4xx, or the
    adapter already retried on its own); the event then goes straight to the dead-letter topic.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def require(module_name: str, *, plugin: str, extra: str | None = None) -> Any:
    """Import an optional dependency, or fail with an ImportError saying what to install."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        package = extra or module_name.split(".")[0]
        raise ImportError(
            f"plugin {plugin!r} needs the optional dependency {module_name!r}: pip install {package}"
        ) from error


class PluginOptions(BaseModel):
    """Base of every plugin's options. Unknown options are errors (a typo must not pass silently).

    `decision` configures the optional helpers (smoothing, hysteresis, confidence threshold)
    applied before `on_emotion`; by default they are off and events pass unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision: DecisionOptions = Field(default_factory=DecisionOptions)


@dataclass
class PluginContext:
    """What a running plugin may use: the settings, and (in the runner) a shared Redis client.

    Adapters that need Kafka or Redis read their addresses from `settings` unless their own
    options override them, so production changes them by environment only.
    """

    settings: Settings = field(default_factory=Settings)
    redis: Any | None = None  # a redis.asyncio.Redis, shared; None: the plugin opens its own
    extras: dict[str, Any] = field(default_factory=dict)


OptionsT = TypeVar("OptionsT", bound=PluginOptions)


class Plugin(ABC, Generic[OptionsT]):
    """Base of every plugin. Subclass it, declare `Options`, implement `on_emotion`.

    - `Options`: a `PluginOptions` subclass; validated once, at start-up, by `from_options`.
    - `kind`: the default name (also the entry-point name of the built-ins).
    - `on_emotion(event)`: async; called once per event, in segment order per stream. Raise
      `PluginDeliveryError` (or any exception) to have the runner retry, then dead-letter it.
    - `start(context)` / `stop()`: open and close connections; optional.
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    kind: ClassVar[str] = "plugin"

    def __init__(self, options: OptionsT | None = None, *, name: str | None = None) -> None:
        self.name: str = name or self.kind
        if options is None:
            options = self.validate_options({}, name=self.name)  # type: ignore[assignment]
        if not isinstance(options, self.Options):
            raise PluginConfigError(
                f"plugin {self.name!r}: options must be a {self.Options.__name__}, "
                f"got {type(options).__name__}"
            )
        self.options: OptionsT = options
        self.context: PluginContext | None = None
        self._decision = DecisionState(options.decision)

    @classmethod
    def from_options(cls, raw: Mapping[str, Any] | None = None, *, name: str | None = None) -> Self:
        """Validate raw options (from JSON / entry-point config) and build the plugin.

        Raises PluginConfigError naming the plugin and each bad option.
        """
        plugin_name = name or cls.kind
        return cls(cls.validate_options(raw, name=plugin_name), name=plugin_name)  # type: ignore[arg-type]

    @classmethod
    def validate_options(cls, raw: Mapping[str, Any] | None, *, name: str | None = None) -> PluginOptions:
        """Raw options -> this plugin's Options model; PluginConfigError names plugin and option."""
        plugin_name = name or cls.kind
        try:
            options = cls.Options.model_validate(dict(raw or {}))
        except ValidationError as error:
            problems = "; ".join(
                f"option {'.'.join(str(part) for part in item['loc']) or '(options)'!r}: {item['msg']}"
                for item in error.errors()
            )
            raise PluginConfigError(f"plugin {plugin_name!r} ({cls.__name__}): {problems}") from None
        return options

    async def start(self, context: PluginContext) -> None:
        """Open connections. Called once before the first event."""
        self.context = context

    async def stop(self) -> None:
        """Close connections. Called once after the last event."""

    @abstractmethod
    async def on_emotion(self, event: EmotionEvent) -> None:
        """Handle one event (after the decision helpers, if configured)."""

    async def deliver(self, event: EmotionEvent) -> None:
        """Apply the decision helpers, then call `on_emotion`. What runners call."""
        decided = self._decision.apply(event)
        if decided is not None:
            await self.on_emotion(decided)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class SyncPlugin(Plugin[OptionsT]):
    """A plugin whose hook is a plain function: `on_emotion_sync` runs in a worker thread so
    blocking code (a synchronous HTTP client, a database driver) never stalls the event loop."""

    @abstractmethod
    def on_emotion_sync(self, event: EmotionEvent) -> None:
        """Handle one event, blocking allowed."""

    async def on_emotion(self, event: EmotionEvent) -> None:
        await asyncio.to_thread(self.on_emotion_sync, event)


def as_async_handler(handler: EmotionHandler) -> AsyncEmotionHandler:
    """Wrap a sync or async callable as an async handler (sync ones run in a worker thread)."""
    if asyncio.iscoroutinefunction(handler) or (
        not inspect.isroutine(handler) and asyncio.iscoroutinefunction(type(handler).__call__)  # a callable object
    ):
        return handler  # type: ignore[return-value]

    async def run_in_thread(event: EmotionEvent) -> None:
        result = await asyncio.to_thread(handler, event)
        if asyncio.iscoroutine(result):  # a lambda returning a coroutine
            await result

    return run_in_thread
