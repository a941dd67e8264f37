"""End to end with the ASR-multitask model: the inference worker, configured with the folder of a
fine-tuned checkpoint, serves spoken digits streamed through the real broker and the VAD worker;
each segment's result, on the emotions topic and in Redis alike, carries the greedy transcript the
model gives for that segment's audio.

The checkpoint is conftest's `asr_checkpoint` (tests/_asr_helpers.py), the one
tests/test_asr_training.py serves through the registry: trained once per session on FSDD."""

import numpy as np
import pytest
import redis
import soxr
from emostream.model.registry import load_model
from emostream.schemas.audio import INT16_FULL_SCALE
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import latest_key, result_key
from emostream.schemas.segment import SEGMENT_SAMPLE_RATE_HZ
from emostream.workers.cli.clients.producer import make_audio_producer

from tests._asr_helpers import (
    SERVED_NAME,
    SERVED_VERSION,
    ServedCheckpoint,
    digit_clips,
    read_clip,
    single_thread,
)
from tests._workers_helpers import segment_headers, send_chunks, wait_for

STREAM_ID = "call-31:customer"
SPOKEN = ("three", "five")  # george's take 0 of each: words the served model learnt
LEAD_MS = 700  # silence before the first word
PAUSE_MS = 1_500  # silence after each word: well past the VAD's hangover
# The tiny model learnt FSDD's clips, trimmed to the word. The VAD's default padding (150 ms before
# its onset window and after the last voiced frame; digital silence here) is a third of a segment
# that short, and the model never heard any: its transcripts and scores are noise there. Segments
# close to the word: no padding, a one-frame onset window.
TIGHT_VAD = {"padding_ms": 0, "onset_ms": 30}
WORD_TOLERANCE_MS = 150  # segment edges vs the word's (webrtcvad's frames and its own hangover)


def silence(duration_ms: int) -> np.ndarray:
    return np.zeros(SEGMENT_SAMPLE_RATE_HZ * duration_ms // 1000, dtype=np.int16)


@pytest.mark.slow
def test_the_inference_worker_serves_an_asr_checkpoint_with_each_segments_transcript(
    make_stack_settings, spawn_worker, read_topic, asr_checkpoint: ServedCheckpoint
):
    settings = make_stack_settings(vad=TIGHT_VAD, inference={"model": str(asr_checkpoint.folder)})
    spawn_worker("vad", settings)
    inference = spawn_worker("inference", settings)
    assert inference.health()["model"] == f"{SERVED_NAME}@{SERVED_VERSION}"

    parts, words_ms = [silence(LEAD_MS)], []
    for clip in digit_clips(speakers=("george",), words=SPOKEN):
        audio, rate_hz = read_clip(clip)  # 8 kHz: the stream takes 16 kHz s16le
        word = np.round(soxr.resample(audio, rate_hz, SEGMENT_SAMPLE_RATE_HZ) * INT16_FULL_SCALE)
        start_ms = 1000.0 * sum(len(part) for part in parts) / SEGMENT_SAMPLE_RATE_HZ
        words_ms.append((start_ms, start_ms + 1000.0 * len(word) / SEGMENT_SAMPLE_RATE_HZ))
        samples = np.clip(word, -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype(np.int16)
        parts += [samples, silence(PAUSE_MS)]
    producer = make_audio_producer(settings)
    send_chunks(
        producer, topic=settings.topics.audio, stream_id=STREAM_ID, samples=np.concatenate(parts)
    )
    producer.close()

    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    wait_for(
        lambda: all(client.exists(result_key(prefix, STREAM_ID, i)) for i in range(len(SPOKEN))),
        timeout_s=120,
        what="a result per spoken word in Redis",
    )
    in_redis = [
        EmotionEvent.model_validate_json(client.get(result_key(prefix, STREAM_ID, i)))
        for i in range(len(SPOKEN))
    ]
    assert not client.exists(result_key(prefix, STREAM_ID, len(SPOKEN))), "one segment per word"
    latest = EmotionEvent.model_validate_json(client.get(latest_key(prefix, STREAM_ID)))
    assert latest == in_redis[-1]
    # the topic holds the same results (a replay may repeat one: the same event again)
    records = read_topic(
        settings, settings.topics.emotions, min_records=len(SPOKEN), timeout_s=30,
        stream_id=STREAM_ID,
    )
    on_topic = {
        event.segment_index: event
        for event in (EmotionEvent.model_validate_json(r.value) for r in records)
    }
    assert [on_topic.get(i) for i in range(len(SPOKEN))] == in_redis

    # what the model gives offline for the very audio the inference worker was handed
    records = read_topic(
        settings, settings.topics.segments, min_records=len(SPOKEN), timeout_s=30,
        stream_id=STREAM_ID,
    )
    segments = {
        header.segment_index: (header, record.value)
        for header, record in zip(segment_headers(records), records, strict=True)
    }
    assert sorted(segments) == list(range(len(SPOKEN)))
    headers = [segments[i][0] for i in range(len(SPOKEN))]
    waveforms = [
        np.frombuffer(segments[i][1], dtype="<i2").astype(np.float32) / INT16_FULL_SCALE
        for i in range(len(SPOKEN))
    ]
    with single_thread():  # as the worker runs it (inference.torch_threads 1)
        offline = load_model(str(asr_checkpoint.folder)).predict(waveforms, SEGMENT_SAMPLE_RATE_HZ)
    for event, header, expected, (word_start_ms, word_end_ms) in zip(
        in_redis, headers, offline, words_ms, strict=True
    ):
        where = f"segment {header.segment_index}"
        assert abs(header.start_ms - word_start_ms) <= WORD_TOLERANCE_MS, (where, word_start_ms)
        assert abs(header.end_ms - word_end_ms) <= WORD_TOLERANCE_MS, (where, word_end_ms)
        assert (event.start_ms, event.end_ms) == (header.start_ms, header.end_ms), where
        assert expected.transcript, (where, "the model hears nothing in the word", expected)
        assert event.transcript == expected.transcript, (where, event, expected)
        assert event.label == expected.label, (where, event, expected)
        assert event.scores == pytest.approx(expected.scores, abs=1e-4), (where, event, expected)
        assert (event.model_name, event.model_version) == (SERVED_NAME, SERVED_VERSION)
