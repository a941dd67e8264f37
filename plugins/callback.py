"""Adapter 1: a Python callback, in-process.

In code:   `CallbackPlugin.wrap(my_function, name="bot")` (sync or async function).
In config: `{"type": "callback", "options": {"target": "my_package.bot:on_emotion"}}`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from emostream.plugins.api import (
    AsyncEmotionHandler,
    EmotionHandler,
    Plugin,
    PluginConfigError,
    PluginOptions,
    as_async_handler,
)
from emostream.plugins.decision import DecisionOptions
from emostream.plugins.importing import import_target
from emostream.schemas.event import EmotionEvent
from pydantic import Field


class CallbackOptions(PluginOptions):
    target: str | None = Field(
        None, description="`package.module:function` to call; None when the handler is given in code"
    )


class CallbackPlugin(Plugin[CallbackOptions]):
    """Calls a Python function (sync functions run in a worker thread) for every event."""

    Options: ClassVar[type[PluginOptions]] = CallbackOptions
    kind: ClassVar[str] = "callback"

    def __init__(
        self,
        options: CallbackOptions | None = None,
        *,
        name: str | None = None,
        handler: EmotionHandler | None = None,
    ) -> None:
        super().__init__(options, name=name)
        if handler is None and self.options.target is None:
            raise PluginConfigError(
                f"plugin {self.name!r}: option 'target' is required (a `package.module:function`) "
                "when no handler is given in code"
            )
        chosen = handler if handler is not None else _import_target(self.options.target or "", self.name)
        self._handler: AsyncEmotionHandler = as_async_handler(chosen)

    @classmethod
    def wrap(
        cls, handler: EmotionHandler, *, name: str = "callback", decision: DecisionOptions | None = None
    ) -> CallbackPlugin:
        """A plugin around a function written in code (the usual way for an embedding chatbot)."""
        options = CallbackOptions(decision=decision or DecisionOptions())
        return cls(options, name=name, handler=handler)

    async def on_emotion(self, event: EmotionEvent) -> None:
        await self._handler(event)


def _import_target(path: str, plugin_name: str) -> Any:
    if ":" not in path:
        raise PluginConfigError(
            f"plugin {plugin_name!r}: option 'target' must be `package.module:function`, got {path!r}"
        )
    try:
        target: Any = import_target(path)
    except (ImportError, ValueError) as error:
        raise PluginConfigError(f"plugin {plugin_name!r}: option 'target' {path!r}: {error}") from None
    if not callable(target):
        raise PluginConfigError(f"plugin {plugin_name!r}: option 'target' {path!r} is not callable")
    return target
