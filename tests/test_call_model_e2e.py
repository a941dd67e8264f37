"""End to end with a call-normalised model (`plb-ravdess8-call`): the inference worker measures each
segment of a stream against the stream's own statistics so far, and its results equal the model's
offline answers for the same segments served as one call, in order."""

import numpy as np
import pytest
import redis
from emostream.model.call_statistics import CallStatistics
from emostream.model.checkpoint import read_card
from emostream.model.registry import load_model, resolve
from emostream.schemas.audio import INT16_FULL_SCALE
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import result_key
from emostream.schemas.segment import SEGMENT_SAMPLE_RATE_HZ
from emostream.workers.cli.clients.producer import make_audio_producer

from tests._asr_helpers import single_thread
from tests._workers_helpers import segment_headers, send_chunks, spoken_stream, wait_for

MODEL = "plb-ravdess8-call"
STREAMS = ("call-51:customer", "call-52:customer")  # the second 6 dB quieter: the same answers


@pytest.mark.slow
def test_each_segment_is_measured_against_its_stream_so_far(make_stack_settings, spawn_worker, read_topic):
    settings = make_stack_settings(inference={"model": MODEL})
    spawn_worker("vad", settings)
    inference = spawn_worker("inference", settings)
    assert inference.health()["model"] == f"{MODEL}@{read_card(resolve(MODEL)).version}"
    stream = spoken_stream()
    producer = make_audio_producer(settings)
    for stream_id, gain in zip(STREAMS, (1.0, 0.5), strict=True):
        samples = np.round(stream.samples * gain).astype(np.int16)
        send_chunks(producer, topic=settings.topics.audio, stream_id=stream_id, samples=samples)
    producer.close()
    count = len(stream.utterances_ms)
    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    wait_for(lambda: all(client.exists(result_key(prefix, s, i)) for s in STREAMS for i in range(count)),
             timeout_s=120, what="a result per utterance of both streams in Redis")
    model = load_model(MODEL)
    served, cuts = {}, {}
    for stream_id in STREAMS:
        records = read_topic(settings, settings.topics.segments, min_records=count, timeout_s=30, stream_id=stream_id)
        audio = {h.segment_index: record.value for h, record in zip(segment_headers(records), records, strict=True)}
        assert sorted(audio) == list(range(count)), stream_id
        waveforms = [np.frombuffer(audio[i], dtype="<i2").astype(np.float32) / INT16_FULL_SCALE for i in range(count)]
        with single_thread():  # as the worker runs it (inference.torch_threads 1)
            as_one_call = model.predict(waveforms, SEGMENT_SAMPLE_RATE_HZ, [CallStatistics()] * count)
            each_alone = model.predict(waveforms, SEGMENT_SAMPLE_RATE_HZ)
        served[stream_id], cuts[stream_id] = [], []
        for i, expected in enumerate(as_one_call):
            event = EmotionEvent.model_validate_json(client.get(result_key(prefix, stream_id, i)))
            cuts[stream_id].append((event.start_ms, event.end_ms))
            assert event.label == expected.label, (stream_id, i, event, expected)
            assert event.scores == pytest.approx(expected.scores, abs=1e-4), (stream_id, i)
            served[stream_id].append(event.scores)
        later = each_alone[-1].scores  # the last segment alone is measured against itself and the prior only
        assert max(abs(later[k] - as_one_call[-1].scores[k]) for k in later) > 1e-4, stream_id
    assert cuts[STREAMS[0]] == cuts[STREAMS[1]], "the end-pointer cut the quieter stream elsewhere"
    # A call's gain is removed, up to the int16 rounding of the quieter stream's samples (half the
    # amplitude, twice the relative rounding): measured up to 2.1e-3 with plb-ravdess8-call v3.
    for loud, quiet in zip(*served.values(), strict=True):
        assert quiet == pytest.approx(loud, abs=5e-3)
