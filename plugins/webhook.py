"""Adapter 2: an HTTP webhook, signed so the receiver can trust it and reject replays.

Each event is POSTed as JSON:

    {"type": "emotion", "delivery_id": "9b2f...", "idempotency_key": "call-42:customer/7/plb-ravdess8@1.0.0",
     "call_id": "call-42", "event": {...EmotionEvent...}}

`delivery_id` is new for every request (retries included), so no two legitimate requests share a
signature even within one second: a receiver may treat a repeated signature as a replay.

with headers
- `X-Emostream-Timestamp`: Unix time of sending, whole seconds;
- `X-Emostream-Signature`: `v1=` + hex HMAC-SHA256(secret, timestamp + "." + body);
- `Idempotency-Key`: the event's idempotency key (same on every retry and replay).

Receivers call `verify_webhook(...)` (below; no aiohttp needed): it checks the signature in
constant time, rejects timestamps outside a tolerance window, and, with a `ReplayGuard`, rejects a
request seen before. A retry is re-signed with a fresh timestamp, so deduplicate deliveries (as
opposed to replays) on `Idempotency-Key`.

Failures: a 5xx (and 429), a timeout or a connection error are retryable (the runner retries
with backoff); any other 4xx is not (the request is wrong, retrying cannot help) and the event goes
to the dead-letter topic at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections import OrderedDict
from typing import ClassVar

from emostream.plugins.api import PluginDeliveryError, PluginOptions
from emostream.plugins.http import HttpPlugin, HttpPluginOptions
from emostream.schemas.event import EmotionEvent
from pydantic import AnyHttpUrl, Field, SecretStr

TIMESTAMP_HEADER = "X-Emostream-Timestamp"
SIGNATURE_HEADER = "X-Emostream-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300  # receivers reject timestamps further than this from their clock
RETRYABLE_STATUS_CODES = frozenset({429})  # besides every 5xx


class WebhookVerificationError(ValueError):
    """A webhook request failed verification; the message says which check."""


def sign_webhook(secret: str | bytes, *, timestamp_s: int, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp_s`."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}={digest}"


class ReplayGuard:
    """Remembers the signatures verified within the tolerance window; a second sighting is a replay.

    In-memory and per process; a receiver with several replicas should keep the same set in a
    shared store (e.g. Redis `SET sig 1 NX EX tolerance`).
    """

    def __init__(self, *, tolerance_s: int = DEFAULT_TOLERANCE_S, max_entries: int = 100_000) -> None:
        self.tolerance_s = tolerance_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> time it expires

    def check_and_remember(self, signature: str, *, now_s: float) -> None:
        while self._seen and (next(iter(self._seen.values())) < now_s or len(self._seen) > self.max_entries):
            self._seen.popitem(last=False)
        if signature in self._seen:
            raise WebhookVerificationError("replayed request: this signature was already accepted")
        self._seen[signature] = now_s + 2 * self.tolerance_s


def verify_webhook(
    secret: str | bytes,
    *,
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    replay_guard: ReplayGuard | None = None,
    now_s: float | None = None,
) -> int:
    """Check a received webhook; returns its timestamp (Unix s) or raises WebhookVerificationError."""
    now = time.time() if now_s is None else now_s
    if not timestamp_header:
        raise WebhookVerificationError(f"missing {TIMESTAMP_HEADER} header")
    if not signature_header:
        raise WebhookVerificationError(f"missing {SIGNATURE_HEADER} header")
    try:
        timestamp_s = int(timestamp_header)
    except ValueError:
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} {timestamp_header!r} is not whole Unix seconds") from None
    if abs(now - timestamp_s) > tolerance_s:
        raise WebhookVerificationError(
            f"timestamp {timestamp_s} is {now - timestamp_s:+.0f} s from now; tolerance is {tolerance_s} s"
        )
    expected = sign_webhook(secret, timestamp_s=timestamp_s, body=body)
    if not hmac.compare_digest(expected.encode(), signature_header.strip().encode()):
        raise WebhookVerificationError("signature does not match the body and timestamp (wrong secret or altered)")
    if replay_guard is not None:
        replay_guard.check_and_remember(signature_header.strip(), now_s=now)
    return timestamp_s


def webhook_body(event: EmotionEvent, *, delivery_id: str | None = None) -> bytes:
    """The JSON body sent for one event (compact, UTF-8); a fresh `delivery_id` per request."""
    payload = {
        "type": "emotion",
        "delivery_id": delivery_id or uuid.uuid4().hex,
        "idempotency_key": event.idempotency_key,
        "call_id": event.call_id,
        "event": event.model_dump(mode="json"),
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class WebhookOptions(HttpPluginOptions):
    url: AnyHttpUrl = Field(description="where events are POSTed")
    secret: SecretStr = Field(min_length=16, description="HMAC-SHA256 key shared with the receiver (>= 16 chars)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers, e.g. an API key")


class WebhookPlugin(HttpPlugin[WebhookOptions]):
    """POSTs each event, signed, to a URL."""

    Options: ClassVar[type[PluginOptions]] = WebhookOptions
    kind: ClassVar[str] = "webhook"

    def signed_headers(self, body: bytes, event: EmotionEvent, *, timestamp_s: int | None = None) -> dict[str, str]:
        sent_at_s = int(time.time()) if timestamp_s is None else timestamp_s
        secret = self.options.secret.get_secret_value()
        return {
            **self.options.headers,
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(sent_at_s),
            SIGNATURE_HEADER: sign_webhook(secret, timestamp_s=sent_at_s, body=body),
            IDEMPOTENCY_HEADER: event.idempotency_key,
        }

    async def on_emotion(self, event: EmotionEvent) -> None:
        body = webhook_body(event)
        session = self._ensure_session()
        url = str(self.options.url)
        try:
            async with session.post(url, data=body, headers=self.signed_headers(body, event)) as response:
                status = response.status
                if status < 300:
                    return
                detail = (await response.text())[:200]
        except (self._aiohttp.ClientError, TimeoutError) as error:
            raise PluginDeliveryError(
                f"webhook {url}: {type(error).__name__}: {error or 'timed out'}", retryable=True
            ) from error
        retryable = status >= 500 or status in RETRYABLE_STATUS_CODES
        raise PluginDeliveryError(
            f"webhook {url} answered HTTP {status}{' (will retry)' if retryable else ' (not retried)'}: {detail}",
            retryable=retryable,
        )
