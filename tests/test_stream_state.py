"""Per-stream state of the VAD stage: ordering, gaps, end of stream, and exact resume from checkpoints."""

import random

import numpy as np
import pytest
from emostream.model.vad import EndpointerParams
from emostream.workers.stages.stream_state import (
    Chunk,
    StreamCheckpoint,
    StreamParams,
    StreamSegment,
    StreamState,
)

from tests._workers_helpers import SPEECH_SAMPLE_RATE_HZ, chunked, spoken_stream

CHUNK_MS = 20
PARAMS = StreamParams(
    endpointer=EndpointerParams(quiet_boundary_ms=1_000), max_gap_ms=500, max_reorder_chunks=8
)


def as_chunks(
    samples: np.ndarray, *, chunk_ms: int = CHUNK_MS, rate_hz: int = SPEECH_SAMPLE_RATE_HZ
) -> list[Chunk]:
    pieces = chunked(samples, rate_hz * chunk_ms // 1000)
    return [
        Chunk(seq=i, samples=piece, sample_rate_hz=rate_hz, end_of_stream=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]


def run(
    chunks: list[Chunk], state: StreamState | None = None
) -> tuple[list[StreamSegment], list, StreamState]:
    state = state or StreamState("s", PARAMS)
    segments: list[StreamSegment] = []
    results = []
    for chunk in chunks:
        result = state.accept(chunk, token=chunk.seq)
        segments += result.segments
        results.append(result)
    return segments, results, state


def summary(segments: list[StreamSegment]) -> list[tuple[int, int, int]]:
    return [(s.index, s.start_sample, s.end_sample) for s in segments]


@pytest.fixture(scope="module")
def speech():
    return spoken_stream()


def test_segments_cover_the_utterances_in_stream_time(speech) -> None:
    segments, _, state = run(as_chunks(speech.samples))
    assert state.finished
    assert [s.index for s in segments] == list(range(len(segments)))
    assert len(segments) == len(speech.utterances_ms)
    for segment, (start_ms, end_ms) in zip(segments, speech.utterances_ms):
        assert abs(segment.start_ms - start_ms) < 300, (segment.start_ms, start_ms)
        assert abs(segment.end_ms - end_ms) < 400, (segment.end_ms, end_ms)


def test_shuffled_and_duplicated_chunks_give_the_same_segments(speech) -> None:
    chunks = as_chunks(speech.samples)
    in_order, _, _ = run(chunks)
    rng = random.Random(7)
    arrival = list(chunks)
    for i in range(0, len(arrival) - 4, 4):  # local reordering within the reorder window
        window = arrival[i : i + 4]
        rng.shuffle(window)
        arrival[i : i + 4] = window
    arrival = [c for chunk in arrival for c in ([chunk, chunk] if rng.random() < 0.1 else [chunk])]
    eos = next(c for c in arrival if c.end_of_stream)
    arrival.remove(eos)
    arrival.append(eos)
    shuffled, results, _ = run(arrival)
    assert summary(shuffled) == summary(in_order)
    assert [s.pcm_s16le for s in shuffled] == [s.pcm_s16le for s in in_order]
    assert sum(r.dropped_duplicate + r.dropped_late for r in results) == len(arrival) - len(chunks)


def test_short_gap_is_silence_and_long_gap_closes_the_segment(speech) -> None:
    chunks = as_chunks(speech.samples)
    first_start_ms = speech.utterances_ms[0][0]
    in_speech = int((first_start_ms + 800) // CHUNK_MS)
    short = [c for c in chunks if c.seq not in (in_speech, in_speech + 1)]  # 40 ms lost
    segments, results, _ = run(short)
    assert sum(r.gaps_filled for r in results) >= 1
    assert len(segments) == len(speech.utterances_ms)
    # stream time is kept: later segments are where they were without the loss
    reference, _, _ = run(chunks)
    assert summary(segments)[1:] == summary(reference)[1:]

    long_gap = set(range(in_speech, in_speech + 40))  # 800 ms lost inside speech
    segments, results, _ = run([c for c in chunks if c.seq not in long_gap])
    assert sum(r.gaps_closed for r in results) == 1
    first_end_ms = segments[0].end_ms
    assert first_end_ms <= in_speech * CHUNK_MS + 1
    # after the gap the stream resumes at the right stream time (a fresh frame grid: within 2 frames)
    assert abs(segments[-1].end_ms - reference[-1].end_ms) <= 60


def test_lost_chunk_is_filled_without_waiting_for_the_reorder_window(speech) -> None:
    chunks = as_chunks(speech.samples)
    state: StreamState = StreamState("s", PARAMS)
    for chunk in chunks[:10]:
        state.accept(chunk, token=chunk.seq)
    result = state.lost(10, token=10)
    assert result.gaps_filled == 1
    assert state.waiting_chunks == 0
    assert state.position.next_seq == 11


def test_resume_from_any_checkpoint_reproduces_the_same_segments(speech) -> None:
    """What a VAD worker restarted after kill -9 does: restore the checkpoint, replay the held chunks."""
    chunks = as_chunks(speech.samples)
    reference, results, _ = run(chunks)
    checkpoints = [r.checkpoint for r in results if r.checkpoint is not None]
    assert len(checkpoints) >= 4
    for checkpoint in checkpoints:
        restored = StreamCheckpoint.from_json(checkpoint.to_json())
        assert restored == checkpoint
        state: StreamState = StreamState("s", PARAMS, restored)
        # the replay starts anywhere before the checkpoint: earlier chunks are dropped as late
        replay = chunks[max(0, checkpoint.position.next_seq - 5) :]
        resumed, _, _ = run(replay, state)
        expected = [s for s in reference if s.index >= checkpoint.next_segment_index]
        assert summary(resumed) == summary(expected), checkpoint
        assert [s.pcm_s16le for s in resumed] == [s.pcm_s16le for s in expected]


def test_tokens_are_released_only_behind_a_checkpoint(speech) -> None:
    chunks = as_chunks(speech.samples)
    state: StreamState = StreamState("s", PARAMS)
    released: set[int] = set()
    for chunk in chunks:
        result = state.accept(chunk, token=chunk.seq)
        released |= set(result.ack_now)
        if result.checkpoint is not None:
            assert all(
                token < result.checkpoint.position.next_seq for token in result.ack_after_checkpoint
            )
            released |= set(result.ack_after_checkpoint)
        # never released: a chunk the current resume point still needs
        assert not released & set(range(state.position.next_seq, len(chunks))) or state.finished
    assert released == set(range(len(chunks)))
    assert state.held_tokens == 0


def test_8k_mulaw_rate_stream_time_matches_16k(speech) -> None:
    import soxr

    narrowband = soxr.resample(speech.samples, 16_000, 8_000).astype(np.int16)
    segments, _, _ = run(as_chunks(narrowband, rate_hz=8_000))
    reference, _, _ = run(as_chunks(speech.samples))
    assert len(segments) == len(reference)
    for a, b in zip(segments, reference):
        assert abs(a.start_ms - b.start_ms) <= 100 and abs(a.end_ms - b.end_ms) <= 200


def test_idle_eviction_flushes_open_speech_and_releases_everything(speech) -> None:
    chunks = as_chunks(speech.samples)
    middle = int((speech.utterances_ms[0][0] + 1000) // CHUNK_MS)
    _, _, state = run(chunks[:middle])
    assert state.in_speech
    result = state.evict()
    assert len(result.segments) == 1 and result.segments[0].index == 0
    assert result.checkpoint is not None and result.checkpoint.position.next_seq == middle
    assert state.held_tokens == 0
    # the stream comes back later: it continues from the checkpoint with the next index
    resumed, _, _ = run(chunks[middle:], StreamState("s", PARAMS, result.checkpoint))
    assert resumed[0].index == 1


def test_new_epoch_resumes_from_its_checkpoint_and_old_epoch_chunks_are_stale(speech) -> None:
    """A reconnect (epoch 1, seq from 0 again) mid-stream; a crash after it resumes in epoch 1."""
    chunks = as_chunks(speech.samples)
    split = len(chunks) // 2
    second = [
        Chunk(seq=c.seq - split, samples=c.samples, sample_rate_hz=c.sample_rate_hz,
              end_of_stream=c.end_of_stream, epoch=1)
        for c in chunks[split:]
    ]
    state: StreamState = StreamState("s", PARAMS)
    run(chunks[:split], state)
    epoch_results = [state.accept(c, token=("e1", c.seq)) for c in second]
    assert sum(r.epochs_started for r in epoch_results) == 1
    assert state.finished and state.position.epoch == 1
    begun = next(r for r in epoch_results if r.epochs_started)
    assert begun.checkpoint is not None and begun.checkpoint.position.epoch == 1
    # a straggler of epoch 0 is stale, acknowledged at once
    stale = state.accept(chunks[split + 3], token="late")
    assert stale.dropped_stale_epoch == 1 and stale.ack_now == ["late"]
    # resume from the new epoch's checkpoint: the replayed epoch-0 chunks are stale, epoch 1 goes on
    resumed: StreamState = StreamState("s", PARAMS, StreamCheckpoint.from_json(begun.checkpoint.to_json()))
    replay = [resumed.accept(c, token=c.seq) for c in chunks[split - 5 : split]]
    assert all(r.dropped_stale_epoch == 1 for r in replay)
    tail = [s for c in second for s in resumed.accept(c, token=("r", c.seq)).segments]
    original_tail = [s for r in epoch_results for s in r.segments if s.index >= begun.checkpoint.next_segment_index]
    assert summary(tail) == summary(original_tail)


def test_seq_far_ahead_is_rejected_not_buffered(speech) -> None:
    chunks = as_chunks(speech.samples)
    state: StreamState = StreamState("s", StreamParams(max_ahead_chunks=100))
    run(chunks[:10], state)
    far = Chunk(seq=10 + 101, samples=chunks[10].samples, sample_rate_hz=16_000)
    result = state.accept(far, token="far")
    assert result.rejected_ahead == ["far"] and state.waiting_chunks == 0
    near = Chunk(seq=10 + 100, samples=chunks[10].samples, sample_rate_hz=16_000)
    assert state.accept(near, token="near").rejected_ahead == [] and state.waiting_chunks == 1


def test_early_end_of_stream_waits_until_close_gaps_and_a_lost_end_still_ends(speech) -> None:
    chunks = as_chunks(speech.samples)
    state: StreamState = StreamState("s", PARAMS)
    run(chunks[:-3], state)
    state.accept(chunks[-1], token="eos")  # the end of stream, two chunks before it missing
    assert state.end_of_stream_waiting and not state.finished
    state.accept(chunks[-3], token="late-but-kept")  # arrives after the end: still used
    assert state.end_of_stream_waiting
    result = state.close_gaps()  # the worker gave up waiting for the last missing chunk
    assert state.finished and result.gaps_filled == 1
    lost_end: StreamState = StreamState("s", PARAMS)
    run(chunks[:-1], lost_end)
    lost_end.lost(chunks[-1].seq, token="garbled", end_of_stream=True)
    assert lost_end.finished
