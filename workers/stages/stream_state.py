"""One audio stream's state in the VAD stage: ordering by sequence number, stream time, end-pointing.

`StreamState.accept(chunk)` takes chunks in any arrival order and returns what became ready:

- Ordering: chunks are processed in `seq` order. An early chunk waits in a reorder buffer of at most
  `max_reorder_chunks`; a duplicate (already processed or already waiting) or a late chunk (its seq
  already passed) is dropped. A gap is declared when the buffer overflows; a chunk whose value could
  not be decoded (`lost`) is a gap of one chunk (and still ends the stream if it was flagged so).
- End of stream that arrives early (chunks before it still missing) waits like any early chunk:
  the worker calls `close_gaps()` once it has waited `end_of_stream_wait_ms`, so chunks reordered
  around the end are not lost.
- A seq more than `max_ahead_chunks` past the expected one is not buffered (`rejected_ahead`: the
  worker dead-letters it); it would otherwise jump stream time and make the rest of the call late.
- Epochs: a gateway that restarts its sequence numbers after a reconnect sends a higher `epoch`
  (header `epoch`, see `schemas.audio`). The first chunk of a new epoch closes the old one (gaps
  declared, open segment closed) and starts seq 0 again at the current stream time, segment indices
  continuing. A chunk of an older epoch is dropped (`dropped_stale_epoch`).
- Stream time: each missing chunk is assumed as long as the chunk before it. A gap up to
  `max_gap_ms` is filled with silence; a longer one closes the open segment and the stream resumes
  after it, so segment times keep matching where the speech is in the gateway's audio.
- End-pointing: one `model.vad.Endpointer` per stream; segments get indices 0, 1, 2, ...

Crash recovery (see `StreamCheckpoint`): whenever the end-pointer passes a boundary (its state is
then fully described by a few numbers), the step returns a checkpoint: the stream's position before
the chunk being processed plus that boundary. Resuming from a checkpoint and feeding the same
chunks from `position.next_seq` on reproduces the same segments with the same indices. Each chunk
carries an opaque `token` (the worker's Kafka event); the tokens of chunks before a checkpoint's
`next_seq` are handed back with it, to be acknowledged once the checkpoint is stored, so the
committed offset never passes a chunk the state still depends on.

Everything here is deterministic: the same chunks in the same arrival order give the same result.
Only idle eviction depends on the wall clock (the worker decides when to call `evict`).
"""

import json
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Generic, TypeVar

import numpy as np
from emostream.model.vad import (
    VAD_SAMPLE_RATE_HZ,
    Boundary,
    Endpointer,
    EndpointerParams,
    SpeechSegment,
)
from emostream.schemas.errors import RecordError
from emostream.schemas.settings import VadSettings
from emostream.workers.runtime.codecs import output_samples_before, resample_s16

Token = TypeVar("Token", bound=Hashable)

CHECKPOINT_FORMAT_VERSION = 1

__all__ = [
    "Chunk",
    "StepResult",
    "StreamCheckpoint",
    "StreamParams",
    "StreamPosition",
    "StreamSegment",
    "StreamState",
]


@dataclass(frozen=True)
class Chunk:
    """One decoded audio chunk as it arrived (samples at the chunk's own rate)."""

    seq: int
    samples: np.ndarray  # int16, mono, at sample_rate_hz
    sample_rate_hz: int
    end_of_stream: bool = False
    received_at_ms: int | None = None  # wall clock (Unix ms) when the worker received it
    epoch: int = 0  # the gateway's connection epoch: seq restarts at 0 in each


def _vad_default(name: str) -> Any:
    return VadSettings.model_fields[name].default


@dataclass(frozen=True)
class StreamParams:
    """Per-stream parameters, derived from `VadSettings` (the one source; see `from_settings`)."""

    endpointer: EndpointerParams = field(
        default_factory=lambda: StreamParams.from_settings(VadSettings()).endpointer
    )
    max_gap_ms: int = _vad_default("max_gap_ms")  # up to this: filled with silence; longer: closes
    max_reorder_chunks: int = _vad_default("max_reorder_chunks")  # held waiting for a missing one
    max_ahead_chunks: int = _vad_default("max_ahead_chunks")  # a seq further ahead is rejected

    @classmethod
    def from_settings(cls, vad: VadSettings) -> "StreamParams":
        """Every field of `EndpointerParams` and of this class is the `VadSettings` field of that name."""
        own_names = {item.name for item in fields(cls)} - {"endpointer"}
        return cls(
            endpointer=EndpointerParams.from_settings(vad),
            **vad.model_dump(include=own_names),
        )


@dataclass(frozen=True)
class StreamPosition:
    """Where in-order processing stands before chunk `next_seq`, and how its samples map to stream time.

    Stream time at the start of chunk `next_seq` is `anchor_sample` plus `anchor_input_samples` (input
    samples since the anchor, all at `anchor_rate_hz`) converted to 16 kHz; the anchor moves on a rate
    change and on a gap, so conversions never accumulate rounding errors.
    """

    next_seq: int = 0
    anchor_sample: int = 0  # 16 kHz stream time of the anchor
    anchor_input_samples: int = 0
    anchor_rate_hz: int = VAD_SAMPLE_RATE_HZ
    last_chunk_input_samples: int = 0  # length of the last chunk, to estimate a missing one
    epoch: int = 0  # the gateway connection epoch `next_seq` counts in

    @property
    def stream_sample(self) -> int:
        return self.anchor_sample + output_samples_before(
            self.anchor_input_samples, self.anchor_rate_hz
        )

    def moved_by(self, input_samples: int, *, rate_hz: int) -> "StreamPosition":
        """The position `input_samples` at `rate_hz` later (re-anchored when the rate changes)."""
        position = self if rate_hz == self.anchor_rate_hz else self.reanchored(rate_hz)
        return replace(position, anchor_input_samples=position.anchor_input_samples + input_samples)

    def reanchored(self, rate_hz: int) -> "StreamPosition":
        return replace(
            self, anchor_sample=self.stream_sample, anchor_input_samples=0, anchor_rate_hz=rate_hz
        )

    def after_chunk(self, seq: int, input_samples: int) -> "StreamPosition":
        """The position after chunk `seq` of `input_samples` at `anchor_rate_hz` (re-anchor first on a
        rate change). Built in one step: this runs for every chunk of every stream."""
        return StreamPosition(
            next_seq=seq + 1,
            anchor_sample=self.anchor_sample,
            anchor_input_samples=self.anchor_input_samples + input_samples,
            anchor_rate_hz=self.anchor_rate_hz,
            last_chunk_input_samples=input_samples,
            epoch=self.epoch,
        )


@dataclass(frozen=True)
class StreamCheckpoint:
    """Enough to resume a stream exactly: its position before a chunk and the end-pointer's boundary."""

    position: StreamPosition = field(default_factory=StreamPosition)
    boundary: Boundary = field(default_factory=Boundary)
    finished: bool = False  # end of stream was processed: later chunks are late

    @property
    def next_segment_index(self) -> int:
        return self.boundary.segments_before

    def to_json(self) -> str:
        return json.dumps({"v": CHECKPOINT_FORMAT_VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "StreamCheckpoint":
        try:
            fields = json.loads(text)
            if fields.pop("v") != CHECKPOINT_FORMAT_VERSION:
                raise ValueError("unknown checkpoint version")
            return cls(
                position=StreamPosition(**fields["position"]),
                boundary=Boundary(**fields["boundary"]),
                finished=bool(fields["finished"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise RecordError(f"stream checkpoint {text!r:.200}: {error}") from None


@dataclass(frozen=True)
class StreamSegment(SpeechSegment):
    """A closed speech segment, 16 kHz s16le, in stream time, with when its closing chunk arrived."""

    speech_end_received_at_ms: int | None = None  # wall clock when the chunk that closed it arrived


@dataclass
class StepResult(Generic[Token]):
    """What one call made ready. Acknowledge `ack_now` at once, `ack_after_checkpoint` once stored."""

    segments: list[StreamSegment] = field(default_factory=list)
    checkpoint: StreamCheckpoint | None = None
    ack_now: list[Token] = field(default_factory=list)
    ack_after_checkpoint: list[Token] = field(default_factory=list)
    rejected_ahead: list[Token] = field(default_factory=list)  # seq too far ahead: dead-letter these
    dropped_duplicate: int = 0
    dropped_late: int = 0
    dropped_stale_epoch: int = 0  # chunks of an epoch older than the stream's (also in ack_now)
    epochs_started: int = 0
    gaps_filled: int = 0
    gaps_closed: int = 0


_LOST = None  # reorder-buffer entry of a chunk whose value could not be decoded


class StreamState(Generic[Token]):
    """Per-stream ordering, stream time and end-pointing; see the module docstring."""

    def __init__(
        self, stream_id: str, params: StreamParams, checkpoint: StreamCheckpoint | None = None
    ) -> None:
        self.stream_id = stream_id
        self.params = params
        start = checkpoint or StreamCheckpoint()
        self._position = start.position
        self._finished = start.finished
        self._endpointer = Endpointer(params.endpointer)
        self._endpointer.restart_at(start.boundary)
        self._buffer: dict[int, tuple[Chunk | None, Token]] = {}
        self._held: list[
            tuple[int, Token]
        ] = []  # (seq, token) processed or waiting since the checkpoint

    @property
    def position(self) -> StreamPosition:
        return self._position

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def waiting_chunks(self) -> int:
        return len(self._buffer)

    @property
    def held_tokens(self) -> int:
        return len(self._held)

    @property
    def in_speech(self) -> bool:
        return self._endpointer.in_speech

    @property
    def end_of_stream_waiting(self) -> bool:
        """The end-of-stream chunk arrived but chunks before it are still missing."""
        return self._eos_waiting()

    def accept(self, chunk: Chunk, token: Token) -> StepResult[Token]:
        """Take one chunk in arrival order; returns the segments and checkpoint it made ready."""
        result: StepResult[Token] = StepResult()
        if chunk.epoch < self._position.epoch:
            result.dropped_stale_epoch += 1
            result.ack_now.append(token)
            return result
        if chunk.epoch > self._position.epoch:
            self._begin_epoch(chunk.epoch, result)
        return self._arrive(chunk.seq, chunk, token, result)

    def lost(
        self, seq: int, token: Token, *, end_of_stream: bool = False, epoch: int | None = None
    ) -> StepResult[Token]:
        """Chunk `seq` arrived but could not be decoded: a gap of one chunk; it still ends the
        stream when flagged end-of-stream (its audio is what is lost, not the end)."""
        if end_of_stream:
            empty = Chunk(
                seq=seq,
                samples=np.zeros(0, dtype=np.int16),
                sample_rate_hz=self._position.anchor_rate_hz,
                end_of_stream=True,
                epoch=self._position.epoch if epoch is None else epoch,
            )
            return self.accept(empty, token)
        if epoch is not None and epoch != self._position.epoch:
            result: StepResult[Token] = StepResult()
            if epoch < self._position.epoch:
                result.dropped_stale_epoch += 1
                result.ack_now.append(token)
                return result
            self._begin_epoch(epoch, result)
            return self._arrive(seq, _LOST, token, result)
        return self._arrive(seq, _LOST, token)

    def close_gaps(self) -> StepResult[Token]:
        """Stop waiting for missing chunks: declare the gaps before every waiting chunk and process
        them (the worker calls this once an early end of stream has waited long enough)."""
        result: StepResult[Token] = StepResult()
        while self._buffer and not self._finished:
            self._process_next(result, force_gap=True)
        self._drop_after_end(result)
        return result

    def release_all(self) -> list[Token]:
        """Give up on this stream (it failed): every token it holds, to dead-letter and acknowledge."""
        tokens = [token for _, token in self._held]
        held = {id(token) for token in tokens}
        tokens += [token for _, token in self._buffer.values() if id(token) not in held]
        self._held.clear()
        self._buffer.clear()
        return tokens

    def _begin_epoch(self, epoch: int, result: StepResult[Token]) -> None:
        """The gateway reconnected: close the old epoch where it stands, restart seq at 0."""
        while self._buffer and not self._finished:
            self._process_next(result, force_gap=True)
        self._buffer.clear()
        result.segments.extend(self._segments(self._endpointer.flush(), received_at_ms=None))
        start = self._position.reanchored(self._position.anchor_rate_hz)
        self._position = replace(start, next_seq=0, epoch=epoch, last_chunk_input_samples=0)
        self._finished = False
        emitted = self._endpointer.segments_emitted
        self._endpointer.restart_at(
            Boundary(sample=self._position.stream_sample, segments_before=emitted)
        )
        result.epochs_started += 1
        result.checkpoint = StreamCheckpoint(self._position, self._endpointer.boundary, False)
        result.ack_after_checkpoint.extend(token for _, token in self._held)
        self._held.clear()

    def evict(self) -> StepResult[Token]:
        """Idle or shutting down: declare every gap, close the open segment, release every token."""
        result: StepResult[Token] = StepResult()
        while self._buffer:
            self._process_next(result, force_gap=True)
        before = self._position
        result.segments.extend(self._segments(self._endpointer.flush(), received_at_ms=None))
        result.checkpoint = StreamCheckpoint(before, self._endpointer.boundary, self._finished)
        result.ack_after_checkpoint.extend(token for _, token in self._held)
        self._held.clear()
        return result

    def _arrive(
        self,
        seq: int,
        chunk: Chunk | None,
        token: Token,
        result: StepResult[Token] | None = None,
    ) -> StepResult[Token]:
        result = result if result is not None else StepResult()
        if seq in self._buffer:
            result.dropped_duplicate += 1
            result.ack_now.append(token)
            return result
        if seq < self._position.next_seq or self._finished:
            result.dropped_late += 1
            result.ack_now.append(token)
            return result
        if seq - self._position.next_seq > self.params.max_ahead_chunks:
            result.rejected_ahead.append(token)
            return result
        self._buffer[seq] = (chunk, token)
        self._held.append((seq, token))
        while self._buffer and not self._finished:
            if self._position.next_seq in self._buffer:
                self._process_next(result, force_gap=False)
            elif len(self._buffer) > self.params.max_reorder_chunks:
                self._process_next(result, force_gap=True)
            else:
                break
        self._drop_after_end(result)
        return result

    def _drop_after_end(self, result: StepResult[Token]) -> None:
        if self._finished and self._buffer:  # chunks after the end of stream are late
            result.dropped_late += len(self._buffer)
            result.ack_after_checkpoint.extend(token for _, token in self._buffer.values())
            dropped = {id(token) for _, token in self._buffer.values()}
            self._held = [(seq, token) for seq, token in self._held if id(token) not in dropped]
            self._buffer.clear()

    def _eos_waiting(self) -> bool:
        return any(
            entry[0] is not None and entry[0].end_of_stream for entry in self._buffer.values()
        )

    def _process_next(self, result: StepResult[Token], *, force_gap: bool) -> None:
        """Process the lowest waiting seq (after a gap when it is not the expected one)."""
        seq = self._position.next_seq if not force_gap else min(self._buffer)
        chunk, _token = self._buffer.pop(seq)
        before = self._position
        boundary_before = self._endpointer.boundary
        missing_chunks = seq - before.next_seq + (1 if chunk is None else 0)
        if missing_chunks:
            self._skip_gap(missing_chunks, result, current=chunk)
        if chunk is not None:
            self._process_chunk(chunk, result)  # moves the position past `seq`
        else:
            self._position = replace(self._position, next_seq=seq + 1)
        boundary = self._endpointer.boundary
        if boundary != boundary_before or self._finished:
            self._make_checkpoint(before, boundary, result)

    def _skip_gap(
        self, missing_chunks: int, result: StepResult[Token], *, current: Chunk | None
    ) -> None:
        position = self._position
        chunk_input_samples = position.last_chunk_input_samples or (
            len(current.samples) if current else 0
        )
        gap_input_samples = missing_chunks * chunk_input_samples
        gap_ms = 1000.0 * gap_input_samples / position.anchor_rate_hz
        self._position = position.moved_by(gap_input_samples, rate_hz=position.anchor_rate_hz)
        if gap_ms <= self.params.max_gap_ms:
            result.gaps_filled += 1  # the silence is fed when the next audio arrives
            return
        result.gaps_closed += 1
        received_at_ms = current.received_at_ms if current else None
        result.segments.extend(
            self._segments(self._endpointer.flush(), received_at_ms=received_at_ms)
        )
        emitted = self._endpointer.segments_emitted
        self._endpointer.restart_at(
            Boundary(sample=self._position.stream_sample, segments_before=emitted)
        )

    def _process_chunk(self, chunk: Chunk, result: StepResult[Token]) -> None:
        position = self._position
        if chunk.sample_rate_hz != position.anchor_rate_hz:
            position = position.reanchored(chunk.sample_rate_hz)
        start_sample = position.stream_sample
        end_position = position.after_chunk(chunk.seq, len(chunk.samples))
        end_sample = end_position.stream_sample
        pcm = resample_s16(chunk.samples, chunk.sample_rate_hz, end_sample - start_sample)
        reached = self._endpointer.samples_seen
        if (
            start_sample > reached
        ):  # a filled gap (or a resume inside one): silence up to this chunk
            self._push(
                np.zeros(start_sample - reached, dtype=np.int16), result, chunk.received_at_ms
            )
        elif start_sample < reached:  # resuming from a boundary inside this chunk
            pcm = pcm[reached - start_sample :]
        self._push(pcm, result, chunk.received_at_ms)
        self._position = end_position
        if chunk.end_of_stream:
            result.segments.extend(
                self._segments(self._endpointer.flush(), received_at_ms=chunk.received_at_ms)
            )
            self._finished = True

    def _push(
        self, samples: np.ndarray, result: StepResult[Token], received_at_ms: int | None
    ) -> None:
        if len(samples):
            pcm = samples.astype("<i2", copy=False).tobytes()
            result.segments.extend(
                self._segments(self._endpointer.push(pcm), received_at_ms=received_at_ms)
            )

    def _segments(self, closed: list, *, received_at_ms: int | None) -> list[StreamSegment]:
        return [
            StreamSegment(
                index=segment.index,
                start_sample=segment.start_sample,
                pcm_s16le=segment.pcm_s16le,
                speech_end_received_at_ms=received_at_ms,
            )
            for segment in closed
        ]

    def _make_checkpoint(
        self, before: StreamPosition, boundary: Boundary, result: StepResult[Token]
    ) -> None:
        """Resume point: `before` and `boundary`; once finished, simply the position after the end."""
        resume = self._position if self._finished else before
        result.checkpoint = StreamCheckpoint(resume, boundary, self._finished)
        keep: list[tuple[int, Token]] = []
        for seq, token in self._held:
            if seq < resume.next_seq:
                result.ack_after_checkpoint.append(token)
            else:
                keep.append((seq, token))
        self._held = keep
