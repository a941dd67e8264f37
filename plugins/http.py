"""The HTTP client side shared by adapters that call out (webhook, Rasa): one aiohttp session per plugin."""

from __future__ import annotations

from typing import Any, TypeVar

from emostream.plugins.api import Plugin, PluginContext, PluginOptions, require
from pydantic import Field


class HttpPluginOptions(PluginOptions):
    request_timeout_s: float = Field(3.0, gt=0, description="one HTTP request longer than this fails (retryable)")


HttpOptionsT = TypeVar("HttpOptionsT", bound=HttpPluginOptions)


class HttpPlugin(Plugin[HttpOptionsT]):
    """Opens its aiohttp session at start (or first use) and closes it at stop."""

    def __init__(self, options: HttpOptionsT | None = None, *, name: str | None = None) -> None:
        super().__init__(options, name=name)
        self._aiohttp = require("aiohttp", plugin=self.name)
        self._session: Any | None = None

    async def start(self, context: PluginContext) -> None:
        await super().start(context)
        self._ensure_session()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> Any:
        if self._session is None:
            timeout = self._aiohttp.ClientTimeout(total=self.options.request_timeout_s)
            self._session = self._aiohttp.ClientSession(timeout=timeout)
        return self._session
