"""kill -9 of a VAD worker and of an inference worker in the middle of streams.

After recovery every utterance has exactly one result: the segments the VAD stage emits again are
the same segments with the same indices (so they overwrite), and Redis holds exactly the reference
segmentation's keys, nothing missing and nothing extra.
"""

import threading
import time
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import result_key

from tests._workers_helpers import (
    metric_value,
    reference_segments,
    require_model,
    segment_headers,
    send_interleaved,
    wait_for,
)

STREAMS = 6
REPEATS = 3  # each stream: the fixture's 3 utterances, 3 times (~24 s of audio, 9 segments)
CHUNK_MS = 20
SEND_SPEEDUP = 4.0  # audio sent 4x faster than real time: ~6 s of sending


LEAD_STEP_MS = 370  # stream i starts with i * 370 ms of silence: streams are not in lockstep


def _long_speech(speech_wav, lead_ms: int) -> np.ndarray:
    samples, _ = sf.read(speech_wav, dtype="int16")
    return np.concatenate([np.zeros(lead_ms * 16, np.int16)] + [samples] * REPEATS)


def _distinct_segments(read_topic, settings) -> int:
    records = read_topic(settings, settings.topics.segments, min_records=1, timeout_s=1)
    return len({(h.stream_id, h.segment_index) for h in segment_headers(records)})


def _distinct_results(read_topic, settings) -> int:
    records = read_topic(settings, settings.topics.emotions, min_records=1, timeout_s=1)
    return len({EmotionEvent.model_validate_json(r.value).idempotency_key for r in records})


@pytest.mark.slow
def test_kill_9_vad_and_inference_workers_mid_stream(
    make_stack_settings, spawn_worker, read_topic, speech_wav
):
    settings = make_stack_settings(topics={"partitions": 2}, vad={"quiet_boundary_ms": 2_000})
    require_model(settings)
    stream_ids = [f"call-{i}:customer" for i in range(STREAMS)]
    audio = {
        stream_id: _long_speech(speech_wav, i * LEAD_STEP_MS)
        for i, stream_id in enumerate(stream_ids)
    }
    references = {
        stream_id: reference_segments(samples, settings, chunk_ms=CHUNK_MS)
        for stream_id, samples in audio.items()
    }
    assert all(len(reference) == 3 * REPEATS for reference in references.values())

    vad = spawn_worker("vad", settings, name="vad-1")
    inference = spawn_worker("inference", settings, name="inference-1")
    done = threading.Event()
    # the last repeat of every stream is held back until both crashes are over, so both successors
    # certainly have work left (3 utterances a stream), however slowly the machine runs
    resume = threading.Event()
    repeat_ms = len(sf.read(speech_wav, dtype="int16")[0]) // 16
    pause_at_ms = (2 * repeat_ms) // CHUNK_MS * CHUNK_MS
    sender = threading.Thread(target=send_interleaved, args=(settings, audio, done),
                              kwargs={"chunk_ms": CHUNK_MS, "speedup": SEND_SPEEDUP,
                                      "pause_at_ms": pause_at_ms, "resume": resume}, daemon=True)
    sender.start()

    # kill -9 the VAD worker once some segments are out and others are open
    wait_for(
        lambda: (
            len(read_topic(settings, settings.topics.segments, min_records=STREAMS, timeout_s=1))
            >= STREAMS
        ),
        timeout_s=30,
        what="first segments",
    )
    time.sleep(0.4)  # ~1.6 s of audio later: the next utterances are open
    vad.kill()
    segments_before_crash = _distinct_segments(read_topic, settings)
    vad_2 = spawn_worker("vad", settings, name="vad-2")
    # kill -9 the inference worker while results are flowing
    wait_for(
        lambda: (
            len(
                read_topic(settings, settings.topics.emotions, min_records=3 * STREAMS, timeout_s=1)
            )
            >= 3 * STREAMS
        ),
        timeout_s=60,
        what="results before the inference crash",
    )
    inference.kill()
    results_before_crash = _distinct_results(read_topic, settings)
    inference_2 = spawn_worker("inference", settings, name="inference-2")
    resume.set()
    sender.join(timeout=60)
    assert done.is_set()

    # segments: every index of the reference, and a replayed index is the very same segment
    total = sum(len(reference) for reference in references.values())
    records = wait_for(
        lambda: (
            (r := read_topic(settings, settings.topics.segments, min_records=total, timeout_s=2))
            and len({(h.stream_id, h.segment_index) for h in segment_headers(r)}) >= total
            and r
        ),
        timeout_s=90,
        what="all segments",
    )
    by_stream: dict[str, dict[int, set]] = defaultdict(lambda: defaultdict(set))
    for record, header in zip(records, segment_headers(records)):
        by_stream[header.stream_id][header.segment_index].add(
            (header.start_ms, header.end_ms, bytes(record.value))
        )
    for stream_id in stream_ids:
        got = by_stream[stream_id]
        assert all(len(versions) == 1 for versions in got.values()), (
            f"{stream_id}: a replay changed a segment"
        )
        expected = [(s.index, s.start_ms, s.end_ms) for s in references[stream_id]]
        assert sorted((i, *next(iter(v))[:2]) for i, v in got.items()) == expected, stream_id

    # vad-2 really resumed mid-stream: it re-read chunks that lie before the stored checkpoints
    assert metric_value(vad_2, "emostream_chunks_total", outcome="late") > 0
    # ...and it did the remaining work: every segment not on the topic when vad-1 died came from it
    remaining_segments = total - segments_before_crash
    assert remaining_segments > 0, "the VAD crash came too late to test anything"
    assert metric_value(vad_2, "emostream_segments_total") >= remaining_segments

    # results: Redis holds exactly one result per reference segment, nothing extra
    import redis

    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix

    def all_results_stored() -> bool:
        return all(
            client.exists(result_key(prefix, s, seg.index))
            for s in stream_ids
            for seg in references[s]
        )

    wait_for(all_results_stored, timeout_s=90, what="every result in Redis")
    for stream_id in stream_ids:
        keys = client.keys(f"{prefix}:{{{stream_id}}}:seg:*")
        assert len(keys) == len(references[stream_id]), stream_id
        for segment in references[stream_id]:
            event = EmotionEvent.model_validate_json(
                client.get(result_key(prefix, stream_id, segment.index))
            )
            assert (event.start_ms, event.end_ms) == (segment.start_ms, segment.end_ms)
    # the emotions topic may carry a replayed result twice, but always under the same idempotency key
    emotions = [
        EmotionEvent.model_validate_json(r.value)
        for r in read_topic(settings, settings.topics.emotions, min_records=total, timeout_s=10)
    ]
    # inference-2 did the remaining work: it inferred every result not on the topic at the crash
    remaining_results = total - results_before_crash
    assert remaining_results > 0, "the inference crash came too late to test anything"
    assert metric_value(inference_2, "emostream_results_total", outcome="inferred") >= remaining_results
    assert {e.idempotency_key for e in emotions} == {
        f"{s}/{seg.index}/{emotions[0].model_name}@{emotions[0].model_version}"
        for s in stream_ids
        for seg in references[s]
    }
