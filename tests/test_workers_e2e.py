"""End to end: real speech streamed through Kafka arrives as results in Redis and on the results
topic, with segment times that match where the speech is."""

import json
import threading
import urllib.request

import numpy as np
import pytest
import redis
import soundfile as sf
import soxr
from emostream.schemas.audio import AudioEncoding
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import events_key, latest_key, result_key, results_channel
from emostream.workers.cli.clients.producer import make_audio_producer

from tests._workers_helpers import (
    metric_value,
    require_model,
    segment_headers,
    send_chunks,
    wait_for,
)

START_TOLERANCE_MS = 300  # onset window + padding before the first voiced frame
END_TOLERANCE_MS = 300  # padding kept after the last voiced frame


@pytest.mark.slow
def test_speech_streams_become_results_in_redis_and_on_the_topic(
    stack_settings, spawn_worker, read_topic, speech_fixture
):
    settings = stack_settings
    require_model(settings)
    spawn_worker("vad", settings)
    inference = spawn_worker("inference", settings)
    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    pubsub = client.pubsub()
    pubsub.subscribe(results_channel(prefix))
    notices: list[dict] = []
    stop_listening = threading.Event()

    def listen() -> None:
        while not stop_listening.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                notices.append(json.loads(message["data"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    samples, rate_hz = sf.read(speech_fixture.path, dtype="int16")
    narrowband = soxr.resample(samples, rate_hz, 8_000).astype(np.int16)
    streams = {
        "call-7:customer": {
            "samples": samples,
            "sample_rate_hz": 16_000,
            "encoding": AudioEncoding.S16LE,
            "chunk_ms": 20,
        },
        "call-7:agent": {
            "samples": narrowband,
            "sample_rate_hz": 8_000,
            "encoding": AudioEncoding.MULAW,
            "chunk_ms": 20,
        },
        "call-8:user": {
            "samples": soxr.resample(samples, rate_hz, 44_100).astype(np.int16),
            "sample_rate_hz": 44_100,
            "encoding": AudioEncoding.S16LE,
            "chunk_ms": 100,
        },
        "call-9:user": {
            "samples": narrowband,
            "sample_rate_hz": 8_000,
            "encoding": AudioEncoding.ALAW,
            "chunk_ms": 60,
        },
    }
    producer = make_audio_producer(settings)
    for stream_id, stream in streams.items():
        send_chunks(producer, topic=settings.topics.audio, stream_id=stream_id, **stream)
    utterances = speech_fixture.utterances

    def stored() -> bool:
        return all(client.exists(result_key(prefix, s, len(utterances) - 1)) for s in streams)

    wait_for(stored, timeout_s=60, what="results in Redis")
    for stream_id in streams:
        events = [
            EmotionEvent.model_validate_json(client.get(result_key(prefix, stream_id, i)))
            for i in range(len(utterances))
        ]
        assert not client.exists(result_key(prefix, stream_id, len(utterances))), (
            "one segment per utterance"
        )
        for event, utterance in zip(events, utterances):
            assert abs(event.start_ms - utterance.start_ms) <= START_TOLERANCE_MS, (
                stream_id,
                event.start_ms,
                utterance,
            )
            assert abs(event.end_ms - utterance.end_ms) <= END_TOLERANCE_MS, (
                stream_id,
                event.end_ms,
                utterance,
            )
            assert abs(sum(event.scores.values()) - 1.0) < 1e-3 and event.label in event.scores
            assert event.model_name and event.model_version
            assert event.latency.inference_ms is not None and event.latency.total_ms is not None
        latest = EmotionEvent.model_validate_json(client.get(latest_key(prefix, stream_id)))
        assert latest.segment_index == len(utterances) - 1
        log = client.xrange(events_key(prefix, stream_id))
        assert [
            EmotionEvent.model_validate_json(fields[b"event"]).segment_index for _, fields in log
        ] == [0, 1, 2]
        assert client.ttl(result_key(prefix, stream_id, 0)) > 0

    # the results topic: one record per segment, keyed by stream id
    records = read_topic(
        settings, settings.topics.emotions, min_records=len(streams) * len(utterances), timeout_s=20
    )
    on_topic = [EmotionEvent.model_validate_json(r.value) for r in records]
    assert sorted((e.stream_id, e.segment_index) for e in on_topic) == sorted(
        (s, i) for s in streams for i in range(len(utterances))
    )
    assert all(
        r.key.decode() == EmotionEvent.model_validate_json(r.value).stream_id for r in records
    )
    wait_for(
        lambda: len(notices) >= len(streams) * len(utterances), timeout_s=10, what="pub/sub notices"
    )
    stop_listening.set()
    listener.join()
    pubsub.close()
    assert {(n["stream_id"], n["segment_index"]) for n in notices} == {
        (s, i) for s in streams for i in range(len(utterances))
    }

    # a replayed segment (e.g. after an upstream crash) is a cache hit, not a second inference
    segments = read_topic(
        settings, settings.topics.segments, min_records=len(streams) * len(utterances), timeout_s=10
    )
    assert {h.stream_id for h in segment_headers(segments)} == set(streams)
    inferred_before = metric_value(inference, "emostream_results_total", outcome="inferred")
    for record in segments[:3]:
        producer.send(
            settings.topics.segments, key=record.key, value=record.value, headers=record.headers
        )
    producer.flush()
    wait_for(
        lambda: metric_value(inference, "emostream_results_total", outcome="cache_hit") >= 3,
        timeout_s=20,
        what="cache hits",
    )
    assert metric_value(inference, "emostream_results_total", outcome="inferred") == inferred_before
    assert len(
        read_topic(settings, settings.topics.emotions, min_records=len(on_topic) + 1, timeout_s=3)
    ) == len(on_topic)

    # observability: /healthz and the Prometheus counters
    with urllib.request.urlopen(
        f"http://127.0.0.1:{inference.metrics_port}/healthz", timeout=5
    ) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["stage"] == "inference"
    assert metric_value(inference, "emostream_batch_size_count") >= 1
