"""The inference stage: speech segments -> emotion results in Redis and on the emotions topic.

Per micro-batch (`stream.take(batch_max, within=batch_within_s)`):
1. parse each segment's headers and check its value (bad -> dead letter);
2. look the batch up in Redis: a segment whose result for this model version is already stored is a
   replay (a crash or rebalance upstream) and is not inferred again;
3. features + model for the rest in an executor thread, so the event loop keeps heartbeating and
   committing while the CPU works;
4. send the results to the emotions topic (key = stream id) and wait until the broker has them;
5. then write Redis (result, latest, event log, pub/sub notice), which never blocks on an outage.

A model that standardises each utterance against its call (`uses_call_statistics`, model/call_statistics.py)
gets each stream's running statistics, kept here per stream id (`CallStatisticsCache`, bounded by
`inference.max_call_streams`) and updated only when its prediction succeeded. They live in this worker's
memory: after a restart or a rebalance a stream starts again from the model's prior (its next few
results are measured against less of the call), and a segment replayed without a cached result is
counted twice.

Ordering 4 before 5 makes a cached result imply it is already on the topic, so a cache hit needs no
re-publish. Each result is sent on its own: a send that fails is retried (`RESULT_SEND_ATTEMPTS`),
then its segment is dead-lettered; the batch's other results go on (and only sent results are
written to Redis). The streams of a batch are sent side by side, one stream's results in segment
order: a stream's next result is sent once its previous one is on the topic or dead-lettered, so a
retry never puts a segment after its successor (the plugin runner hands a stream's events to
`on_emotion` in topic order, which plugins are promised is segment order). If the dead letter
cannot be sent either (the broker is unreachable), the result is retried until it is on the topic
(backoff up to `RESULT_SEND_RETRY_MAX_S`): the batch's offsets are never acknowledged with a result
neither published nor dead-lettered. The batch's offsets are acknowledged after 4 and 5
(`noack_take`, explicit acks): a crash or a SIGTERM before that replays the batch (idempotent: same
keys, overwritten).
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from emostream.model.base import EmotionModel, Prediction
from emostream.model.call_statistics import CallStatistics
from emostream.schemas.audio import INT16_FULL_SCALE
from emostream.schemas.errors import RecordError
from emostream.schemas.event import EmotionEvent, LatencyBreakdown
from emostream.schemas.segment import SEGMENT_SAMPLE_RATE_HZ, SegmentHeader
from emostream.workers.runtime.app import WorkerContext
from faust.types import EventT, StreamT

__all__ = ["MIN_SEGMENT_SAMPLES", "InferenceStage", "build"]

log = logging.getLogger(__name__)

MIN_SEGMENT_SAMPLES = SEGMENT_SAMPLE_RATE_HZ // 100  # 10 ms: anything shorter is not a segment
DURATION_TOLERANCE_MS = 1.0  # header times vs value length
RESULT_SEND_ATTEMPTS = 3  # per result, before its segment is dead-lettered
RESULT_SEND_RETRY_S = 0.2  # wait between attempts (doubles)
RESULT_SEND_RETRY_MAX_S = 5.0  # longest wait while neither the result nor its dead letter goes out


@dataclass(frozen=True)
class _Received:
    event: EventT
    key: bytes | None
    value: bytes | None
    headers: Any


@dataclass(frozen=True)
class _Segment:
    received: _Received
    header: SegmentHeader
    waveform: np.ndarray  # float32 in [-1, 1] at 16 kHz

    @property
    def where(self) -> str:
        return f"stream {self.header.stream_id}, segment {self.header.segment_index}"


async def _done(error: BaseException | None) -> BaseException | None:
    return error


async def _outcome(delivery: Awaitable[Any]) -> BaseException | None:
    try:
        # Shielded: a stopping worker (SIGTERM) cancels the agent while results are in flight, and
        # cancelling faust's FutureMessage makes its own done-callback (Topic._on_published) raise and
        # log a traceback per result. Shielded, the send completes or goes with the producer; the
        # segment, not yet acknowledged, is replayed by the next owner under the same idempotency key.
        await asyncio.shield(delivery)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - the caller retries or dead-letters
        return error
    return None


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_segment(received: _Received) -> _Segment:
    """Validate one segment record; RecordError names the stream, the segment and the problem."""
    header = SegmentHeader.from_kafka(received.key, received.headers or [])
    value = received.value or b""
    where = f"stream {header.stream_id}, segment {header.segment_index}"
    if len(value) % 2:
        raise RecordError(
            f"{where}: value has an odd number of bytes ({len(value)}); expected 16 kHz s16le"
        )
    samples = len(value) // 2
    if samples < MIN_SEGMENT_SAMPLES:
        raise RecordError(
            f"{where}: {samples} samples is too short to be a segment (at least {MIN_SEGMENT_SAMPLES})"
        )
    value_ms = 1000.0 * samples / SEGMENT_SAMPLE_RATE_HZ
    if abs(value_ms - header.duration_ms) > DURATION_TOLERANCE_MS:
        raise RecordError(
            f"{where}: value holds {value_ms:.1f} ms of audio but the header says {header.start_ms}-{header.end_ms} ms"
        )
    waveform = np.frombuffer(value, dtype="<i2").astype(np.float32) / INT16_FULL_SCALE
    return _Segment(received, header, waveform)


class CallStatisticsCache:
    """Running statistics per stream id, the least recently used dropped past `max_streams`. A batch
    works on copies (`for_segments`) that replace the kept ones only once its predictions succeeded
    (`keep`), so a failed batch retried segment by segment counts no utterance twice."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._streams: OrderedDict[str, CallStatistics] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def for_segments(self, stream_ids: Sequence[str]) -> list[CallStatistics]:
        """One copy per stream, shared by that stream's segments (in their order)."""
        copies: dict[str, CallStatistics] = {}
        for stream_id in stream_ids:
            if stream_id not in copies:
                kept = self._streams.get(stream_id)
                copies[stream_id] = kept.copy() if kept is not None else CallStatistics()
        return [copies[stream_id] for stream_id in stream_ids]

    def keep(self, stream_ids: Sequence[str], statistics: Sequence[CallStatistics]) -> None:
        for stream_id, call in zip(stream_ids, statistics, strict=True):
            self._streams[stream_id] = call
            self._streams.move_to_end(stream_id)
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)


class InferenceStage:
    def __init__(self, ctx: WorkerContext, model: EmotionModel) -> None:
        self.ctx = ctx
        self.model = model
        self.calls = CallStatisticsCache(ctx.settings.inference.max_call_streams)
        self._executor = ThreadPoolExecutor(
            max_workers=ctx.settings.inference.executor_threads,
            thread_name_prefix="emostream-inference",
        )

    def register(self) -> None:
        settings = self.ctx.settings.inference

        async def inference(stream: StreamT) -> None:
            # noack_take + explicit acks after the batch: take() acknowledges a batch in a `finally`,
            # so an agent stopped mid-batch (SIGTERM: a rolling update, a scale-down) committed
            # segments that were never inferred. Now they stay unacknowledged and are replayed.
            async for events in stream.noack_take(settings.batch_max, within=settings.batch_within_s):
                received = []
                for event in events:
                    self.ctx.liveness.took(event.message.tp, event.message.offset)
                    received.append(_Received(event, event.message.key, event.message.value, event.message.headers))
                await self.process_batch(received)
                for event in events:
                    await stream.ack(event)

        self.ctx.app.agent(self.ctx.topics.segments, name="inference")(inference)

    def health(self) -> dict[str, object]:
        return {"model": f"{self.model.name}@{self.model.version}"}

    async def process_batch(self, batch: Sequence[_Received]) -> None:
        picked_at_ms = now_ms()
        metrics = self.ctx.metrics
        metrics.batch_size.observe(len(batch))
        segments: list[_Segment] = []
        for received in batch:
            try:
                segments.append(parse_segment(received))
            except (RecordError, UnicodeDecodeError) as error:
                await self._dead_letter(received, str(error))
        unique = {
            (s.header.stream_id, s.header.segment_index): s for s in segments
        }  # a replay twice in one batch
        if len(unique) < len(segments):
            metrics.results.labels("duplicate").inc(len(segments) - len(unique))
            segments = list(unique.values())
        if not segments:
            return
        cached = await self.ctx.store.cached_results(
            [(s.header.stream_id, s.header.segment_index) for s in segments]
        )
        todo: list[_Segment] = []
        for segment, hit in zip(segments, cached):
            if (
                hit is not None
                and hit.model_name == self.model.name
                and hit.model_version == self.model.version
            ):
                metrics.results.labels("cache_hit").inc()
            else:
                todo.append(segment)
        if not todo:
            return
        started = time.perf_counter()
        try:
            predictions = await self._predict(todo)
        except Exception as error:  # noqa: BLE001 - one bad segment must not stop the stage: retry one by one
            log.warning("batch of %d failed (%s); retrying segment by segment", len(todo), error)
            predictions = await self._predict_one_by_one(todo)
        inference_ms = 1000.0 * (time.perf_counter() - started)
        made: list[tuple[_Segment, EmotionEvent]] = []
        for segment, prediction in zip(todo, predictions):
            if prediction is None:
                continue
            try:
                event = self._event(
                    segment, prediction, picked_at_ms=picked_at_ms, inference_ms=inference_ms
                )
            except ValueError as error:  # pydantic: the model's output does not make a valid result
                await self._dead_letter(segment.received, f"{segment.where}: no valid result: {error}")
                continue
            made.append((segment, event))
        events = await self._publish(made)
        await self.ctx.store.write_results(events)
        metrics.results.labels("inferred").inc(len(events))
        metrics.redis_up.set(1 if self.ctx.store.available else 0)
        metrics.redis_backlog.set(self.ctx.store.backlog_size)
        metrics.latency.labels("inference").observe(inference_ms / 1000)
        for event in events:
            for part in ("queue", "total"):
                value = getattr(event.latency, f"{part}_ms")
                if value is not None:
                    metrics.latency.labels(part).observe(max(0.0, value) / 1000)

    async def _publish(self, made: list[tuple[_Segment, EmotionEvent]]) -> list[EmotionEvent]:
        """Send every result, each on its own; return those on the topic. Streams are sent side by
        side, each stream's results in segment order (a stream's next result waits until the one
        before it is settled). A result whose sends all fail is dead-lettered (its segment record);
        the other streams' results are not held back by its retries."""
        by_stream: dict[str, list[tuple[_Segment, EmotionEvent]]] = {}
        for segment, event in made:
            by_stream.setdefault(event.stream_id, []).append((segment, event))
        published = await asyncio.gather(
            *(self._publish_stream(results) for results in by_stream.values())
        )
        return [event for stream_events in published for event in stream_events]

    async def _publish_stream(
        self, results: list[tuple[_Segment, EmotionEvent]]
    ) -> list[EmotionEvent]:
        """One stream's results, in segment order, each sent once the one before it is settled."""
        sent: list[EmotionEvent] = []
        for segment, event in sorted(results, key=lambda result: result[1].segment_index):
            if await self._publish_one(segment, event):
                sent.append(event)
        return sent

    async def _publish_one(self, segment: _Segment, event: EmotionEvent) -> bool:
        """True once the result is on the topic; False once its segment is dead-lettered instead."""
        error = await (await self._send_result(event))
        attempt = 1
        while error is not None and attempt < RESULT_SEND_ATTEMPTS:
            await asyncio.sleep(RESULT_SEND_RETRY_S * 2 ** (attempt - 1))
            attempt += 1
            error = await (await self._send_result(event))
        if error is None:
            return True
        reason = (
            f"{segment.where}: result not sent to the emotions topic after {attempt} attempts: "
            f"{type(error).__name__}: {error}"
        )
        if await self._dead_letter(segment.received, reason):
            return False
        await self._send_until_sent(event)  # nothing went out: never drop it silently
        return True

    async def _send_until_sent(self, event: EmotionEvent) -> None:
        delay_s = RESULT_SEND_RETRY_S
        while True:
            error = await (await self._send_result(event))
            if error is None:
                return
            log.error(
                "stream %s, segment %d: result and its dead letter not sent (%s); retrying in %.1f s",
                event.stream_id,
                event.segment_index,
                error,
                delay_s,
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RESULT_SEND_RETRY_MAX_S)

    async def _send_result(self, event: EmotionEvent) -> Awaitable[BaseException | None]:
        """Queue one result; the awaitable gives None once it is on the topic, or the error."""
        try:
            delivery = await self.ctx.topics.emotions.send(
                key=event.stream_id.encode(), value=event.model_dump_json().encode()
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - reported per result by _publish
            return _done(error)
        return _outcome(delivery)

    async def _predict(self, segments: Sequence[_Segment]) -> list[Prediction]:
        """Features + model in the executor; a call-standardised model's statistics kept on success."""
        stream_ids = [s.header.stream_id for s in segments]
        calls = self.calls.for_segments(stream_ids) if self.model.uses_call_statistics else None
        predictions = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.model.predict, [s.waveform for s in segments], SEGMENT_SAMPLE_RATE_HZ, calls
        )
        if calls is not None:
            self.calls.keep(stream_ids, calls)
        return predictions

    async def _predict_one_by_one(self, todo: list[_Segment]) -> list[Prediction | None]:
        predictions: list[Prediction | None] = []
        for segment in todo:
            try:
                (prediction,) = await self._predict([segment])
                predictions.append(prediction)
            except Exception as error:  # noqa: BLE001 - any model failure: dead-letter this segment, go on
                await self._dead_letter(
                    segment.received,
                    f"{segment.where}: inference failed: {type(error).__name__}: {error}",
                )
                predictions.append(None)
        return predictions

    def _event(
        self, segment: _Segment, prediction: Prediction, *, picked_at_ms: int, inference_ms: float
    ) -> EmotionEvent:
        header = segment.header
        emitted = header.emitted_at_ms
        created_at_ms = now_ms()
        speech_end = header.speech_end_at_ms
        return EmotionEvent(
            stream_id=header.stream_id,
            role=header.role,
            segment_index=header.segment_index,
            start_ms=header.start_ms,
            end_ms=header.end_ms,
            label=prediction.label,
            scores=prediction.scores,
            arousal=prediction.arousal,
            valence=prediction.valence,
            transcript=prediction.transcript,
            model_name=self.model.name,
            model_version=self.model.version,
            latency=LatencyBreakdown(
                vad_ms=None
                if emitted is None or header.speech_end_at_ms is None
                else float(emitted - header.speech_end_at_ms),
                queue_ms=None if emitted is None else float(picked_at_ms - emitted),
                inference_ms=inference_ms,
                total_ms=None if speech_end is None else float(created_at_ms - speech_end),
            ),
            created_at_ms=created_at_ms,
        )

    async def _dead_letter(self, received: _Received, reason: str) -> bool:
        """True once the dead letter is on its topic; False if it could not be sent (never raises)."""
        return await (await self.ctx.dead_letters.submit_for(received.event, reason))


def build(ctx: WorkerContext) -> InferenceStage:
    import torch
    from emostream.model.registry import load_model
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(ctx.settings.inference.torch_threads)
    # numpy's BLAS (librosa's filterbank products) likewise: its idle threads spin on the cores the
    # other workers need (log-mel of one utterance: 20.7 ms of CPU on two OpenBLAS threads, 2.2 on one)
    threadpool_limits(limits=ctx.settings.inference.torch_threads)
    model = load_model(ctx.settings.inference.model)
    # First use compiles and caches (numba, torch kernels): do it before taking traffic, not on a result.
    model.predict([np.zeros(SEGMENT_SAMPLE_RATE_HZ, dtype=np.float32)] * 2, SEGMENT_SAMPLE_RATE_HZ)
    stage = InferenceStage(ctx, model)
    stage.register()
    return stage
