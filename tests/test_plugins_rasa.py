"""The Rasa adapter against a local server implementing Rasa's documented HTTP API endpoints
(`POST /conversations/{id}/tracker/events`, `POST /conversations/{id}/trigger_intent`, token auth),
asserting the exact requests."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from emostream.plugins import DeliveryPolicy, PluginConfigError, PluginContext, deliver_with_retries
from emostream.plugins.rasa import RasaPlugin
from emostream.plugins.testing import make_event

TOKEN = "rasa-auth-token"


@dataclass
class FakeRasa:
    url: str = ""
    requests: list[tuple[str, str, dict[str, str], dict]] = field(default_factory=list)  # method, path, query, json
    slots: dict[str, dict[str, object]] = field(default_factory=dict)  # conversation -> slot -> value


@pytest.fixture
async def rasa() -> AsyncIterator[FakeRasa]:
    state = FakeRasa()

    def authorised(request: web.Request) -> None:
        if request.query.get("token") != TOKEN:
            raise web.HTTPUnauthorized(text='{"status":"failure","reason":"NotAuthenticated"}')

    async def tracker_events(request: web.Request) -> web.Response:
        authorised(request)
        body = await request.json()
        state.requests.append((request.method, request.path, dict(request.query), body))
        events = body if isinstance(body, list) else [body]
        conversation = request.match_info["conversation_id"]
        for event in events:
            if event.get("event") != "slot" or "name" not in event:
                raise web.HTTPBadRequest(text='{"reason":"unknown event"}')
            state.slots.setdefault(conversation, {})[event["name"]] = event["value"]
        return web.json_response({"sender_id": conversation, "slots": state.slots[conversation], "events": None})

    async def trigger_intent(request: web.Request) -> web.Response:
        authorised(request)
        body = await request.json()
        state.requests.append((request.method, request.path, dict(request.query), body))
        if "name" not in body:
            raise web.HTTPBadRequest(text='{"reason":"name missing"}')
        return web.json_response({"tracker": {"sender_id": request.match_info["conversation_id"]}, "messages": []})

    app = web.Application()
    app.router.add_post("/conversations/{conversation_id}/tracker/events", tracker_events)
    app.router.add_post("/conversations/{conversation_id}/trigger_intent", trigger_intent)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield state
    await runner.cleanup()


async def _run(plugin: RasaPlugin, events) -> list:
    await plugin.start(PluginContext())
    policy = DeliveryPolicy(timeout_s=2, max_attempts=2, backoff_initial_s=0.01)
    try:
        return [await deliver_with_retries(plugin, event, policy) for event in events]
    finally:
        await plugin.stop()


async def test_sets_slot_and_triggers_intent_once_when_negative_persists(rasa: FakeRasa) -> None:
    plugin = RasaPlugin.from_options(
        {
            "url": rasa.url,
            "token": TOKEN,
            "conversation_id_pattern": r"^bot-(?P<sender>[^:]+):",
            "conversation_id_template": "{sender}",
            "roles": ["user"],
            "trigger_intent": "EXTERNAL_user_upset",
            "trigger_after_segments": 2,
            "output_channel": "latest",
        },
        name="rasa",
    )
    labels = ["neutral", "angry", "angry", "angry", "calm"]
    events = [make_event("bot-7f3a:user", index, label, created_at_ms=1_732_330_000_000 + index) for index, label in enumerate(labels)]
    events.insert(2, make_event("bot-7f3a:bot", 0, "happy"))  # the bot's own voice: ignored
    outcomes = await _run(plugin, events)
    assert all(outcomes)
    slot_path = "/conversations/7f3a/tracker/events"
    expected_slot_query = {"include_events": "NONE", "token": TOKEN}
    assert rasa.requests == [
        ("POST", slot_path, expected_slot_query, {"event": "slot", "name": "user_emotion", "value": "neutral", "timestamp": 1_732_330_000.0}),
        ("POST", slot_path, expected_slot_query, {"event": "slot", "name": "user_emotion", "value": "angry", "timestamp": 1_732_330_000.001}),
        ("POST", slot_path, expected_slot_query, {"event": "slot", "name": "user_emotion", "value": "angry", "timestamp": 1_732_330_000.002}),
        (
            "POST",
            "/conversations/7f3a/trigger_intent",
            {"include_events": "NONE", "output_channel": "latest", "token": TOKEN},
            {"name": "EXTERNAL_user_upset", "entities": {"emotion": "angry"}},
        ),
        ("POST", slot_path, expected_slot_query, {"event": "slot", "name": "user_emotion", "value": "angry", "timestamp": 1_732_330_000.003}),
        ("POST", slot_path, expected_slot_query, {"event": "slot", "name": "user_emotion", "value": "calm", "timestamp": 1_732_330_000.004}),
    ]
    assert rasa.slots == {"7f3a": {"user_emotion": "calm"}}


async def test_default_rule_uses_call_id_and_wrong_token_is_not_retried(rasa: FakeRasa) -> None:
    plugin = RasaPlugin.from_options({"url": rasa.url, "token": TOKEN, "slot_name": "mood"}, name="rasa")
    [outcome] = await _run(plugin, [make_event("call-42:customer", 0, "sad")])
    assert outcome.ok
    assert rasa.requests[0][1] == "/conversations/call-42/tracker/events" and rasa.requests[0][3]["name"] == "mood"

    wrong = RasaPlugin.from_options({"url": rasa.url, "token": "nope"}, name="rasa")
    [outcome] = await _run(wrong, [make_event("call-42:customer", 1, "sad")])
    assert not outcome.ok and outcome.attempts == 1 and "HTTP 401" in outcome.error


async def test_stream_not_matching_the_rule_is_a_clear_error(rasa: FakeRasa) -> None:
    plugin = RasaPlugin.from_options({"url": rasa.url, "token": TOKEN, "conversation_id_pattern": r"^bot-(?P<sender>\w+)", "conversation_id_template": "{sender}"}, name="rasa")
    [outcome] = await _run(plugin, [make_event("call-1:customer", 0, "sad")])
    assert not outcome.ok and outcome.attempts == 1
    assert "stream 'call-1:customer' does not match conversation_id_pattern" in outcome.error
    with pytest.raises(PluginConfigError, match=r"plugin 'rasa' .*option 'conversation_id_pattern'.*regular expression"):
        RasaPlugin.from_options({"url": rasa.url, "conversation_id_pattern": "(unclosed"}, name="rasa")
