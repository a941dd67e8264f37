"""Redis outage: results keep flowing to the results topic; cache writes resume when Redis returns."""

import asyncio
import json
import urllib.request

import pytest
import redis
import soundfile as sf
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import result_key
from emostream.workers.cli.clients.producer import make_audio_producer

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
    vad = spawn_worker("vad", settings)
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

    def on_topic(stream_id: str, min_records: int = segments) -> list[EmotionEvent]:
        records = read_topic(
            settings,
            settings.topics.emotions,
            stream_id=stream_id,
            min_records=min_records,
            timeout_s=2,
        )
        return [EmotionEvent.model_validate_json(r.value) for r in records]

    send_chunks(producer, topic=settings.topics.audio, stream_id="before:user", samples=samples)
    wait_for(lambda: in_redis("before:user"), timeout_s=40, what="results before the outage")

    restartable_redis.stop()
    send_chunks(producer, topic=settings.topics.audio, stream_id="during:user", samples=samples)
    # a stream first seen mid-way (seq > 0) cannot be resumed without its checkpoint: it must wait
    chunk_count = len(samples) // 320
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id="resumed:user",
        samples=samples,
        seqs=list(range(3, chunk_count)),
    )
    during = wait_for(
        lambda: len(on_topic("during:user")) >= segments and on_topic("during:user"),
        timeout_s=40,
        what="results on the topic while Redis is down",
    )
    assert sorted(e.segment_index for e in during) == list(range(segments))
    assert _health(inference)["status"] == "degraded"
    assert _health(vad)["streams_waiting_for_redis"] == 1
    assert on_topic("resumed:user", min_records=0) == []

    restartable_redis.start()  # same port, empty (memory only)
    send_chunks(producer, topic=settings.topics.audio, stream_id="after:user", samples=samples)
    wait_for(lambda: in_redis("after:user"), timeout_s=40, what="cache writes after Redis returned")
    # what was produced during the outage was kept and written when Redis came back
    wait_for(lambda: in_redis("during:user"), timeout_s=10, what="the outage backlog in Redis")
    wait_for(lambda: _health(inference)["status"] == "ok", timeout_s=10, what="healthz ok again")
    # the waiting stream went on once its (absent) checkpoint could be read
    wait_for(
        lambda: in_redis("resumed:user"), timeout_s=30, what="the stream that waited for Redis"
    )
    assert _health(vad)["streams_waiting_for_redis"] == 0


def _event(stream_id: str, index: int, label: str = "neutral") -> EmotionEvent:
    return EmotionEvent(
        stream_id=stream_id,
        segment_index=index,
        start_ms=1000.0 * index,
        end_ms=1000.0 * index + 500,
        label=label,
        scores={label: 1.0},
        model_name="m",
        model_version="1",
    )


async def test_store_layout_is_idempotent_and_survives_an_outage(restartable_redis):
    """Replays overwrite; `latest` and checkpoints never move back; an outage fills the backlog."""
    from emostream.schemas.redis_keys import checkpoint_key, events_key, latest_key
    from emostream.schemas.settings import RedisSettings
    from emostream.workers.runtime.result_store import ResultStore, StoreUnavailable

    settings = RedisSettings(url=restartable_redis.url, retry_interval_s=0.2)
    store = ResultStore(settings)
    client = redis.Redis.from_url(restartable_redis.url)
    prefix = settings.key_prefix
    try:
        assert await store.write_results([_event("s:1", 0), _event("s:1", 1)])
        assert await store.write_results([_event("s:1", 0, label="angry")])  # a replay of segment 0
        assert json.loads(client.get(result_key(prefix, "s:1", 0)))["label"] == "angry"
        assert json.loads(client.get(latest_key(prefix, "s:1")))["segment_index"] == 1
        assert client.xlen(events_key(prefix, "s:1")) == 2  # not appended twice
        assert [
            e.segment_index for e in await store.cached_results([("s:1", 1), ("s:1", 2)]) if e
        ] == [1]

        await store.save_checkpoints(
            {"s:1": ('{"position":{"next_seq":9},"boundary":{"sample":5}}', 9, 5, 0)}
        )
        await store.save_checkpoints(
            {"s:1": ('{"position":{"next_seq":4},"boundary":{"sample":1}}', 4, 1, 0)}
        )
        assert json.loads(client.get(checkpoint_key(prefix, "s:1")))["position"]["next_seq"] == 9
        # a new epoch (the gateway reconnected and restarted seq at 0) moves the checkpoint forward
        await store.save_checkpoints(
            {"s:1": ('{"position":{"next_seq":0,"epoch":1},"boundary":{"sample":7}}', 0, 7, 1)}
        )
        await store.save_checkpoints(
            {"s:1": ('{"position":{"next_seq":12,"epoch":0},"boundary":{"sample":8}}', 12, 8, 0)}
        )
        assert json.loads(client.get(checkpoint_key(prefix, "s:1")))["position"] == {
            "next_seq": 0,
            "epoch": 1,
        }

        restartable_redis.stop()
        assert not await store.write_results([_event("s:2", 0)])
        assert store.backlog_size == 1 and not store.available
        assert await store.cached_results([("s:2", 0)]) == [None]
        with pytest.raises(StoreUnavailable, match="s:3"):
            await store.load_checkpoint("s:3")
        restartable_redis.start()
        recovery = asyncio.create_task(store.run_recovery())
        for _ in range(50):
            if store.available and store.backlog_size == 0:
                break
            await asyncio.sleep(0.1)
        recovery.cancel()
        client = redis.Redis.from_url(restartable_redis.url)
        assert json.loads(client.get(result_key(prefix, "s:2", 0)))["segment_index"] == 0
    finally:
        await store.close()
