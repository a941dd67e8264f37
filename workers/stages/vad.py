"""The VAD stage: audio chunks -> speech segments, per stream, with crash-safe offset commits.

Per record of the audio topic: parse the headers (bad -> dead letter), decode the value (bad ->
dead letter, and the stream treats that seq as a lost chunk), feed the stream's `StreamState`, send
the segments it closes to the segments topic (key = stream id, value = 16 kHz s16le, metadata in
headers).

Consumption: the audio topic is the busiest (10 records a second per stream with 100 ms chunks), so
it is consumed below faust's per-event stream, in fetched batches
(`workers.runtime.batch_consumer.BatchConsumer`, the same consumer group as before); the faust app
still produces, runs the timers and the checkpoint writer.

Commit design (what makes `kill -9` safe):
- Records are acknowledged by hand; an offset is committed only when every record below it in its
  partition is acknowledged (`OffsetTracker`).
- A chunk is acknowledged only when no resume point still needs it: duplicates and late chunks at
  once; processed chunks once a checkpoint *behind which they lie* is stored in Redis. A checkpoint
  (`StreamCheckpoint`: next seq, stream-time anchor, end-pointer boundary = next segment index,
  speaking or not, stream time) is stored only after the segments before it were delivered.
- After a crash or rebalance the new owner reads from the committed offset, which is at or before
  every chunk the stream's stored checkpoint needs; it restores the stream from that checkpoint,
  drops chunks before it as late, and replays the rest: the same segments with the same indices
  (see `workers.stages.stream_state`), which downstream overwrite by key.
- Redis down: checkpoint writes are retried and their chunks stay unacknowledged (the committed
  offset waits; memory grows with the outage; a crash meanwhile replays more). A stream first seen
  while Redis is down starts fresh if its first chunk is seq 0 (nothing before it to resume: the
  checkpoint is derived); otherwise the stream waits (its chunks are held, unacknowledged) until
  Redis answers, so it never restarts at a wrong segment index.
- Bounds (explicit, each with a dead letter or a metric, never a silent loss of the rest of a call):
  a seq more than `vad.max_ahead_chunks` ahead is dead-lettered; an early end of stream waits
  `vad.end_of_stream_wait_ms` for the chunks still missing, then their gaps are declared; a new
  stream past `vad.max_live_streams` is dead-lettered chunk by chunk; past `vad.max_held_chunks`
  unacknowledged chunks (Redis down) the agent stops consuming until checkpoints are stored again.
  A stream whose processing fails (in the agent, the Redis retry or the idle eviction) has its
  held chunks dead-lettered and is forgotten; the other streams go on.
- Limits: idle eviction depends on the wall clock, so a crash between an eviction's segment and
  its checkpoint may replay that segment longer (same index, overwritten). Redis must keep
  checkpoints (AOF / replicas in production): a stream whose checkpoint was lost resumes at the
  committed offset with segment index 0 again.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from emostream.schemas.audio import AudioChunkHeader, ChannelRole
from emostream.schemas.errors import RecordError
from emostream.schemas.segment import SegmentHeader
from emostream.workers.runtime.app import WorkerContext, consume_without_faust
from emostream.workers.runtime.batch_consumer import BatchConsumer, ConsumedRecord
from emostream.workers.runtime.codecs import decode_to_s16
from emostream.workers.runtime.result_store import StoreUnavailable
from emostream.workers.stages.stream_state import (
    Chunk,
    StepResult,
    StreamCheckpoint,
    StreamParams,
    StreamState,
)
from faust.types import TP

__all__ = ["VadStage", "build"]

log = logging.getLogger(__name__)

EVICTION_INTERVAL_S = 1.0
HELD_CHUNKS_POLL_S = 0.05  # how often a consumer paused by `max_held_chunks` looks again
RECENT_CHECKPOINTS_MAX = 10_000  # finished / evicted streams remembered without asking Redis


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _CheckpointJob:
    stream_id: str
    tp: TP
    checkpoint: StreamCheckpoint
    deliveries: list[Awaitable[Any]] = field(default_factory=list)
    events: list[ConsumedRecord] = field(default_factory=list)

    def merge_newer(self, newer: "_CheckpointJob") -> None:
        self.checkpoint = newer.checkpoint
        self.deliveries += newer.deliveries
        self.events += newer.events


class CheckpointWriter:
    """Stores checkpoints in order once their segments are delivered, then acknowledges their chunks."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._pending: dict[str, _CheckpointJob] = {}
        self._wakeup = asyncio.Event()

    @property
    def held_events(self) -> int:
        return sum(len(job.events) for job in self._pending.values())

    def submit(self, job: _CheckpointJob) -> None:
        current = self._pending.get(job.stream_id)
        if current is None:
            self._pending[job.stream_id] = job
        else:
            current.merge_newer(job)
        self._wakeup.set()

    def release(self, stream_id: str) -> list[ConsumedRecord]:
        """A stream was given up: its pending job's chunks, to dead-letter (nothing is stored)."""
        job = self._pending.pop(stream_id, None)
        return list(job.events) if job is not None else []

    def forget(self, revoked: set[TP]) -> None:
        """Partitions moved away: their chunks are the new owner's to replay; never ack them here."""
        for stream_id in [s for s, job in self._pending.items() if job.tp in revoked]:
            del self._pending[stream_id]

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                jobs, self._pending = self._pending, {}
                try:
                    await self._store(jobs)
                except StoreUnavailable as error:
                    self.ctx.metrics.checkpoints.labels("failed").inc(len(jobs))
                    log.warning(
                        "%s; %d streams keep their chunks unacknowledged and retry",
                        error,
                        len(jobs),
                    )
                    for (
                        stream_id,
                        job,
                    ) in jobs.items():  # put back, older first; newer submissions win
                        newer = self._pending.pop(stream_id, None)
                        if newer is not None:
                            job.merge_newer(newer)
                        self._pending[stream_id] = job
                    await asyncio.sleep(self.ctx.settings.redis.retry_interval_s)

    async def _store(self, jobs: dict[str, _CheckpointJob]) -> None:
        delivered: dict[str, _CheckpointJob] = {}
        for stream_id, job in jobs.items():
            try:
                for delivery in job.deliveries:
                    await delivery
            except Exception as error:  # noqa: BLE001 - the segment is not on the topic: do not move the resume point
                log.error(
                    "stream %s: segment delivery failed (%s); its chunks stay unacknowledged and "
                    "are replayed after a restart (liveness now fails)",
                    stream_id,
                    error,
                )
                self.ctx.liveness.report(
                    f"stream {stream_id}: a segment could not be delivered ({type(error).__name__}); "
                    "restart to replay its chunks from the committed offset"
                )
                continue
            job.deliveries.clear()
            delivered[stream_id] = job
        await self.ctx.store.save_checkpoints(
            {
                stream_id: (
                    job.checkpoint.to_json(),
                    job.checkpoint.position.next_seq,
                    job.checkpoint.boundary.sample,
                    job.checkpoint.position.epoch,
                )
                for stream_id, job in delivered.items()
            }
        )
        self.ctx.metrics.checkpoints.labels("stored").inc(len(delivered))
        assigned = self.ctx.consumer.assignment()
        for job in delivered.values():
            if job.tp in assigned:
                for event in job.events:
                    event.ack()


@dataclass
class _Stream:
    state: StreamState[ConsumedRecord]
    tp: TP
    role: ChannelRole
    last_active_s: float
    deliveries: list[Awaitable[Any]] = field(
        default_factory=list
    )  # awaited before its next checkpoint
    checkpoint: StreamCheckpoint | None = None  # the latest one made (stored or on its way)
    end_of_stream_seen_s: float | None = None  # monotonic time an early end of stream arrived


class VadStage:
    """Registers the VAD agent, the idle-eviction timer and the checkpoint writer on the app."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.params = StreamParams.from_settings(ctx.settings.vad)
        self._streams: dict[str, _Stream] = {}
        self._recent: OrderedDict[str, tuple[TP, StreamCheckpoint]] = OrderedDict()
        self._waiting: dict[
            str, list[tuple[ConsumedRecord, int]]
        ] = {}  # stream id -> records held until Redis answers
        self._writer = CheckpointWriter(ctx)
        self._processed = ctx.metrics.chunks.labels("processed")

    def register(self) -> None:
        app = self.ctx.app
        consume_without_faust(app)
        consumer = BatchConsumer(
            self.ctx.settings,
            topic=self.ctx.settings.topics.audio,
            group_id=app.conf.id,
            handle=self._take,
            on_assigned=app.on_partitions_assigned.send,
            on_revoked=app.on_partitions_revoked.send,
        )
        self.ctx.consumer = consumer

        async def consume() -> None:
            task = asyncio.current_task()
            assert task is not None
            self.ctx.liveness.watch("vad consumer", task)
            await consumer.run()

        app.task(consume)
        app.timer(EVICTION_INTERVAL_S, name="vad-evict-idle")(self._evict_idle)
        app.task(self._writer.run)
        app.on_partitions_revoked.connect(self._on_revoked)

    async def _take(self, record: ConsumedRecord) -> None:
        self.ctx.liveness.took(record.message.tp, record.message.offset)
        await self.on_event(record)

    def health(self) -> dict[str, object]:
        return {
            "streams": len(self._streams),
            "held_chunks": self.held_chunks(),
            "streams_waiting_for_redis": len(self._waiting),
        }

    def held_chunks(self) -> int:
        return self._writer.held_events + sum(len(held) for held in self._waiting.values())

    async def _wait_for_room(self) -> None:
        """Bounded memory: past `max_held_chunks` unacknowledged chunks, stop consuming for a while."""
        limit = self.ctx.settings.vad.max_held_chunks
        if self.held_chunks() < limit:
            return
        log.warning(
            "%d chunks held unacknowledged (limit %d, Redis down?): consuming paused",
            self.held_chunks(),
            limit,
        )
        while self.held_chunks() >= limit:
            await asyncio.sleep(HELD_CHUNKS_POLL_S)
        log.warning("held chunks below %d again: consuming resumed", limit)

    async def on_event(self, event: ConsumedRecord) -> None:
        """One audio record. A record that breaks processing is dead-lettered; the worker goes on."""
        await self._wait_for_room()
        try:
            await self._on_event(event, received_at_ms=now_ms())
        except (
            Exception
        ) as error:  # a defect, not bad input: keep the worker and the other streams going
            message = event.message
            log.exception(
                "audio record %s[%d]@%d failed", message.topic, message.partition, message.offset
            )
            await self._dead_letter_and_ack(
                event, f"processing failed: {type(error).__name__}: {error}"
            )

    async def _on_event(self, event: ConsumedRecord, *, received_at_ms: int) -> None:
        message = event.message
        try:
            header = AudioChunkHeader.from_kafka(message.key, message.headers)
        except RecordError as error:
            await self._dead_letter_and_ack(event, str(error))
            return
        stream_id = header.stream_id
        if stream_id in self._waiting:  # its checkpoint could not be read yet: keep the order
            self._waiting[stream_id].append((event, received_at_ms))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            live = len(self._streams) + len(self._waiting)
            if live >= self.ctx.settings.vad.max_live_streams:
                self.ctx.metrics.chunks.labels("refused").inc()
                await self._dead_letter_and_ack(
                    event,
                    f"stream {stream_id}, chunk {header.seq}: this worker already holds {live} live "
                    f"streams (vad.max_live_streams); add VAD workers or partitions",
                )
                return
            opened = await self._open(header, message.tp)
            if opened is None:
                self._waiting[stream_id] = [(event, received_at_ms)]
                return
            stream = opened
        await self._feed(stream, header, event, received_at_ms)

    async def _feed(
        self, stream: "_Stream", header: AudioChunkHeader, event: ConsumedRecord, received_at_ms: int
    ) -> None:
        stream_id = header.stream_id
        message = event.message
        stream.last_active_s = time.monotonic()
        try:
            samples = decode_to_s16(message.value or b"", header.encoding)
        except RecordError as error:
            reason = f"stream {stream_id}, chunk {header.seq}: {error}"
            # never raises; resolves False if the dead letter could not be sent (counted, logged)
            stream.deliveries.append(await self.ctx.dead_letters.submit_for(event, reason))
            self.ctx.metrics.chunks.labels("lost").inc()
            result = stream.state.lost(
                header.seq, event, end_of_stream=header.end_of_stream, epoch=header.epoch
            )
            await self._handle(stream_id, stream, result)
            return
        chunk = Chunk(
            seq=header.seq,
            samples=samples,
            sample_rate_hz=header.sample_rate_hz,
            end_of_stream=header.end_of_stream,
            received_at_ms=received_at_ms,
            epoch=header.epoch,
        )
        result = stream.state.accept(chunk, event)
        if not (
            result.dropped_duplicate
            or result.dropped_late
            or result.dropped_stale_epoch
            or result.rejected_ahead
        ):
            self._processed.inc()
        await self._handle(stream_id, stream, result)

    async def _open(self, header: AudioChunkHeader, tp: TP) -> _Stream | None:
        """State of a stream new to this worker, from its checkpoint; None while that cannot be read."""
        checkpoint: StreamCheckpoint | None = None
        recent = self._recent.pop(header.stream_id, None)
        if recent is not None and recent[0] == tp:
            checkpoint = recent[1]
        else:
            try:
                text = await self.ctx.store.load_checkpoint(header.stream_id)
                checkpoint = StreamCheckpoint.from_json(text) if text else None
            except StoreUnavailable as error:
                if header.seq != 0 or header.epoch != 0:
                    log.warning(
                        "%s; the stream waits for Redis (its chunks stay unacknowledged)", error
                    )
                    return None
                log.warning(
                    "%s; seq 0: nothing before it to resume, the stream starts fresh", error
                )
            except RecordError as error:
                log.error("%s; the stream starts fresh", error)
        stream = _Stream(
            StreamState(header.stream_id, self.params, checkpoint),
            tp,
            header.role,
            time.monotonic(),
        )
        self._streams[header.stream_id] = stream
        self.ctx.metrics.active_streams.set(len(self._streams))
        return stream

    async def _retry_waiting(self) -> None:
        """Streams whose checkpoint could not be read: try again, then replay their held records in
        order. A stream that fails here is given up alone (its records dead-lettered)."""
        for stream_id in list(self._waiting):
            try:
                await self._retry_one_waiting(stream_id)
            except Exception as error:
                log.exception("stream %s: replay after the Redis outage failed", stream_id)
                await self._give_up(stream_id, f"replay after a Redis outage failed: {error!r}")

    async def _retry_one_waiting(self, stream_id: str) -> None:
        pending = self._waiting.get(stream_id)
        if not pending:
            self._waiting.pop(stream_id, None)
            return
        first = pending[0][0]  # the list stays listed: the agent keeps appending in order
        header = AudioChunkHeader.from_kafka(first.message.key, first.message.headers)
        stream = await self._open(header, first.message.tp)
        if stream is None:
            return
        log.warning("stream %s: checkpoint read, replaying %d held chunks", stream_id, len(pending))
        while pending:
            event, received_at_ms = pending[0]
            await self._feed(
                stream,
                AudioChunkHeader.from_kafka(event.message.key, event.message.headers),
                event,
                received_at_ms,
            )
            pending.pop(0)
        self._waiting.pop(stream_id, None)

    async def _give_up(self, stream_id: str, reason: str) -> None:
        """Dead-letter and acknowledge every record a failed stream holds, then forget the stream."""
        events: list[ConsumedRecord] = [event for event, _ in self._waiting.pop(stream_id, [])]
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            events += stream.state.release_all()
        events += self._writer.release(stream_id)
        seen: set[int] = set()
        for event in events:
            if id(event) in seen:
                continue
            seen.add(id(event))
            await self._dead_letter_and_ack(event, f"stream {stream_id}: {reason}")
        self.ctx.metrics.active_streams.set(len(self._streams))

    async def _handle(self, stream_id: str, stream: _Stream, result: StepResult[ConsumedRecord]) -> None:
        for event in result.ack_now:
            event.ack()
        for event in result.rejected_ahead:
            header = AudioChunkHeader.from_kafka(event.message.key, event.message.headers)
            await self._dead_letter_and_ack(
                event,
                f"stream {stream_id}, chunk {header.seq}: seq is "
                f"{header.seq - stream.state.position.next_seq} chunks ahead of the expected "
                f"{stream.state.position.next_seq} (epoch {stream.state.position.epoch}); at most "
                f"{self.params.max_ahead_chunks} (vad.max_ahead_chunks) are accepted. A gateway that "
                "restarts its sequence numbers must send a higher `epoch` header",
            )
        if result.dropped_stale_epoch:
            self.ctx.metrics.chunks.labels("stale_epoch").inc(result.dropped_stale_epoch)
        if result.epochs_started:
            log.warning(
                "stream %s: epoch %d began (the gateway restarted its sequence numbers)",
                stream_id,
                stream.state.position.epoch,
            )
        if stream.state.end_of_stream_waiting:
            stream.end_of_stream_seen_s = stream.end_of_stream_seen_s or time.monotonic()
        else:
            stream.end_of_stream_seen_s = None
        if (
            result.dropped_duplicate
            or result.dropped_late
            or result.gaps_filled
            or result.gaps_closed
        ):
            metrics = self.ctx.metrics
            metrics.chunks.labels("duplicate").inc(result.dropped_duplicate)
            metrics.chunks.labels("late").inc(result.dropped_late)
            metrics.gaps.labels("filled").inc(result.gaps_filled)
            metrics.gaps.labels("closed").inc(result.gaps_closed)
        if result.segments:
            stream.deliveries += await self._send_segments(stream_id, stream.role, result)
        if result.checkpoint is not None:
            stream.checkpoint = result.checkpoint
            deliveries, stream.deliveries = stream.deliveries, []
            self._writer.submit(
                _CheckpointJob(
                    stream_id,
                    stream.tp,
                    result.checkpoint,
                    deliveries,
                    list(result.ack_after_checkpoint),
                )
            )
        if stream.state.finished and stream.state.held_tokens == 0:
            self._forget(stream_id)

    async def _send_segments(
        self, stream_id: str, role: ChannelRole, result: StepResult[ConsumedRecord]
    ) -> list[Awaitable[Any]]:
        emitted_at_ms = now_ms()
        futures = []
        for segment in result.segments:
            header = SegmentHeader(
                stream_id=stream_id,
                segment_index=segment.index,
                start_ms=segment.start_ms,
                end_ms=segment.end_ms,
                role=role,
                speech_end_at_ms=segment.speech_end_received_at_ms,
                emitted_at_ms=emitted_at_ms,
            )
            futures.append(
                await self.ctx.topics.segments.send(
                    key=stream_id.encode(),
                    value=segment.pcm_s16le,
                    headers=header.to_kafka_headers(),
                )
            )
            self.ctx.metrics.segments.inc()
            if segment.speech_end_received_at_ms is not None:
                self.ctx.metrics.latency.labels("vad").observe(
                    max(0, emitted_at_ms - segment.speech_end_received_at_ms) / 1000
                )
        return futures

    async def _dead_letter_and_ack(self, event: ConsumedRecord, reason: str) -> None:
        await (await self.ctx.dead_letters.submit_for(event, reason))  # never raises
        event.ack()

    def _forget(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.checkpoint is not None:
            self._recent[stream_id] = (stream.tp, stream.checkpoint)
            while len(self._recent) > RECENT_CHECKPOINTS_MAX:
                self._recent.popitem(last=False)
        self.ctx.metrics.active_streams.set(len(self._streams))

    async def _evict_idle(self) -> None:
        metrics = self.ctx.metrics
        metrics.redis_up.set(1 if self.ctx.store.available else 0)
        metrics.held_chunks.set(
            self._writer.held_events + sum(s.state.held_tokens for s in self._streams.values())
        )
        if self._waiting:
            await self._retry_waiting()
        vad = self.ctx.settings.vad
        now = time.monotonic()
        for stream_id, stream in list(self._streams.items()):
            try:
                if now - stream.last_active_s >= vad.idle_stream_timeout_s:
                    log.info(
                        "stream %s idle for %.0f s: flushed and evicted",
                        stream_id,
                        now - stream.last_active_s,
                    )
                    await self._handle(stream_id, stream, stream.state.evict())
                    self._forget(stream_id)
                elif (
                    stream.end_of_stream_seen_s is not None
                    and now - stream.end_of_stream_seen_s >= vad.end_of_stream_wait_ms / 1000
                ):
                    log.info(
                        "stream %s: end of stream waited %d ms for %d missing chunks; gaps declared",
                        stream_id,
                        vad.end_of_stream_wait_ms,
                        stream.state.waiting_chunks,
                    )
                    await self._handle(stream_id, stream, stream.state.close_gaps())
            except Exception as error:
                log.exception("stream %s: eviction failed", stream_id)
                await self._give_up(stream_id, f"idle eviction failed: {error!r}")

    async def _on_revoked(
        self, sender: Any = None, revoked: set[TP] | None = None, **_: Any
    ) -> None:
        revoked = set(revoked or ())
        self._writer.forget(revoked)
        for stream_id in [s for s, stream in self._streams.items() if stream.tp in revoked]:
            self._streams.pop(stream_id, None)
        for stream_id in [s for s, (tp, _) in self._recent.items() if tp in revoked]:
            del self._recent[stream_id]
        for stream_id in [
            s for s, held in self._waiting.items() if held[0][0].message.tp in revoked
        ]:
            self._waiting.pop(stream_id, None)
        self.ctx.metrics.active_streams.set(len(self._streams))
        log.info(
            "partitions revoked %s: their streams will resume from checkpoints", sorted(revoked)
        )


def build(ctx: WorkerContext) -> VadStage:
    stage = VadStage(ctx)
    stage.register()
    return stage
