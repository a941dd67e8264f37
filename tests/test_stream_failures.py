"""Failure paths of the VAD stage against the real broker and Redis: no record stalls or silently
ends a stream. Each test runs a real VAD worker process (`python -m emostream.workers.stages vad`).

| failure path | test |
|---|---|
| dead letter of a large record must fit the broker | test_dead_letter_of_a_large_record_fits_and_keeps_a_prefix_and_the_size |
| end of stream whose value cannot be decoded | test_garbled_end_of_stream_is_dead_lettered_and_still_ends_the_stream |
| end of stream that arrives before the last chunks | test_early_end_of_stream_waits_for_the_chunks_reordered_after_it |
| a seq far ahead | test_seq_far_ahead_is_dead_lettered_and_the_stream_goes_on |
| a gateway restarting its seq after a reconnect | test_new_epoch_restarts_seq_and_the_rest_of_the_call_is_kept |
| more live streams than a worker may hold | test_streams_past_the_live_stream_cap_are_dead_lettered |
| one stream failing in the idle eviction | test_a_stream_failing_in_idle_eviction_does_not_stop_the_others |
| one stream failing in the replay after a Redis outage | test_a_stream_failing_in_the_replay_after_a_redis_outage_does_not_stop_the_others |
"""

import base64
import time

import numpy as np
import pytest
import redis
import soundfile as sf
from emostream.schemas.audio import AudioChunkHeader
from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.redis_keys import checkpoint_key
from emostream.workers.cli.clients.producer import make_audio_producer
from emostream.workers.runtime.dead_letters import MAX_DEAD_LETTER_VALUE_BYTES
from emostream.workers.stages.stream_state import StreamCheckpoint, StreamPosition

from tests._workers_helpers import (
    SPEECH_SAMPLE_RATE_HZ,
    chunked,
    reference_segments,
    segment_headers,
    send_chunks,
    wait_for,
)

CHUNK_MS = 20
CHUNK_SAMPLES = SPEECH_SAMPLE_RATE_HZ * CHUNK_MS // 1000


def _speech(speech_wav) -> np.ndarray:
    samples, rate_hz = sf.read(speech_wav, dtype="int16")
    assert rate_hz == SPEECH_SAMPLE_RATE_HZ
    return samples


def _ends_in_speech(speech_wav, speech_fixture) -> np.ndarray:
    """The recording cut 300 ms before its last utterance ends: only an end of stream (or an idle
    eviction) closes the last segment."""
    cut_ms = speech_fixture.utterances[-1].end_ms - 300
    return _speech(speech_wav)[: cut_ms * SPEECH_SAMPLE_RATE_HZ // 1000]


def _send(producer, settings, stream_id: str, seq: int, value: bytes, **header_fields) -> None:
    header = AudioChunkHeader(
        stream_id=stream_id, seq=seq, sample_rate_hz=SPEECH_SAMPLE_RATE_HZ, **header_fields
    )
    producer.send(
        settings.topics.audio, key=stream_id.encode(), value=value, headers=header.to_kafka_headers()
    )


def _segments_of(read_topic, settings, stream_id: str, count: int, timeout_s: float = 30.0):
    def found():
        records = read_topic(
            settings, settings.topics.segments, min_records=count, timeout_s=2, stream_id=stream_id
        )
        headers = segment_headers(records)
        return headers if len(headers) >= count else None

    return wait_for(found, timeout_s=timeout_s, what=f"{count} segments of {stream_id}")


def _dead_letters(read_topic, settings, stream_id: str, count: int = 1, timeout_s: float = 30.0):
    def found():
        records = read_topic(
            settings,
            settings.topics.dead_letters,
            min_records=count,
            timeout_s=2,
            stream_id=stream_id,
        )
        letters = [DeadLetter.model_validate_json(record.value) for record in records]
        return letters if len(letters) >= count else None

    return wait_for(found, timeout_s=timeout_s, what=f"{count} dead letters of {stream_id}")


def _times(segments) -> list[tuple[int, float, float]]:
    return [(s.segment_index, round(s.start_ms), round(s.end_ms)) for s in segments]


def _reference_times(samples: np.ndarray, settings) -> list[tuple[int, float, float]]:
    return [
        (s.index, round(s.start_ms), round(s.end_ms))
        for s in reference_segments(samples, settings, chunk_ms=CHUNK_MS)
    ]


@pytest.mark.slow
def test_dead_letter_of_a_large_record_fits_and_keeps_a_prefix_and_the_size(
    stack_settings, spawn_worker, read_topic, speech_wav
):
    settings = stack_settings
    spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    large = bytes(range(256)) * 3_500 + b"\x01"  # 896,001 bytes: an odd s16le length (a cut sample)
    _send(producer, settings, "call-large:customer", 0, large)
    samples = _speech(speech_wav)
    send_chunks(
        producer, topic=settings.topics.audio, stream_id="call-after:customer", samples=samples
    )
    producer.flush()

    (letter,) = _dead_letters(read_topic, settings, "call-large:customer")
    assert "odd number of bytes" in letter.reason
    assert letter.value_size_bytes == len(large) and letter.value_truncated
    kept = base64.b64decode(letter.value_b64 or "")
    assert kept == large[:MAX_DEAD_LETTER_VALUE_BYTES]
    # the worker went on: the next stream is segmented as the offline reference says
    reference = _reference_times(samples, settings)
    segments = _segments_of(read_topic, settings, "call-after:customer", len(reference))
    assert _times(segments) == reference


@pytest.mark.slow
def test_garbled_end_of_stream_is_dead_lettered_and_still_ends_the_stream(
    stack_settings, spawn_worker, read_topic, speech_wav, speech_fixture
):
    """Idle eviction is 60 s away: the last segment comes out only because the end of stream counted."""
    settings = stack_settings
    assert settings.vad.idle_stream_timeout_s >= 60
    spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    samples = _ends_in_speech(speech_wav, speech_fixture)
    stream_id = "call-eos:customer"
    chunks = send_chunks(
        producer, topic=settings.topics.audio, stream_id=stream_id, samples=samples, eos=False
    )
    _send(producer, settings, stream_id, chunks, b"\x01", end_of_stream=True)  # torn sample
    producer.flush()
    sent_at = time.monotonic()

    (letter,) = _dead_letters(read_topic, settings, stream_id)
    assert "odd number of bytes" in letter.reason
    reference = _reference_times(samples, settings)
    segments = _segments_of(read_topic, settings, stream_id, len(reference), timeout_s=40)
    assert time.monotonic() - sent_at < settings.vad.idle_stream_timeout_s  # not by eviction
    assert _times(segments) == reference


@pytest.mark.slow
def test_early_end_of_stream_waits_for_the_chunks_reordered_after_it(
    stack_settings, spawn_worker, read_topic, speech_wav, speech_fixture
):
    settings = stack_settings
    spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    samples = _ends_in_speech(speech_wav, speech_fixture)
    pieces = chunked(samples, CHUNK_SAMPLES)
    last = len(pieces)
    stream_id = "call-early-eos:customer"
    # the last three chunks (speech) arrive after the end of stream, as a jittery network may deliver
    order = list(range(last - 3))
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id=stream_id,
        samples=samples,
        seqs=order,
        eos=False,
    )
    _send(producer, settings, stream_id, last, b"", end_of_stream=True)
    producer.flush()
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id=stream_id,
        samples=samples,
        seqs=[last - 3, last - 2, last - 1],
        eos=False,
    )
    reference = _reference_times(samples, settings)
    segments = _segments_of(read_topic, settings, stream_id, len(reference))
    assert _times(segments) == reference, "the chunks after the early end of stream were kept"


@pytest.mark.slow
def test_seq_far_ahead_is_dead_lettered_and_the_stream_goes_on(
    stack_settings, spawn_worker, read_topic, speech_wav
):
    settings = stack_settings
    spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    samples = _speech(speech_wav)
    stream_id = "call-ahead:customer"
    pieces = chunked(samples, CHUNK_SAMPLES)
    half = len(pieces) // 2
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id=stream_id,
        samples=samples,
        seqs=list(range(half)),
        eos=False,
    )
    far_seq = 10_000_000
    _send(producer, settings, stream_id, far_seq, pieces[0].astype("<i2").tobytes())
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id=stream_id,
        samples=samples,
        seqs=list(range(half, len(pieces))),
    )

    (letter,) = _dead_letters(read_topic, settings, stream_id)
    assert f"chunk {far_seq}" in letter.reason and "ahead" in letter.reason
    assert "max_ahead_chunks" in letter.reason
    reference = _reference_times(samples, settings)
    segments = _segments_of(read_topic, settings, stream_id, len(reference))
    assert _times(segments) == reference


@pytest.mark.slow
def test_new_epoch_restarts_seq_and_the_rest_of_the_call_is_kept(
    stack_settings, spawn_worker, read_topic, speech_wav, speech_fixture
):
    """The gateway reconnects between the 2nd and 3rd utterance and counts seq from 0 again."""
    settings = stack_settings
    spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    samples = _speech(speech_wav)
    second, third = speech_fixture.utterances[1], speech_fixture.utterances[2]
    split_chunk = ((second.end_ms + third.start_ms) // 2) // CHUNK_MS
    pieces = chunked(samples, CHUNK_SAMPLES)
    stream_id = "call-epoch:customer"
    for seq, piece in enumerate(pieces[:split_chunk]):
        _send(producer, settings, stream_id, seq, piece.astype("<i2").tobytes())
    for seq, piece in enumerate(pieces[split_chunk:]):
        _send(producer, settings, stream_id, seq, piece.astype("<i2").tobytes(), epoch=1)
    _send(producer, settings, stream_id, len(pieces) - split_chunk, b"", end_of_stream=True, epoch=1)
    # a straggler of the old connection, after the new one began: dropped, not mixed in
    _send(producer, settings, stream_id, split_chunk + 5, pieces[0].astype("<i2").tobytes())
    producer.flush()

    reference = _reference_times(samples, settings)
    assert len(reference) == len(speech_fixture.utterances)
    segments = _segments_of(read_topic, settings, stream_id, len(reference))
    assert [s.segment_index for s in segments] == [index for index, _, _ in reference]
    for got, (_, start_ms, end_ms) in zip(segments, reference):
        # stream time continues across the reconnect (a fresh frame grid: within 2 frames)
        assert abs(got.start_ms - start_ms) <= 60 and abs(got.end_ms - end_ms) <= 60, (got, start_ms)


@pytest.mark.slow
def test_streams_past_the_live_stream_cap_are_dead_lettered(
    make_stack_settings, spawn_worker, read_topic, speech_wav
):
    settings = make_stack_settings(vad={"max_live_streams": 2}, topics={"partitions": 1})
    spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    samples = _speech(speech_wav)
    first = chunked(samples, CHUNK_SAMPLES)[0].astype("<i2").tobytes()
    for name in ("call-a:customer", "call-b:customer"):
        _send(producer, settings, name, 0, first)
    producer.flush()
    _send(producer, settings, "call-c:customer", 0, first)
    producer.flush()

    (letter,) = _dead_letters(read_topic, settings, "call-c:customer")
    assert "max_live_streams" in letter.reason and "call-c:customer" in letter.reason
    # the streams under the cap go on: call-a finishes with its segments
    send_chunks(producer, topic=settings.topics.audio, stream_id="call-a:customer", samples=samples)
    reference = _reference_times(samples, settings)
    segments = _segments_of(read_topic, settings, "call-a:customer", len(reference))
    assert _times(segments) == reference


@pytest.mark.slow
def test_a_stream_failing_in_idle_eviction_does_not_stop_the_others(
    make_stack_settings, spawn_worker, read_topic, speech_wav, speech_fixture
):
    """A stream whose stored checkpoint is corrupt (rate 0) fails when it is evicted; the stream
    evicted after it still gets its last segment flushed."""
    settings = make_stack_settings(vad={"idle_stream_timeout_s": 2.0}, topics={"partitions": 1})
    client = redis.Redis.from_url(settings.redis.url)
    poisoned = StreamCheckpoint(position=StreamPosition(anchor_rate_hz=0))
    client.set(checkpoint_key(settings.redis.key_prefix, "call-poison:customer"), poisoned.to_json())
    worker = spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    samples = _ends_in_speech(speech_wav, speech_fixture)
    pieces = chunked(samples, CHUNK_SAMPLES)
    # the poisoned stream first (evicted first): a chunk ahead of its resume point waits, then
    # fails on eviction when its gap is measured
    _send(producer, settings, "call-poison:customer", 5, pieces[0].astype("<i2").tobytes())
    producer.flush()
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id="call-idle:customer",
        samples=samples,
        eos=False,
    )
    reference = _reference_times(samples, settings)
    segments = _segments_of(read_topic, settings, "call-idle:customer", len(reference))
    assert _times(segments) == reference, "the last segment was flushed by the eviction"
    (letter,) = _dead_letters(read_topic, settings, "call-poison:customer")
    assert "idle eviction failed" in letter.reason
    assert worker.is_running()


@pytest.mark.slow
def test_a_stream_failing_in_the_replay_after_a_redis_outage_does_not_stop_the_others(
    make_stack_settings, spawn_worker, read_topic, speech_wav
):
    """Two streams first seen while Redis does not answer wait for their checkpoints. When Redis
    answers, the first one's checkpoint turns out corrupt (rate 0) and its replay fails; it is
    dead-lettered alone and the second stream is replayed and segmented."""
    settings = make_stack_settings(redis={"retry_interval_s": 0.5}, topics={"partitions": 1})
    client = redis.Redis.from_url(settings.redis.url)
    poisoned = StreamCheckpoint(position=StreamPosition(next_seq=1, anchor_rate_hz=0))
    client.set(checkpoint_key(settings.redis.key_prefix, "call-poison:customer"), poisoned.to_json())
    spawn_worker("vad", settings)
    producer = make_audio_producer(settings)
    samples = _speech(speech_wav)
    pieces = chunked(samples, CHUNK_SAMPLES)
    client.client_pause(8_000, all=True)  # Redis stops answering every client for 8 s
    # both first seen at seq 1 (not 0): each must wait for its checkpoint
    _send(producer, settings, "call-poison:customer", 1, pieces[1].astype("<i2").tobytes())
    producer.flush()
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id="call-waiting:customer",
        samples=samples,
        seqs=list(range(1, len(pieces))),
    )
    reference = _reference_times(samples, settings)  # seq 0 is silence: a filled gap changes nothing
    segments = _segments_of(read_topic, settings, "call-waiting:customer", len(reference), timeout_s=60)
    assert _times(segments) == reference
    (letter,) = _dead_letters(read_topic, settings, "call-poison:customer")
    assert "replay after a Redis outage failed" in letter.reason
