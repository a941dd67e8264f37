"""Failure paths of the inference stage's produce path against the real broker and Redis: one
result of a micro-batch whose send fails is retried, then dead-lettered (or, when its dead letter
cannot be sent either, retried until it is on the topic); the batch's other results go on.

| failure path | test |
|---|---|
| one result's send fails transiently (all attempts but the last allowed) | test_a_result_whose_send_fails_transiently_is_retried_and_the_batch_goes_on |
| one result's send keeps failing | test_a_result_that_cannot_be_sent_is_dead_lettered_and_the_batch_goes_on |
| one result's send and its dead letter both fail | test_a_result_whose_dead_letter_fails_too_is_retried_until_it_is_on_the_topic |
| one of a stream's two results in a batch is retried | test_a_retried_result_stays_in_segment_order_before_its_streams_next_result |

Fault injection, everything else real. No broker fault hits one record of a batch and spares the
others: the one per-record rejection a client or broker makes is a record too large, and a result is
a few hundred bytes whatever its segment (a stream id is at most 128 characters). So each test runs
the inference stage in this process, built by its own `build(ctx)` (the shipped model) on a
`WorkerContext` of the shared Tansu broker and the test's Redis database, and wraps only the
emotions topic's `send` (in the dead-letter test, the dead-letter topic's too) for one chosen stream
id (`SendFaults`). That stream's sends fail as aiokafka reports a failure: raised by `send` (a
record too large) or on the delivery (a batch that expired unsent); every other send, and each of
that stream's sends past the injected failures, is the real one. The batch is real segment records
(the speech fixture's utterances) produced to, and read back from, the segments topic, handed to
`InferenceStage.process_batch` as the stage's agent hands a taken batch (faust events of those
records), so a dead letter carries its record's real origin partition and offset. The agent's
taking and acknowledging of batches runs in the worker-process tests (test_workers_e2e.py,
test_crash_recovery.py, test_deploy_shutdown.py), not here.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import redis
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import latest_key, result_key
from emostream.schemas.segment import SEGMENT_SAMPLE_RATE_HZ, SegmentHeader
from emostream.schemas.settings import Settings
from emostream.workers.runtime.app import WorkerContext, create_worker_context
from emostream.workers.runtime.kafka_config import kafka_python_options
from emostream.workers.runtime.stage_names import StageName
from emostream.workers.stages.inference import (
    RESULT_SEND_ATTEMPTS,
    InferenceStage,
    _Received,  # the stage's batch item: what its agent builds from each taken event
    build,
)
from faust.types import Message, TopicT
from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from tests._workers_helpers import fixture_utterance, require_model

FAULTY_STREAM_ID = "call-faulty:customer"
GAP_BETWEEN_SEGMENTS_MS = 1_500.0  # stream time between one stream's consecutive segments


@dataclass(frozen=True)
class BatchSegment:
    """One segment record of a test batch: a fixture utterance as segment `segment_index`."""

    stream_id: str
    segment_index: int
    utterance: int  # index into tests/fixtures/speech.json's utterances


# The batch, in the order the stage takes it (`inference.batch_max` = 4 segments): the faulty
# stream's segment second, so results both before and after it in the batch must go out.
BATCH: tuple[BatchSegment, ...] = (
    BatchSegment("call-before:agent", 0, 0),
    BatchSegment(FAULTY_STREAM_ID, 0, 1),
    BatchSegment("call-after:customer", 0, 2),
    BatchSegment("call-last:agent", 0, 0),
)
# Two consecutive segments of the faulty stream in one batch (a backlog after a lag or a replay).
BATCH_WITH_TWO_FAULTY_SEGMENTS: tuple[BatchSegment, ...] = (
    BatchSegment("call-before:agent", 0, 0),
    BatchSegment(FAULTY_STREAM_ID, 0, 1),
    BatchSegment(FAULTY_STREAM_ID, 1, 2),
    BatchSegment("call-after:customer", 0, 2),
)
HEALTHY_STREAM_IDS = [s.stream_id for s in BATCH if s.stream_id != FAULTY_STREAM_ID]
SEND_TIMEOUT_S = 10.0  # test producer: broker acknowledgement of one segment record


@dataclass
class SendFaults:
    """Fault injection on one faust topic's `send`, for the records keyed `stream_id` only.

    That key's first `failing_sends` sends fail (None: every one), raised by `send` itself or on
    the returned delivery, with `error`; every other send is the topic's real one. `sends` counts
    every send by key (str), failed or not.
    """

    topic: TopicT
    stream_id: str
    failing_sends: int | None
    fail_at: Literal["send", "delivery"]
    error: Callable[[], Exception]
    sends: Counter[str] = field(default_factory=Counter)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "SendFaults":
        monkeypatch.setattr(self.topic, "send", self._send_with_faults(self.topic.send))
        return self

    def _send_with_faults(
        self, real_send: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def send(
            *, key: bytes | None = None, value: bytes | None = None, **options: Any
        ) -> Any:
            stream_id = (key or b"").decode("utf-8", errors="replace")
            self.sends[stream_id] += 1
            failing = stream_id == self.stream_id and (
                self.failing_sends is None or self.sends[stream_id] <= self.failing_sends
            )
            if not failing:
                return await real_send(key=key, value=value, **options)
            if self.fail_at == "send":
                raise self.error()
            delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            delivery.set_exception(self.error())
            return delivery

        return send


def _too_large() -> Exception:
    return MessageSizeTooLargeError(
        "The message is 1048601 bytes when serialized which is larger than the maximum request "
        "size you have configured with the max_request_size configuration (injected)"
    )


def _expired() -> Exception:
    return KafkaTimeoutError("batch expired before the broker acknowledged it (injected)")


@dataclass(frozen=True)
class SentSegment:
    """A segment record of a test batch as the broker took it."""

    segment: BatchSegment
    partition: int
    offset: int


@pytest.fixture
async def inference_ctx(
    make_stack_settings: Callable[..., Settings],
) -> AsyncIterator[WorkerContext]:
    """A WorkerContext of the inference stage on the shared broker (one partition per topic: the
    emotions topic reads back in the order results were sent) and the test's Redis database."""
    settings = make_stack_settings(topics={"partitions": 1})
    require_model(settings)
    ctx = create_worker_context(settings, stage=StageName.INFERENCE)
    try:
        yield ctx
    finally:
        await ctx.app.producer.stop()
        await ctx.store.close()


def _produce_batch(settings: Settings, batch: Sequence[BatchSegment]) -> list[SentSegment]:
    """`batch`'s segment records on the segments topic (16 kHz s16le speech, headers as the VAD
    stage writes them); where the broker put each, in `batch`'s order."""
    producer = KafkaProducer(**kafka_python_options(settings.kafka, client_id="tests"), acks="all")
    sent: list[SentSegment] = []
    try:
        for segment in batch:
            samples = fixture_utterance(segment.utterance)
            start_ms = segment.segment_index * GAP_BETWEEN_SEGMENTS_MS
            header = SegmentHeader(
                stream_id=segment.stream_id,
                segment_index=segment.segment_index,
                start_ms=start_ms,
                end_ms=start_ms + 1000.0 * len(samples) / SEGMENT_SAMPLE_RATE_HZ,
            )
            metadata = producer.send(
                settings.topics.segments,
                key=segment.stream_id.encode(),
                value=samples.astype("<i2").tobytes(),
                headers=header.to_kafka_headers(),
            ).get(timeout=SEND_TIMEOUT_S)
            sent.append(SentSegment(segment, metadata.partition, metadata.offset))
    finally:
        producer.close()
    return sent


def _taken_batch(
    ctx: WorkerContext, read_topic: Callable[..., list[ConsumerRecord]], sent: list[SentSegment]
) -> list[_Received]:
    """The records of `sent`, read back from the segments topic, as the stage's agent takes them
    (faust events of those records), in `sent`'s order."""
    settings = ctx.settings
    records = read_topic(settings, settings.topics.segments, min_records=len(sent), timeout_s=30)
    by_origin = {(record.partition, record.offset): record for record in records}
    batch: list[_Received] = []
    for item in sent:
        record = by_origin[(item.partition, item.offset)]
        message = Message(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp / 1000,
            record.timestamp_type,
            record.headers,
            record.key,
            record.value,
            None,
        )
        event = ctx.app.create_event(record.key, record.value, record.headers, message)
        batch.append(_Received(event, record.key, record.value, record.headers))
    return batch


def _produce_and_take(
    ctx: WorkerContext,
    read_topic: Callable[..., list[ConsumerRecord]],
    batch: Sequence[BatchSegment],
) -> tuple[list[SentSegment], list[_Received]]:
    assert len(batch) <= ctx.settings.inference.batch_max, "a batch the stage's agent can take"
    sent = _produce_batch(ctx.settings, batch)
    return sent, _taken_batch(ctx, read_topic, sent)


def _results_on_topic(
    ctx: WorkerContext, read_topic: Callable[..., list[ConsumerRecord]], count: int
) -> list[EmotionEvent]:
    """The emotions topic's results in topic order (one partition), each keyed by its stream."""
    settings = ctx.settings
    records = read_topic(settings, settings.topics.emotions, min_records=count, timeout_s=30)
    events = [EmotionEvent.model_validate_json(record.value) for record in records]
    assert [record.key for record in records] == [event.stream_id.encode() for event in events]
    return events


def _in_redis(settings: Settings, stream_id: str, segment_index: int) -> EmotionEvent | None:
    client = redis.Redis.from_url(settings.redis.url)
    try:
        text = client.get(result_key(settings.redis.key_prefix, stream_id, segment_index))
    finally:
        client.close()
    return None if text is None else EmotionEvent.model_validate_json(text)


def _metric(ctx: WorkerContext, name: str, **labels: str) -> float:
    return ctx.metrics.registry.get_sample_value(name, labels) or 0.0


def _assert_published_and_cached(
    settings: Settings,
    events: list[EmotionEvent],
    expected: Sequence[BatchSegment],
    labels: Sequence[str],
) -> None:
    """The topic holds exactly one result of each of `expected` and nothing else, each a result of
    the model's labels, and Redis holds the same result."""
    on_topic = Counter((event.stream_id, event.segment_index) for event in events)
    assert on_topic == Counter((s.stream_id, s.segment_index) for s in expected)
    for event in events:
        assert event.label in labels and set(event.scores) == set(labels), event
        cached = _in_redis(settings, event.stream_id, event.segment_index)
        where = f"stream {event.stream_id}, segment {event.segment_index}"
        assert cached == event, f"{where}: Redis does not hold the result on the topic"


async def test_a_result_whose_send_fails_transiently_is_retried_and_the_batch_goes_on(
    inference_ctx: WorkerContext, read_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The faulty stream's result fails on the delivery of every attempt but the last allowed one
    (RESULT_SEND_ATTEMPTS): it is on the topic once, in Redis, nothing is dead-lettered, and the
    batch's other results were each sent once and are on the topic and in Redis."""
    ctx = inference_ctx
    stage: InferenceStage = build(ctx)
    faults = SendFaults(
        ctx.topics.emotions,
        FAULTY_STREAM_ID,
        failing_sends=RESULT_SEND_ATTEMPTS - 1,
        fail_at="delivery",
        error=_expired,
    ).install(monkeypatch)
    _, batch = _produce_and_take(ctx, read_topic, BATCH)

    await stage.process_batch(batch)

    assert faults.sends == {
        FAULTY_STREAM_ID: RESULT_SEND_ATTEMPTS,
        **dict.fromkeys(HEALTHY_STREAM_IDS, 1),
    }
    events = _results_on_topic(ctx, read_topic, len(BATCH))
    _assert_published_and_cached(ctx.settings, events, BATCH, stage.model.labels)
    assert events[-1].stream_id == FAULTY_STREAM_ID, "the others did not wait for the retries"
    assert _metric(ctx, "emostream_dead_letters_total") == 0
    assert _metric(ctx, "emostream_results_total", outcome="inferred") == len(BATCH)


async def test_a_result_that_cannot_be_sent_is_dead_lettered_and_the_batch_goes_on(
    inference_ctx: WorkerContext, read_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every send of the faulty stream's result is refused (a record too large, raised by `send`):
    after RESULT_SEND_ATTEMPTS attempts its segment record is dead-lettered (origin, stream,
    segment, reason); the result is neither on the topic nor in Redis; the batch's other results
    are on the topic and in Redis."""
    ctx = inference_ctx
    settings = ctx.settings
    stage: InferenceStage = build(ctx)
    faults = SendFaults(
        ctx.topics.emotions, FAULTY_STREAM_ID, failing_sends=None, fail_at="send", error=_too_large
    ).install(monkeypatch)
    sent, batch = _produce_and_take(ctx, read_topic, BATCH)

    await stage.process_batch(batch)

    assert faults.sends == {
        FAULTY_STREAM_ID: RESULT_SEND_ATTEMPTS,
        **dict.fromkeys(HEALTHY_STREAM_IDS, 1),
    }
    (record,) = read_topic(settings, settings.topics.dead_letters, min_records=1, timeout_s=30)
    letter = DeadLetter.model_validate_json(record.value)
    (faulty,) = [item for item in sent if item.segment.stream_id == FAULTY_STREAM_ID]
    assert record.key == FAULTY_STREAM_ID.encode() and letter.key == FAULTY_STREAM_ID
    assert letter.stage == StageName.INFERENCE
    assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == (
        settings.topics.segments,
        faulty.partition,
        faulty.offset,
    )
    assert letter.reason.startswith(f"stream {FAULTY_STREAM_ID}, segment 0: ")
    assert f"not sent to the emotions topic after {RESULT_SEND_ATTEMPTS} attempts" in letter.reason
    assert "MessageSizeTooLargeError" in letter.reason
    value_bytes = 2 * len(fixture_utterance(faulty.segment.utterance))  # s16le
    assert letter.value_size_bytes == value_bytes and not letter.value_truncated

    healthy = [s for s in BATCH if s.stream_id != FAULTY_STREAM_ID]
    events = _results_on_topic(ctx, read_topic, len(healthy))
    _assert_published_and_cached(settings, events, healthy, stage.model.labels)
    assert _in_redis(settings, FAULTY_STREAM_ID, 0) is None
    client = redis.Redis.from_url(settings.redis.url)
    try:
        assert client.get(latest_key(settings.redis.key_prefix, FAULTY_STREAM_ID)) is None
    finally:
        client.close()
    assert _metric(ctx, "emostream_dead_letters_total") == 1
    assert _metric(ctx, "emostream_results_total", outcome="inferred") == len(healthy)


async def test_a_result_whose_dead_letter_fails_too_is_retried_until_it_is_on_the_topic(
    inference_ctx: WorkerContext, read_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The faulty stream's result fails on the delivery for RESULT_SEND_ATTEMPTS + 2 sends and its
    dead letter fails too (the broker does not take the stream's records for a while): the result
    is not dropped but retried until it is on the topic, once, and then in Redis; the batch's other
    results are on the topic and in Redis."""
    ctx = inference_ctx
    stage: InferenceStage = build(ctx)
    failing_result_sends = RESULT_SEND_ATTEMPTS + 2
    results = SendFaults(
        ctx.topics.emotions,
        FAULTY_STREAM_ID,
        failing_sends=failing_result_sends,
        fail_at="delivery",
        error=_expired,
    ).install(monkeypatch)
    dead_letters = SendFaults(
        ctx.topics.dead_letters,
        FAULTY_STREAM_ID,
        failing_sends=None,
        fail_at="delivery",
        error=_expired,
    ).install(monkeypatch)
    assert ctx.dead_letters.topic is ctx.topics.dead_letters, "the sink sends via the wrapped topic"
    _, batch = _produce_and_take(ctx, read_topic, BATCH)

    await stage.process_batch(batch)

    assert results.sends == {
        FAULTY_STREAM_ID: failing_result_sends + 1,
        **dict.fromkeys(HEALTHY_STREAM_IDS, 1),
    }
    assert dead_letters.sends == {FAULTY_STREAM_ID: 1}
    events = _results_on_topic(ctx, read_topic, len(BATCH))
    _assert_published_and_cached(ctx.settings, events, BATCH, stage.model.labels)
    assert _metric(ctx, "emostream_dead_letter_failures_total") == 1
    assert _metric(ctx, "emostream_dead_letters_total") == 0
    assert _metric(ctx, "emostream_results_total", outcome="inferred") == len(BATCH)


async def test_a_retried_result_stays_in_segment_order_before_its_streams_next_result(
    inference_ctx: WorkerContext, read_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two consecutive segments of the faulty stream in one batch; the first send of segment 0
    fails on the delivery. Segment 0's retry is on the topic before segment 1 (the plugin runner
    delivers a stream's events in topic order, which `on_emotion` promises is segment order), each
    once; the batch's other results are on the topic and in Redis."""
    ctx = inference_ctx
    stage: InferenceStage = build(ctx)
    faults = SendFaults(
        ctx.topics.emotions, FAULTY_STREAM_ID, failing_sends=1, fail_at="delivery", error=_expired
    ).install(monkeypatch)
    _, batch = _produce_and_take(ctx, read_topic, BATCH_WITH_TWO_FAULTY_SEGMENTS)

    await stage.process_batch(batch)

    assert faults.sends[FAULTY_STREAM_ID] == 3  # segment 0 twice, segment 1 once
    events = _results_on_topic(ctx, read_topic, len(BATCH_WITH_TWO_FAULTY_SEGMENTS))
    _assert_published_and_cached(
        ctx.settings, events, BATCH_WITH_TWO_FAULTY_SEGMENTS, stage.model.labels
    )
    faulty_order = [e.segment_index for e in events if e.stream_id == FAULTY_STREAM_ID]
    assert faulty_order == [0, 1], "segment order of the stream on the emotions topic"
    assert _metric(ctx, "emostream_dead_letters_total") == 0
