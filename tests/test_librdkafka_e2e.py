"""A non-Python client end to end, with no relay: librdkafka (the `confluent-kafka` wheel, the same
C library gateways in C, Go and .NET use) streams 8 kHz mu-law chunks with text headers straight into
the suite's broker, through the VAD and inference workers, and reads one result per utterance back.
"""

import time

import numpy as np
import pytest
import soundfile as sf
import soxr
from emostream.schemas.audio import AudioEncoding
from emostream.schemas.event import EmotionEvent
from emostream.workers.cli.clients.producer import encode_s16

from tests._workers_helpers import chunked, require_model, wait_for

confluent_kafka = pytest.importorskip(
    "confluent_kafka", reason="pip install confluent-kafka (in the test extra)"
)

NARROWBAND_HZ = 8_000
CHUNK_MS = 20
START_TOLERANCE_MS = 300


def _librdkafka_config(settings) -> dict:
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "client.id": "emostream-librdkafka-test",
        "enable.idempotence": False,  # Tansu refuses idempotent producers (BROKER-NOTES.md)
        "acks": "all",
    }


def _read_results(settings, stream_id: str, want: int) -> list[EmotionEvent]:
    """Results of `stream_id` read with a librdkafka consumer, from offset 0 of every partition."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"librdkafka-reader-{time.monotonic_ns()}",  # assign() only, never joins
            "enable.auto.commit": False,
        }
    )
    try:
        topic = settings.topics.emotions
        consumer.assign(
            [confluent_kafka.TopicPartition(topic, p, 0) for p in range(settings.topics.partitions)]
        )
        found: dict[int, EmotionEvent] = {}
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len(found) < want:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            if message.key() == stream_id.encode():
                event = EmotionEvent.model_validate_json(message.value())
                found[event.segment_index] = event
        return [found[index] for index in sorted(found)]
    finally:
        consumer.close()


@pytest.mark.slow
def test_librdkafka_client_streams_mulaw_through_the_workers_and_reads_results(
    stack_settings, spawn_worker, speech_fixture
):
    settings = stack_settings
    require_model(settings)
    assert confluent_kafka.libversion()[0] >= "2.16"
    spawn_worker("vad", settings)
    spawn_worker("inference", settings)

    samples, rate_hz = sf.read(speech_fixture.path, dtype="int16")
    narrowband = soxr.resample(samples, rate_hz, NARROWBAND_HZ).astype(np.int16)
    stream_id = "call-rdkafka:customer"
    producer = confluent_kafka.Producer(_librdkafka_config(settings))
    failures: list[str] = []

    def delivered(error, _message) -> None:
        if error is not None:
            failures.append(str(error))

    pieces = chunked(narrowband, NARROWBAND_HZ * CHUNK_MS // 1000)
    for seq, piece in enumerate([*pieces, np.zeros(0, np.int16)]):
        headers = [
            ("v", b"1"),
            ("seq", str(seq).encode()),
            ("rate", str(NARROWBAND_HZ).encode()),
            ("enc", b"mulaw"),
            ("role", b"customer"),
            ("eos", b"true" if seq == len(pieces) else b"false"),
        ]
        producer.produce(
            settings.topics.audio,
            key=stream_id.encode(),
            value=encode_s16(piece, AudioEncoding.MULAW),
            headers=headers,
            on_delivery=delivered,
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "librdkafka could not deliver every chunk"
    assert not failures, failures

    want = len(speech_fixture.utterances)
    events = wait_for(
        lambda: (found := _read_results(settings, stream_id, want)) and len(found) >= want and found,
        timeout_s=90,
        what="one result per utterance, read with librdkafka",
    )
    assert [event.segment_index for event in events] == list(range(want))
    for event, utterance in zip(events, speech_fixture.utterances):
        assert abs(event.start_ms - utterance.start_ms) < START_TOLERANCE_MS, (event, utterance)
        assert event.role.value == "customer"
