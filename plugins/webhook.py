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
constant time, rejects timestamps outside a tolerance window, and rejects a request seen before.
The replay guard is on by default: a process-wide in-memory `ReplayGuard`; a receiver with several
replicas passes a `RedisReplayGuard` (shared: `SET <prefix>:webhook-replay:<signature> NX EX <s>`,
the TTL being how long the signature stays acceptable). Neither guard ever forgets a signature
before its timestamp leaves the tolerance window: a full in-memory guard rejects (answer 503, the
sender retries with a new signature) rather than evict one.

Signature test vector (implement it in any language and compare):
    secret    `whsec_test_0123456789abcdef`
    timestamp `1700000000`
    body      `{"type":"emotion","delivery_id":"d1"}` (those exact bytes)
    signed    `1700000000.{"type":"emotion","delivery_id":"d1"}`
    header    `X-Emostream-Signature: v1=` + hex HMAC-SHA256(secret, signed)
              = `SIGNATURE_TEST_VECTOR` below. A retry is re-signed with a fresh timestamp, so deduplicate deliveries (as
opposed to replays) on `Idempotency-Key`.

Failures: a 5xx (and 429), a timeout or a connection error are retryable (the runner retries
with backoff); any other 4xx is not (the request is wrong, retrying cannot help) and the event goes
to the dead-letter topic at once.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import time
import uuid
from typing import Any, ClassVar, Protocol

from emostream.plugins.api import PluginDeliveryError, PluginOptions
from emostream.plugins.http import HttpPlugin, HttpPluginOptions
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redaction import redact_text, redact_url
from emostream.schemas.redis_keys import webhook_replay_key
from pydantic import AnyHttpUrl, Field, SecretStr

TIMESTAMP_HEADER = "X-Emostream-Timestamp"
SIGNATURE_HEADER = "X-Emostream-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300  # receivers reject timestamps further than this from their clock
RETRYABLE_STATUS_CODES = frozenset({429})  # besides every 5xx
# The known answer of the module docstring's test vector (checked with `openssl dgst -sha256 -hmac`).
SIGNATURE_TEST_VECTOR = "v1=e908905e3d85a0ef72d8c45fabe9256225d47d402ea4698a83ac6dd80f86b40f"


class WebhookVerificationError(ValueError):
    """A webhook request failed verification; the message says which check."""


def sign_webhook(secret: str | bytes, *, timestamp_s: int, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp_s`."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}={digest}"


class ReplayGuardT(Protocol):
    def check_and_remember(self, signature: str, *, expires_at_s: float, now_s: float) -> None:
        """Raise WebhookVerificationError if `signature` was accepted before; else remember it
        until `expires_at_s` (Unix s: when its timestamp leaves the tolerance window)."""
        ...


class ReplayGuard:
    """In-memory replay guard of one process: a signature is remembered until it could no longer
    verify anyway, and never evicted before: when `max_entries` unexpired signatures are held, a new
    request is rejected (the receiver answers 503 and the sender retries) instead."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}  # signature -> Unix s it can be forgotten
        self._order: list[tuple[float, str]] = []  # heap of (expiry, signature)

    def check_and_remember(self, signature: str, *, expires_at_s: float, now_s: float) -> None:
        while self._order and self._order[0][0] <= now_s:
            expiry, old = heapq.heappop(self._order)
            if self._expiry.get(old) == expiry:
                del self._expiry[old]
        if signature in self._expiry:
            raise WebhookVerificationError("replayed request: this signature was already accepted")
        if len(self._expiry) >= self.max_entries:
            raise WebhookVerificationError(
                f"replay guard full ({self.max_entries} signatures within the tolerance window); "
                "answer 503 so the sender retries"
            )
        self._expiry[signature] = expires_at_s
        heapq.heappush(self._order, (expires_at_s, signature))


class RedisReplayGuard:
    """Replay guard shared by every replica of a receiver: `SET key 1 NX EX ttl` in Redis (a sync
    `redis.Redis` client). Redis expires the key only when the signature could no longer verify."""

    def __init__(self, redis: Any, *, key_prefix: str = "emo:v1") -> None:
        self.redis = redis
        self.key_prefix = key_prefix

    def check_and_remember(self, signature: str, *, expires_at_s: float, now_s: float) -> None:
        ttl_s = max(1, math.ceil(expires_at_s - now_s))
        stored = self.redis.set(webhook_replay_key(self.key_prefix, signature), 1, nx=True, ex=ttl_s)
        if not stored:
            raise WebhookVerificationError("replayed request: this signature was already accepted")


PROCESS_REPLAY_GUARD = ReplayGuard()  # verify_webhook's default: the guard is on unless told off


def verify_webhook(
    secret: str | bytes,
    *,
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    replay_guard: ReplayGuardT | None = PROCESS_REPLAY_GUARD,
    now_s: float | None = None,
) -> int:
    """Check a received webhook; returns its timestamp (Unix s) or raises WebhookVerificationError.

    `replay_guard`: the process-wide in-memory guard by default; a `RedisReplayGuard` for several
    replicas; `None` turns replay protection off (only if something else provides it)."""
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
        replay_guard.check_and_remember(
            signature_header.strip(), expires_at_s=timestamp_s + tolerance_s, now_s=now
        )
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
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="extra request headers, e.g. an API key; secrets: never logged or printed",
    )


class WebhookPlugin(HttpPlugin[WebhookOptions]):
    """POSTs each event, signed, to a URL."""

    Options: ClassVar[type[PluginOptions]] = WebhookOptions
    kind: ClassVar[str] = "webhook"

    def signed_headers(self, body: bytes, event: EmotionEvent, *, timestamp_s: int | None = None) -> dict[str, str]:
        sent_at_s = int(time.time()) if timestamp_s is None else timestamp_s
        secret = self.options.secret.get_secret_value()
        return {
            **{name: value.get_secret_value() for name, value in self.options.headers.items()},
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(sent_at_s),
            SIGNATURE_HEADER: sign_webhook(secret, timestamp_s=sent_at_s, body=body),
            IDEMPOTENCY_HEADER: event.idempotency_key,
        }

    def _secrets(self) -> list[str]:
        """The secret and the extra header values: never in an error, a log or a dead letter."""
        values = [value.get_secret_value() for value in self.options.headers.values()]
        return [self.options.secret.get_secret_value(), *values]

    async def on_emotion(self, event: EmotionEvent) -> None:
        body = webhook_body(event)
        session = self._ensure_session()
        url = str(self.options.url)
        shown = redact_url(url)  # error messages end up in logs and dead letters
        try:
            async with session.post(url, data=body, headers=self.signed_headers(body, event)) as response:
                status = response.status
                if status < 300:
                    return
                detail = (await response.text())[:200]
        except (self._aiohttp.ClientError, TimeoutError) as error:
            raise PluginDeliveryError(
                f"webhook {shown}: {type(error).__name__}: {redact_text(str(error), url, secrets=self._secrets()) or 'timed out'}",
                retryable=True,
            ) from error
        retryable = status >= 500 or status in RETRYABLE_STATUS_CODES
        raise PluginDeliveryError(
            f"webhook {shown} answered HTTP {status}{' (will retry)' if retryable else ' (not retried)'}: "
            f"{redact_text(detail, secrets=self._secrets())}",
            retryable=retryable,
        )
