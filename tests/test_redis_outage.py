"""Redis outage: results keep flowing to the results topic; cache writes resume when Redis returns."""

import json
import urllib.request

import pytest
import redis
import soundfile as sf
from emostream.schemas.event import EmotionEvent
from emostream.workers.producer import make_audio_producer
from emostream.workers.result_store import result_key

from tests._workers_helpers import require_model, send_chunks, wait_for


def _health(worker) -> dict:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=5
    ) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_results_flow_during_a_redis_outage_and_cache_writes_resume(
    make_stack_settings, restartable_redis, spawn_worker, read_topic, speech_fixture
):
    settings = make_stack_settings(redis_url=restartable_redis.url, redis={"retry_interval_s": 0.5})
    require_model(settings)
    spawn_worker("vad", settings)
    inference = spawn_worker("inference", settings)
    samples, _ = sf.read(speech_fixture.path, dtype="int16")
    segments = len(speech_fixture.utterances)
    producer = make_audio_producer(settings)
    prefix = settings.redis.key_prefix

    def in_redis(stream_id: str) -> bool:
        client = redis.Redis.from_url(restartable_redis.url, socket_timeout=2)
        try:
            return all(client.exists(result_key(prefix, stream_id, i)) for i in range(segments))
        finally:
            client.close()

    def on_topic(stream_id: str) -> list[EmotionEvent]:
        records = read_topic(
            settings,
            settings.topics.emotions,
            stream_id=stream_id,
            min_records=segments,
            timeout_s=2,
        )
        return [EmotionEvent.model_validate_json(r.value) for r in records]

    send_chunks(producer, topic=settings.topics.audio, stream_id="before:user", samples=samples)
    wait_for(lambda: in_redis("before:user"), timeout_s=40, what="results before the outage")

    restartable_redis.stop()
    send_chunks(producer, topic=settings.topics.audio, stream_id="during:user", samples=samples)
    during = wait_for(
        lambda: len(on_topic("during:user")) >= segments and on_topic("during:user"),
        timeout_s=40,
        what="results on the topic while Redis is down",
    )
    assert sorted(e.segment_index for e in during) == list(range(segments))
    assert _health(inference)["status"] == "degraded"

    restartable_redis.start()  # same port, empty (memory only)
    send_chunks(producer, topic=settings.topics.audio, stream_id="after:user", samples=samples)
    wait_for(lambda: in_redis("after:user"), timeout_s=40, what="cache writes after Redis returned")
    # what was produced during the outage was kept and written when Redis came back
    wait_for(lambda: in_redis("during:user"), timeout_s=10, what="the outage backlog in Redis")
    wait_for(lambda: _health(inference)["status"] == "ok", timeout_s=10, what="healthz ok again")
