"""Call-centre analytics: the escalation rule, share of time, alerts on the alerts topic and in
Redis, and `emostream report` — first on events built here (exact rule edges), then on real results
of speech streamed through the pipeline (vad + inference + plugins workers)."""

import json
import time

import numpy as np
import pytest
import redis
import soundfile as sf
from emostream.plugins import PluginContext
from emostream.plugins.analytics import (
    AnalyticsOptions,
    AnalyticsPlugin,
    EscalationAlert,
    find_escalations,
    load_call_summary,
    share_of_time,
    timeline_segment,
)
from emostream.plugins.connections import async_redis_client
from emostream.plugins.testing import make_event, make_scores
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import call_key
from emostream.schemas.settings import Settings
from emostream.workers.cli.clients.producer import make_audio_producer
from emostream.workers.stack.settings_env import settings_to_env

from tests._workers_helpers import send_chunks, wait_for


def _angry(stream: str, index: int, angry_score: float) -> EmotionEvent:
    label = "angry" if angry_score >= 0.5 else "neutral"
    scores = make_scores("angry", angry_score) if label == "angry" else {**make_scores("neutral", 1 - angry_score - 0.01), "angry": angry_score}
    total = sum(scores.values())
    return make_event(stream, index, label, scores={k: v / total for k, v in scores.items()})


def test_escalation_rule_edges() -> None:
    options = AnalyticsOptions(score_threshold=0.6, consecutive_segments=3)
    customer = "call-3:customer"
    scores = [0.9, 0.9, 0.2, 0.9, 0.9, 0.9, 0.9, 0.1, 0.9, 0.9]
    segments = [timeline_segment(_angry(customer, i, s)) for i, s in enumerate(scores)]
    segments += [timeline_segment(_angry("call-3:agent", i, 0.95)) for i in range(5)]
    segments += [timeline_segment(_angry(customer, i, 0.9)) for i in (20, 21, 23)]  # 22 missing
    alerts = find_escalations("call-3", segments, options, now_ms=1)
    assert [(a.stream_id, a.first_segment_index, a.last_segment_index) for a in alerts] == [(customer, 3, 5)]
    assert alerts[0].alert_id == f"{customer}/escalation/3" and alerts[0].labels == ["angry"] * 3
    fearful = AnalyticsOptions(alert_labels=["fearful"], consecutive_segments=1)
    assert find_escalations("call-3", segments, fearful) == []


def test_share_of_time_weights_by_duration() -> None:
    events = [
        make_event("c:customer", 0, "angry", start_ms=0, end_ms=3_000),
        make_event("c:customer", 1, "calm", start_ms=4_000, end_ms=5_000),
    ]
    shares = share_of_time(timeline_segment(e) for e in events)
    assert shares == pytest.approx({"angry": 0.75, "calm": 0.25})


async def test_plugin_keeps_call_in_redis_and_publishes_each_alert_once(stack_settings: Settings, read_topic) -> None:
    plugin = AnalyticsPlugin.from_options({"score_threshold": 0.6, "consecutive_segments": 3}, name="analytics")
    customer, agent = "call-4:customer", "call-4:agent"
    events = [_angry(customer, i, s) for i, s in enumerate([0.9, 0.2, 0.9, 0.9, 0.9, 0.9])]
    events += [_angry(agent, i, 0.95) for i in range(4)]
    redis_client = async_redis_client(stack_settings.redis)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(f"{stack_settings.redis.key_prefix}:alerts")
    await plugin.start(PluginContext(settings=stack_settings))
    try:
        for event in events + events[:5]:  # the first five again: a replay after a crash
            await plugin.deliver(event)
    finally:
        await plugin.stop()

    summary = await load_call_summary(redis_client, stack_settings.redis.key_prefix, "call-4")
    assert summary is not None and summary.segments == 10
    assert [(a.stream_id, a.first_segment_index) for a in summary.alerts] == [(customer, 2)]
    by_stream = {s.stream_id: s for s in summary.streams}
    assert by_stream[customer].share_of_time == pytest.approx({"angry": 5 / 6, "neutral": 1 / 6})
    assert by_stream[agent].share_of_time == {"angry": 1.0}
    stored = json.loads(await redis_client.get(call_key(stack_settings.redis.key_prefix, "call-4", "summary")))
    assert stored["segments"] == 10 and len(stored["alerts"]) == 1
    assert 0 < await redis_client.ttl(call_key(stack_settings.redis.key_prefix, "call-4", "timeline")) <= 7 * 86_400
    notice = None
    for _ in range(20):  # the first message read is the subscribe confirmation (ignored -> None)
        notice = notice or await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
    assert notice is not None and EscalationAlert.model_validate_json(notice["data"]).first_segment_index == 2
    await pubsub.aclose()
    await redis_client.aclose()

    records = read_topic(stack_settings, stack_settings.topics.alerts, min_records=1, timeout_s=10)
    assert len(records) == 1 and records[0].key == customer.encode()
    alert = EscalationAlert.model_validate_json(records[0].value)
    assert (alert.call_id, alert.first_segment_index, alert.last_segment_index) == ("call-4", 2, 4)
    assert "angry or fearful >= 0.6 for 3 consecutive customer segments" == alert.rule


def _model_for_pipeline(tmp_path) -> str:
    from emostream.model.registry import UnknownModelError, resolve

    default = Settings().inference.model
    try:
        resolve(default)
        return default
    except UnknownModelError:
        from emostream.plugins.testing import RAVDESS_LABELS

        from tests._model_helpers import write_checkpoint

        folder = tmp_path / "plb-test"
        write_checkpoint(folder, list(RAVDESS_LABELS))
        return str(folder)


@pytest.mark.slow
def test_escalation_on_real_results_from_streamed_speech(
    make_stack_settings, spawn_worker, read_topic, speech_fixture, emostream_cli, tmp_path
) -> None:
    """Speech -> vad -> inference -> emotions topic -> plugin worker (analytics) -> Redis + alerts topic.

    The model's labels on real speech are not known in advance, so the rule is set from the real
    results: the alert labels are those the model gave the customer's segments, at a threshold every
    one of them reaches. The customer's 6 consecutive segments must then raise exactly one alert
    (segments 0-2); the agent (same audio, not a watched role) none.

    Model: the shipped default when it is installed, else a small PLB checkpoint written here
    (untrained weights, RAVDESS labels): real features and inference on real speech either way.
    """
    settings = make_stack_settings(inference={"model": _model_for_pipeline(tmp_path)})
    stack_env = settings_to_env(settings)
    spawn_worker("vad", settings)
    spawn_worker("inference", settings)
    samples, rate_hz = sf.read(speech_fixture.path, dtype="int16")
    per_stream = len(speech_fixture.utterances)
    producer = make_audio_producer(settings)
    send_chunks(producer, topic=settings.topics.audio, stream_id="call-5:customer", samples=np.concatenate([samples, samples]),
                sample_rate_hz=rate_hz)
    send_chunks(producer, topic=settings.topics.audio, stream_id="call-5:agent", samples=samples, sample_rate_hz=rate_hz)
    records = read_topic(settings, settings.topics.emotions, min_records=3 * per_stream, timeout_s=90)
    events = [EmotionEvent.model_validate_json(record.value) for record in records]
    customer = sorted((e for e in events if e.stream_id == "call-5:customer"), key=lambda e: e.segment_index)
    assert [e.segment_index for e in customer] == list(range(2 * per_stream))
    alert_labels = sorted({e.label for e in customer})
    threshold = min(max(e.scores[label] for label in alert_labels) for e in customer)

    config = [{"type": "analytics", "options": {"alert_labels": alert_labels, "score_threshold": round(threshold - 1e-6, 6),
                                                 "consecutive_segments": 3}}]
    started_s = time.monotonic()
    spawn_worker("plugins", settings, env={"EMOSTREAM_PLUGINS__CONFIG_JSON": json.dumps(config)})
    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    wait_for(lambda: client.hlen(call_key(prefix, "call-5", "timeline")) == len(events), timeout_s=60,
             what="every segment in the call's timeline")
    alerts = [EscalationAlert.model_validate_json(v) for v in client.hgetall(call_key(prefix, "call-5", "alerts")).values()]
    assert [(a.stream_id, a.first_segment_index, a.last_segment_index) for a in alerts] == [("call-5:customer", 0, 2)]
    on_topic = read_topic(settings, settings.topics.alerts, min_records=1, timeout_s=20)
    assert [EscalationAlert.model_validate_json(r.value).alert_id for r in on_topic] == [alerts[0].alert_id]
    print(f"analytics of {len(events)} real results in Redis {time.monotonic() - started_s:.1f} s after the plugin worker started")

    # emostream report: text, JSON and the timeline plot
    text = emostream_cli.run("report", "call-5", env=stack_env)
    assert text.returncode == 0, text.stderr
    assert f"call call-5: {len(events)} segments" in text.stdout and "alerts (1):" in text.stdout
    assert "call-5:agent (agent)" in text.stdout and "call-5:customer (customer)" in text.stdout
    plot = tmp_path / "call-5.png"
    as_json = emostream_cli.run("report", "call-5", "--json", "--plot", str(plot), env=stack_env)
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["segments"] == len(events) and len(summary["timeline"]) == len(events)
    assert sum(summary["share_of_time"].values()) == pytest.approx(1.0)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    missing = emostream_cli.run("report", "no-such-call", env=stack_env)
    assert missing.returncode == 1 and "no call 'no-such-call'" in missing.stderr
