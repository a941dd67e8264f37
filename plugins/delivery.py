"""Delivering one event to one plugin: a timeout per attempt, retries with exponential backoff.

Shared by the plugin runner (`workers/stages/plugin_runner`) and in-process use (`subscriber.py`), so a
plugin behaves the same wherever it runs. A `PluginDeliveryError(retryable=False)` (e.g. a webhook
receiver answered 4xx) is not retried.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from emostream.plugins.api import Plugin, PluginDeliveryError
from emostream.schemas.event import EmotionEvent
from emostream.schemas.settings import PluginSettings
from pydantic import BaseModel, ConfigDict


def _setting(name: str) -> Any:
    """The field of PluginSettings called `name`, with its default, bounds and description."""
    return copy.deepcopy(PluginSettings.model_fields[name])


class DeliveryPolicy(BaseModel):
    """How events are delivered to one plugin."""

    model_config = ConfigDict(frozen=True)

    # Defaults and meanings are PluginSettings' (the one settings model); a plugin's config may override.
    timeout_s: float = _setting("timeout_s")
    max_attempts: int = _setting("max_attempts")
    backoff_initial_s: float = _setting("backoff_initial_s")
    backoff_max_s: float = _setting("backoff_max_s")

    @classmethod
    def from_settings(cls, settings: PluginSettings, **overrides: Any) -> DeliveryPolicy:
        values = {name: getattr(settings, name) for name in cls.model_fields}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def backoff_s(self, failed_attempt: int) -> float:
        """Wait after failed attempt number `failed_attempt` (1-based)."""
        return min(self.backoff_max_s, self.backoff_initial_s * (2 ** (failed_attempt - 1)))


@dataclass(frozen=True)
class DeliveryOutcome:
    """What happened to one event at one plugin."""

    plugin_name: str
    ok: bool
    attempts: int
    duration_s: float
    error: str | None = None  # the last error, naming the plugin, the event and the problem

    def __bool__(self) -> bool:
        return self.ok


AttemptFailedHook = Callable[[int, BaseException], Awaitable[None] | None]


def describe_failure(plugin: Plugin[Any], event: EmotionEvent, attempt: int, error: BaseException) -> str:
    problem = (
        "timed out" if isinstance(error, (asyncio.TimeoutError, TimeoutError)) else f"{type(error).__name__}: {error}"
    )
    return f"plugin {plugin.name!r}, event {event.idempotency_key}, attempt {attempt}: {problem}"


async def deliver_with_retries(
    plugin: Plugin[Any],
    event: EmotionEvent,
    policy: DeliveryPolicy,
    *,
    on_attempt_failed: AttemptFailedHook | None = None,
) -> DeliveryOutcome:
    """Call `plugin.deliver(event)` until it succeeds, a non-retryable error, or attempts run out.

    Never raises for a plugin's failure (cancellation still propagates): the outcome says what
    happened, so one plugin's failure cannot break its caller.
    """
    started_s = time.monotonic()
    last_error = ""
    attempt = 0
    for attempt in range(1, policy.max_attempts + 1):
        try:
            await asyncio.wait_for(plugin.deliver(event), timeout=policy.timeout_s)
            return DeliveryOutcome(plugin.name, True, attempt, time.monotonic() - started_s)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a plugin may raise anything; it must not escape
            last_error = describe_failure(plugin, event, attempt, error)
            if on_attempt_failed is not None:
                hook_result = on_attempt_failed(attempt, error)
                if asyncio.iscoroutine(hook_result):
                    await hook_result
            if isinstance(error, PluginDeliveryError) and not error.retryable:
                break
            if attempt < policy.max_attempts:
                await asyncio.sleep(policy.backoff_s(attempt))
    return DeliveryOutcome(plugin.name, False, attempt, time.monotonic() - started_s, last_error)
