"""The webhook adapter against a real aiohttp server on loopback: signatures verify, replays are
rejected, 5xx and timeouts are retried with backoff, 4xx is not."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import ClientSession, web
from emostream.plugins import DeliveryPolicy, deliver_with_retries
from emostream.plugins.api import PluginContext
from emostream.plugins.testing import make_event
from emostream.plugins.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayGuard,
    WebhookOptions,
    WebhookPlugin,
    WebhookVerificationError,
    sign_webhook,
    verify_webhook,
)
from emostream.schemas.settings import Settings

SECRET = "a-shared-secret-of-32-characters"
POLICY = DeliveryPolicy(timeout_s=2.0, max_attempts=4, backoff_initial_s=0.05, backoff_max_s=0.2)


@dataclass
class Receiver:
    """A webhook receiver as a customer would write it: verify, reject replays, then answer."""

    url: str
    answers: list[int | float] = field(default_factory=list)  # status codes, or a float = hang this long
    accepted: list[dict] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    attempts: int = 0
    raw_requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="")

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        state.attempts += 1
        state.raw_requests.append((dict(request.headers), body))
        try:
            verify_webhook(
                SECRET,
                body=body,
                timestamp_header=request.headers.get(TIMESTAMP_HEADER),
                signature_header=request.headers.get(SIGNATURE_HEADER),
            )  # the replay guard is on by default
        except WebhookVerificationError as error:
            state.rejected.append(str(error))
            return web.Response(status=401, text=str(error))
        if state.answers:
            answer = state.answers.pop(0)
            if isinstance(answer, float):
                await asyncio.sleep(answer)
            elif answer >= 300:
                return web.Response(status=answer, text=f"answer {answer}")
        state.accepted.append(json.loads(body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


def _plugin(url: str, **options) -> WebhookPlugin:
    return WebhookPlugin.from_options({"url": url, "secret": SECRET, **options}, name="crm")


async def _deliver(plugin: WebhookPlugin, event, policy: DeliveryPolicy = POLICY):
    from emostream.plugins import PluginContext

    await plugin.start(PluginContext())
    try:
        return await deliver_with_retries(plugin, event, policy)
    finally:
        await plugin.stop()


async def test_signed_event_is_accepted_with_idempotency_key(receiver: Receiver) -> None:
    event = make_event("call-9:customer", 3, "angry", transcript="this is the third time I call")
    outcome = await _deliver(_plugin(receiver.url), event)
    assert outcome.ok and outcome.attempts == 1
    assert receiver.rejected == []
    [payload] = receiver.accepted
    assert payload["idempotency_key"] == event.idempotency_key and payload["call_id"] == "call-9"
    assert payload["event"]["label"] == "angry" and payload["event"]["transcript"] == "this is the third time I call"
    headers, _ = receiver.raw_requests[0]
    assert headers[IDEMPOTENCY_HEADER] == event.idempotency_key
    assert headers["Content-Type"] == "application/json"
    assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 5


async def test_replayed_request_and_wrong_secret_are_rejected(receiver: Receiver) -> None:
    await _deliver(_plugin(receiver.url), make_event("call-9:customer", 0, "calm"))
    headers, body = receiver.raw_requests[0]
    replay_headers = {name: headers[name] for name in (TIMESTAMP_HEADER, SIGNATURE_HEADER, "Content-Type")}
    async with ClientSession() as session:
        async with session.post(receiver.url, data=body, headers=replay_headers) as response:
            assert response.status == 401
        tampered = body.replace(b'"calm"', b'"happy"')
        async with session.post(receiver.url, data=tampered, headers=replay_headers) as response:
            assert response.status == 401
    assert receiver.rejected[0].startswith("replayed request")
    assert "signature does not match" in receiver.rejected[1]

    wrong = WebhookPlugin.from_options({"url": receiver.url, "secret": "another-secret-of-enough-length"}, name="crm")
    outcome = await _deliver(wrong, make_event("call-9:customer", 1, "calm"))
    assert not outcome.ok and outcome.attempts == 1  # 401 is not retried
    assert "HTTP 401" in outcome.error and "not retried" in outcome.error
    assert len(receiver.accepted) == 1


async def test_5xx_and_timeouts_are_retried_with_backoff(receiver: Receiver) -> None:
    receiver.answers = [503, 500, 1.5]  # two server errors, then a hang longer than the request timeout
    plugin = _plugin(receiver.url, request_timeout_s=0.3)
    started = time.monotonic()
    outcome = await _deliver(plugin, make_event("call-9:customer", 2, "sad"))
    elapsed_s = time.monotonic() - started
    assert outcome.ok and outcome.attempts == 4
    assert receiver.attempts == 4 and len(receiver.accepted) == 1
    assert receiver.rejected == []  # every retry is re-signed with a fresh, valid signature
    keys = {headers[IDEMPOTENCY_HEADER] for headers, _ in receiver.raw_requests}
    assert len(keys) == 1  # ...and carries the same idempotency key
    assert 0.05 + 0.1 + 0.2 + 0.3 <= elapsed_s  # the backoffs and the timed-out request were waited


async def test_4xx_is_not_retried(receiver: Receiver) -> None:
    receiver.answers = [422]
    outcome = await _deliver(_plugin(receiver.url), make_event("call-9:customer", 5, "sad"))
    assert not outcome.ok and outcome.attempts == 1 and receiver.attempts == 1
    assert "plugin 'crm'" in outcome.error and "HTTP 422" in outcome.error


async def test_unreachable_receiver_is_retried_then_given_up() -> None:
    outcome = await _deliver(
        _plugin("http://127.0.0.1:9/hook"),
        make_event("call-9:customer", 6, "sad"),
        DeliveryPolicy(timeout_s=1.0, max_attempts=3, backoff_initial_s=0.01),
    )
    assert not outcome.ok and outcome.attempts == 3 and "ClientConnectorError" in outcome.error


def test_verifier_checks_tolerance_and_headers() -> None:
    body = b'{"type":"emotion"}'
    now_s = 1_800_000_000
    signature = sign_webhook(SECRET, timestamp_s=now_s, body=body)
    assert verify_webhook(SECRET, body=body, timestamp_header=str(now_s), signature_header=signature, now_s=now_s + 10) == now_s
    with pytest.raises(WebhookVerificationError, match="tolerance is 300 s"):
        verify_webhook(SECRET, body=body, timestamp_header=str(now_s), signature_header=signature, now_s=now_s + 301)
    with pytest.raises(WebhookVerificationError, match=f"missing {SIGNATURE_HEADER}"):
        verify_webhook(SECRET, body=body, timestamp_header=str(now_s), signature_header=None, now_s=now_s)
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        verify_webhook(SECRET, body=body, timestamp_header=str(now_s + 1), signature_header=signature, now_s=now_s)


def test_signature_known_answer_vector() -> None:
    """The vector of the module docstring, for receivers written in other languages (the expected
    value was also computed with `openssl dgst -sha256 -hmac`)."""
    from emostream.plugins.webhook import SIGNATURE_TEST_VECTOR

    body = b'{"type":"emotion","delivery_id":"d1"}'
    signature = sign_webhook("whsec_test_0123456789abcdef", timestamp_s=1_700_000_000, body=body)
    assert signature == SIGNATURE_TEST_VECTOR
    assert signature == "v1=e908905e3d85a0ef72d8c45fabe9256225d47d402ea4698a83ac6dd80f86b40f"


def test_replay_guard_in_redis_is_shared_by_replicas_and_expires_with_the_window(redis_url) -> None:
    import redis as redis_py
    from emostream.plugins.webhook import RedisReplayGuard

    client = redis_py.Redis.from_url(redis_url)
    prefix = f"test-{time.monotonic_ns()}"
    replica_a = RedisReplayGuard(client, key_prefix=prefix)
    replica_b = RedisReplayGuard(redis_py.Redis.from_url(redis_url), key_prefix=prefix)
    now_s = int(time.time())
    body = b'{"type":"emotion","delivery_id":"shared"}'
    signature = sign_webhook(SECRET, timestamp_s=now_s, body=body)
    check = {"body": body, "timestamp_header": str(now_s), "signature_header": signature, "now_s": now_s}
    assert verify_webhook(SECRET, replay_guard=replica_a, **check) == now_s
    with pytest.raises(WebhookVerificationError, match="replayed"):
        verify_webhook(SECRET, replay_guard=replica_b, **check)  # another replica sees it too
    key = f"{prefix}:webhook-replay:{signature}"
    assert 0 < client.ttl(key) <= 300  # kept exactly while the timestamp can still verify


def test_in_memory_replay_guard_rejects_when_full_instead_of_forgetting() -> None:
    guard = ReplayGuard(max_entries=2)
    now_s = 1_000.0
    guard.check_and_remember("a", expires_at_s=now_s + 300, now_s=now_s)
    guard.check_and_remember("b", expires_at_s=now_s + 300, now_s=now_s)
    with pytest.raises(WebhookVerificationError, match="full"):
        guard.check_and_remember("c", expires_at_s=now_s + 300, now_s=now_s)
    with pytest.raises(WebhookVerificationError, match="replayed"):
        guard.check_and_remember("a", expires_at_s=now_s + 300, now_s=now_s + 1)  # still known
    guard.check_and_remember("c", expires_at_s=now_s + 900, now_s=now_s + 301)  # a, b expired


async def test_errors_never_show_the_secret_token_or_extra_headers(receiver: Receiver) -> None:
    from emostream.plugins.api import PluginDeliveryError

    receiver.answers = [500]
    url = receiver.url.replace("://", "://hookuser:hookpass@", 1) + "?token=tok-123"
    plugin = WebhookPlugin(
        WebhookOptions(url=url, secret=SECRET, headers={"X-Api-Key": "key-456"}), name="hook"
    )
    await plugin.start(PluginContext(settings=Settings()))
    try:
        with pytest.raises(PluginDeliveryError) as raised:
            await plugin.on_emotion(make_event("call-9:customer", 0, "angry"))
    finally:
        await plugin.stop()
    message = str(raised.value)
    assert "HTTP 500" in message
    for secret in ("hookpass", "tok-123", "key-456", SECRET):
        assert secret not in message, message
    assert "hookuser:***@" in message and "token=***" in message
    assert "key-456" not in repr(plugin.options) and "key-456" not in plugin.options.model_dump_json()
