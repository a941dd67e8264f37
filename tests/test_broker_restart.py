"""Broker restart: workers reconnect and continue.

The local broker keeps everything in memory, so a restart also loses topics and committed offsets:
the test recreates the topics (as `emostream up` would) and streams new calls afterwards.
"""

import time

import pytest
import redis
import soundfile as sf
from emostream.schemas.redis_keys import result_key
from emostream.workers.cli.clients.producer import make_audio_producer

from tests._workers_helpers import require_model, send_chunks, wait_for

SETTLE_S = 4.0  # let the workers notice the empty topics (their old offsets are now out of range)


@pytest.mark.slow
def test_workers_reconnect_after_a_broker_restart(
    make_stack_settings, restartable_broker, spawn_worker, create_topics, speech_fixture
):
    settings = make_stack_settings(bootstrap_servers=restartable_broker.bootstrap_servers)
    require_model(settings)
    spawn_worker("vad", settings)
    spawn_worker("inference", settings)
    samples, _ = sf.read(speech_fixture.path, dtype="int16")
    segments = len(speech_fixture.utterances)
    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix

    def stored(stream_id: str) -> bool:
        return all(client.exists(result_key(prefix, stream_id, i)) for i in range(segments))

    producer = make_audio_producer(settings)
    send_chunks(producer, topic=settings.topics.audio, stream_id="first:user", samples=samples)
    wait_for(lambda: stored("first:user"), timeout_s=40, what="results before the restart")
    producer.close()

    restartable_broker.restart(down_s=2.0)
    create_topics(settings)
    time.sleep(SETTLE_S)
    producer = make_audio_producer(settings)
    send_chunks(producer, topic=settings.topics.audio, stream_id="second:user", samples=samples)
    wait_for(lambda: stored("second:user"), timeout_s=90, what="results after the broker restart")
