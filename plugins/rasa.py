"""Adapter 3: Rasa. Sets a slot with the user's emotion and, optionally, triggers an intent when a
negative emotion persists, through Rasa's HTTP API (`rasa run --enable-api`):

- `POST {url}/conversations/{conversation_id}/tracker/events?include_events=NONE`
  body `{"event": "slot", "name": "user_emotion", "value": "angry", "timestamp": 1732330000.5}`
- `POST {url}/conversations/{conversation_id}/trigger_intent?include_events=NONE[&output_channel=latest]`
  body `{"name": "EXTERNAL_user_upset", "entities": {"emotion": "angry"}}`

Authentication: `token` (Rasa's `--auth-token`, sent as the `token` query parameter) and/or `jwt`
(sent as `Authorization: Bearer ...`).

The conversation id comes from the event by a rule: `conversation_id_pattern`, a regex matched
against the stream id whose named groups, with `stream_id`, `call_id`, `session_id` and `role`,
fill `conversation_id_template`. E.g. stream `bot-7f3a:user`, pattern
`^bot-(?P<sender>[^:]+):` and template `{sender}` give conversation `7f3a`.

Config:
    {"type": "rasa", "options": {"url": "http://rasa:5005", "token": "${RASA_TOKEN}",
     "roles": ["user"], "trigger_intent": "EXTERNAL_user_upset", "trigger_after_segments": 2,
     "decision": {"confidence_threshold": 0.4}}}
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from emostream.plugins.api import (
    PluginDeliveryError,
    PluginOptions,
    effective_role,
)
from emostream.plugins.http import HttpPlugin, HttpPluginOptions
from emostream.schemas.audio import ChannelRole
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redaction import redact_text, redact_url
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

DEFAULT_NEGATIVE_LABELS: tuple[str, ...] = ("angry", "fearful", "sad", "disgust")
MAX_TRACKED_STREAMS = 10_000


class RasaOptions(HttpPluginOptions):
    url: AnyHttpUrl = Field(description="Rasa server base URL, e.g. http://localhost:5005")
    token: SecretStr | None = Field(None, description="Rasa --auth-token, sent as ?token=")
    jwt: SecretStr | None = Field(None, description="a JWT sent as Authorization: Bearer")
    slot_name: str = Field("user_emotion", min_length=1, description="the slot set to the label")
    conversation_id_template: str = Field(
        "{call_id}", description="str.format template; fields: stream_id, call_id, session_id, role + pattern groups"
    )
    conversation_id_pattern: str | None = Field(None, description="regex on the stream id; named groups feed the template")
    roles: list[ChannelRole] | None = Field(
        None, description="only events of these channel roles (or stream id suffixes, see effective_role); None: all"
    )
    trigger_intent: str | None = Field(None, description="intent triggered when a negative emotion persists")
    trigger_after_segments: int = Field(3, ge=1, description="consecutive negative segments before the trigger")
    negative_labels: list[str] = Field(default_factory=lambda: list(DEFAULT_NEGATIVE_LABELS))
    output_channel: str | None = Field(None, description="Rasa output_channel for the triggered intent, e.g. latest")

    @field_validator("conversation_id_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return pattern

    @field_validator("conversation_id_template")
    @classmethod
    def _template_parses(cls, template: str) -> str:
        import string

        try:
            list(string.Formatter().parse(template))
        except ValueError as error:
            raise ValueError(f"not a valid str.format template: {error}") from None
        return template


@dataclass
class _NegativeRun:
    last_segment_index: int = -1
    consecutive_segments: int = 0
    triggered: bool = False
    trigger_pending_segment: int | None = None  # trigger decided at this segment, not yet accepted


class RasaPlugin(HttpPlugin[RasaOptions]):
    """Keeps a Rasa conversation's emotion slot current; triggers an intent on persistent distress."""

    Options: ClassVar[type[PluginOptions]] = RasaOptions
    kind: ClassVar[str] = "rasa"

    def __init__(self, options: RasaOptions | None = None, *, name: str | None = None) -> None:
        super().__init__(options, name=name)
        self._pattern = re.compile(self.options.conversation_id_pattern) if self.options.conversation_id_pattern else None
        self._runs: OrderedDict[str, _NegativeRun] = OrderedDict()

    def conversation_id(self, event: EmotionEvent) -> str:
        """The Rasa conversation (sender) id of an event, by the configured rule."""
        fields: dict[str, Any] = {
            "stream_id": event.stream_id,
            "call_id": event.call_id,
            "session_id": event.session_id or event.call_id,
            "role": event.role.value,
        }
        if self._pattern is not None:
            match = self._pattern.search(event.stream_id)
            if match is None:
                raise PluginDeliveryError(
                    f"plugin {self.name!r}: stream {event.stream_id!r} does not match "
                    f"conversation_id_pattern {self._pattern.pattern!r}",
                    retryable=False,
                )
            fields.update({key: value for key, value in match.groupdict().items() if value is not None})
        try:
            conversation = self.options.conversation_id_template.format(**fields)
        except (KeyError, IndexError) as error:
            raise PluginDeliveryError(
                f"plugin {self.name!r}: conversation_id_template needs field {error}, "
                f"not available for stream {event.stream_id!r}",
                retryable=False,
            ) from None
        if not conversation:
            raise PluginDeliveryError(f"plugin {self.name!r}: empty conversation id for {event.stream_id!r}", retryable=False)
        return conversation

    def _secrets(self) -> list[str]:
        """Values that must never appear in an error (they end up in logs and dead letters)."""
        token = self.options.token.get_secret_value() if self.options.token is not None else ""
        jwt = getattr(self.options, "jwt", None)
        return [token, jwt.get_secret_value() if jwt is not None else ""]

    async def on_emotion(self, event: EmotionEvent) -> None:
        if self.options.roles is not None and effective_role(event) not in self.options.roles:
            return
        conversation = self.conversation_id(event)
        timestamp_s = (event.created_at_ms / 1000.0) if event.created_at_ms else time.time()
        slot_event = {"event": "slot", "name": self.options.slot_name, "value": event.label, "timestamp": timestamp_s}
        await self._post(f"/conversations/{quote(conversation, safe='')}/tracker/events", slot_event)
        if self.options.trigger_intent and self._negative_run_reached(event):
            params = {"output_channel": self.options.output_channel} if self.options.output_channel else {}
            body = {"name": self.options.trigger_intent, "entities": {"emotion": event.label}}
            await self._post(f"/conversations/{quote(conversation, safe='')}/trigger_intent", body, params)
            self._runs[event.stream_id].trigger_pending_segment = None

    def _negative_run_reached(self, event: EmotionEvent) -> bool:
        """Count consecutive negative segments of the stream; True once per run when it reaches N."""
        run = self._runs.get(event.stream_id)
        if run is None:
            run = self._runs[event.stream_id] = _NegativeRun()
            while len(self._runs) > MAX_TRACKED_STREAMS:
                self._runs.popitem(last=False)
        if event.segment_index <= run.last_segment_index:
            # A replay: already counted; trigger again only if that segment's trigger failed.
            return run.trigger_pending_segment == event.segment_index
        run.last_segment_index = event.segment_index
        if event.label in self.options.negative_labels:
            run.consecutive_segments += 1
        else:
            run.consecutive_segments, run.triggered = 0, False
        if run.consecutive_segments >= self.options.trigger_after_segments and not run.triggered:
            run.triggered, run.trigger_pending_segment = True, event.segment_index
            return True
        return False

    async def _post(self, path: str, body: dict[str, Any], extra_params: dict[str, str] | None = None) -> None:
        params = {"include_events": "NONE", **(extra_params or {})}
        if self.options.token is not None:
            params["token"] = self.options.token.get_secret_value()
        headers = {"Authorization": f"Bearer {self.options.jwt.get_secret_value()}"} if self.options.jwt else {}
        url = str(self.options.url).rstrip("/") + path
        try:
            async with self._ensure_session().post(url, json=body, params=params, headers=headers) as response:
                if response.status < 300:
                    return
                status, detail = response.status, (await response.text())[:200]
        except (self._aiohttp.ClientError, TimeoutError) as error:
            raise PluginDeliveryError(
                f"rasa {redact_url(url)}: {type(error).__name__}: {redact_text(str(error), url, secrets=self._secrets()) or 'timed out'}"
            ) from error
        raise PluginDeliveryError(
            f"rasa {redact_url(url)} answered HTTP {status}: {redact_text(detail, secrets=self._secrets())}", retryable=status >= 500 or status == 429
        )

