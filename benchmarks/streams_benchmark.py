"""How many concurrent real-time streams the pipeline sustains on this machine, and how fast.

Starts its own stack per run (Tansu broker, redis-server, one VAD worker and `--inference-workers`
inference workers on `--partitions` partitions: the same subprocesses `emostream up` runs, through
`LocalStack`), then streams N simulated calls in real time: each stream is silence with utterances
of real (synthetic, espeak-ng) speech from tests/fixtures/speech.wav placed at random pauses, so
where every utterance ends is known exactly (stream time). Chunks of `--chunk-ms` (20 or 100 ms:
a telephony gateway's frame or a batching one's) are sent as a gateway would: chunk k when its
audio is complete, streams spread evenly over each chunk period. `--sample-rate-hz 8000 --encoding
mulaw` sends what a telephony gateway sends (the fixture resampled once to 8 kHz, G.711 on the wire;
the VAD worker then decodes and resamples every chunk to 16 kHz). Each stream count runs once per
plan seed (`--seeds`; by default the stream count itself, the plans the README's figures used).

How results are counted (the pure functions below; tests/test_streams_benchmark.py checks them):
- each stream's planned utterances and its results (segments) are matched one to one on stream
  time: an optimal assignment (`match_one_to_one`) with as many overlapping pairs as possible, then
  the most overlap, so a segment spanning two utterances satisfies only one of them;
- a result arrives as a pub/sub notice; its first notice counts, a repeat of the same stream and
  segment index is a duplicate; after the drain every result is also looked up in Redis (its result
  key) and read back from the emotions topic, and results missing from either, or never notified,
  are reported;
- lost: a planned utterance no result matches; unmatched: a result that matches no utterance.

Printed per run:
- latency from the end of an utterance (audio time) to the pub/sub notice of its result, p50 / p95
  / p99, and the same minus the VAD hangover (the end-pointer must hear `hangover_ms` of silence
  before it may close a segment);
- where that time went, p50 / p95 per part (`LATENCY_PARTS`; from the result's LatencyBreakdown and
  wall-clock stamps); per result the parts sum to its latency beyond the hangover. The time to the
  VAD worker is split three ways where the chunk that closed the segment is known: the end-pointer
  is replayed offline on each stream's chunks (`closing_chunks`), which gives that chunk's due time,
  and the sender records when it sent each chunk: endpoint (end-pointer lag + chunk wait, audio
  time), send_late (the load generator behind real time on the shared cores), to_vad (producer,
  broker, fetch);
- the plan: pauses between utterances and utterance lengths (min / median / max);
- CPU: cores used by the workers, broker + Redis and the load generator during the steady window,
  and per stream; the machine's load average and busy cores, and the benchmark's share of them;
- the same latency less the load generator's lateness (send_late): the generator shares the cores,
  and at 200 streams on 2 cores it fell seconds behind real time (a gateway on its own machine
  would not);
- sustained: nothing lost, nothing missing from Redis or the topic, and p95 beyond hangover <=
  --target-p95-ms (the figure with the generator's lateness in it).
With several seeds, each stream count's spread over them follows its runs. `--png PATH` plots p50
and p95 beyond the hangover against the stream count; `--json` prints one JSON object per run (and
per spread) instead of text.

Usage: python benchmarks/streams_benchmark.py --streams 100,200,300 --duration-s 60
       python benchmarks/streams_benchmark.py --streams 100,200 --seeds 1,2,3 --png streams.png
       python benchmarks/streams_benchmark.py --streams 200 --chunk-ms 20 --inference-workers 2 --partitions 8
       python benchmarks/streams_benchmark.py --streams 200 --sample-rate-hz 8000 --encoding mulaw
"""

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import soundfile as sf
import soxr
from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ, AudioEncoding
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import latest_key, result_key, results_channel
from emostream.schemas.segment import SegmentHeader
from emostream.schemas.settings import DEFAULT_MODEL, InferenceSettings, KafkaSettings, Settings
from emostream.workers.cli.clients.producer import encode_s16
from emostream.workers.runtime.codecs import decode_to_s16
from emostream.workers.stages.stream_state import Chunk, StreamParams, StreamState
from emostream.workers.cli.clients.tail import (
    BadResult,
    TailFilter,
    iter_events,
    make_tail_consumer,
)
from emostream.workers.runtime.stage_names import StageName
from emostream.workers.stack.local_stack import LocalStack, StackCounts
from prometheus_client.parser import text_string_to_metric_families
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
SPEECH_WAV = REPO / "tests" / "fixtures" / "speech.wav"
SPEECH_JSON = REPO / "tests" / "fixtures" / "speech.json"
FIXTURE_RATE_HZ = PIPELINE_SAMPLE_RATE_HZ  # the speech fixture's rate; --sample-rate-hz 8000 resamples it once
SEND_RATES_HZ = (8_000, 16_000)  # telephony gateways send 8 kHz (G.711); wideband ones 16 kHz
CLOCK_TICKS_S = os.sysconf("SC_CLK_TCK")
SEND_GROUPS = 10  # each chunk period is split into this many send bursts
# the fixture's utterance boundaries are cut this much wider (espeak's soft edges)
UTTERANCE_MARGIN_MS = 60
FIRST_UTTERANCE_MIN_S = 0.3  # the first utterance starts this late at the earliest
TAIL_SILENCE_S = 1.0  # no utterance ends in the last second of a stream
TOPIC_IDLE_S = 3.0  # reading the emotions topic back stops after this long without a record
TOPIC_WAIT_S = 10.0  # for the emotions topic to be found when reading it back
QUANTILES = (50, 95, 99)
SENDER_CONTEXT = multiprocessing.get_context("spawn")  # the benchmark has threads: no fork
SENDER_MAX_BATCH_BYTES = 256 * 1024  # per partition and request (aiokafka's default: 16 KiB)
SENDER_START_S = 30.0  # for the sender process to start (imports) and to send its times back

ResultKey = tuple[str, int]  # (stream id, segment index)

# Where the latency beyond the hangover goes, in order; per result they sum to it.
# "endpoint", "send_late" and "to_vad" split "audio_to_vad" where the closing chunk is known (the
# end-pointer replayed on the stream's chunks, closing_chunks); a result has one form or the other.
LATENCY_PARTS: dict[str, str] = {
    "endpoint": "utterance end + hangover (audio time) -> the end of the chunk that closed the segment "
    "(audio time): the end-pointer's own lag and the wait for the chunk holding the closing frame",
    "send_late": "that chunk's due time -> the load generator sent it (the generator behind real time)",
    "to_vad": "chunk sent -> the VAD worker received it: producer, broker, fetch, the VAD's queue",
    "audio_to_vad": "utterance end + hangover (audio time) -> the VAD worker received the chunk "
    "that closed the segment (endpoint + send_late + to_vad, where the closing chunk is not known)",
    "vad": "that chunk received -> segment emitted (LatencyBreakdown.vad_ms)",
    "queue": "segment emitted -> picked up by an inference worker (LatencyBreakdown.queue_ms)",
    "inference": "features + model of its micro-batch (LatencyBreakdown.inference_ms)",
    "other": "the rest of the inference worker's total_ms (parsing, cache look-up, the batch's "
    "other work)",
    "publish": "result made -> its notice here: emotions topic send, Redis write, pub/sub "
    "(with --stages vad: segment emitted -> read here from the segments topic)",
}


# the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """Where speech is in a planned stream, in stream time (ms since its first sample)."""

    start_ms: float
    end_ms: float

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass
class StreamPlan:
    stream_id: str
    # (start sample, int16 speech samples at sample_rate_hz)
    placements: list[tuple[int, np.ndarray]]
    utterances: list[Utterance]
    sample_rate_hz: int = FIXTURE_RATE_HZ  # the rate the stream is sent at

    def chunk(self, start_sample: int, samples: int) -> np.ndarray | None:
        """The chunk's int16 samples, or None when it is all silence."""
        out: np.ndarray | None = None
        end_sample = start_sample + samples
        for place, speech in self.placements:
            lo, hi = max(place, start_sample), min(place + len(speech), end_sample)
            if lo < hi:
                if out is None:
                    out = np.zeros(samples, dtype=np.int16)
                out[lo - start_sample : hi - start_sample] = speech[lo - place : hi - place]
        return out


def load_utterances(sample_rate_hz: int = FIXTURE_RATE_HZ) -> list[np.ndarray]:
    """The fixture's utterances as int16 samples at `sample_rate_hz`, cut UTTERANCE_MARGIN_MS wider
    (resampled once here with soxr, as a telephony gateway's 8 kHz audio would arrive)."""
    samples, rate_hz = sf.read(SPEECH_WAV, dtype="int16")
    if rate_hz != FIXTURE_RATE_HZ:
        raise ValueError(f"{SPEECH_WAV}: {rate_hz} Hz, expected {FIXTURE_RATE_HZ}")
    card = json.loads(SPEECH_JSON.read_text())
    pieces = []
    for item in card["utterances"]:
        start = max(0, (item["start_ms"] - UTTERANCE_MARGIN_MS) * FIXTURE_RATE_HZ // 1000)
        end = min(len(samples), (item["end_ms"] + UTTERANCE_MARGIN_MS) * FIXTURE_RATE_HZ // 1000)
        piece = samples[start:end]
        if sample_rate_hz != FIXTURE_RATE_HZ:
            piece = soxr.resample(piece, FIXTURE_RATE_HZ, sample_rate_hz, quality="HQ")
        pieces.append(piece)
    return pieces


def plan_streams(
    count: int, duration_s: float, *, pause_s: tuple[float, float], seed: int,
    sample_rate_hz: int = FIXTURE_RATE_HZ,
) -> list[StreamPlan]:
    """Per stream: pause, utterance, pause, utterance, ... until the duration (random, seeded)."""
    rng = random.Random(seed)
    speech = load_utterances(sample_rate_hz)
    plans = []
    for index in range(count):
        placements, utterances = [], []
        position_s = rng.uniform(FIRST_UTTERANCE_MIN_S, pause_s[1])
        while True:
            piece = speech[rng.randrange(len(speech))]
            end_s = position_s + len(piece) / sample_rate_hz
            if end_s > duration_s - TAIL_SILENCE_S:
                break
            start = int(position_s * sample_rate_hz)
            placements.append((start, piece))
            # the speech itself (without the margins cut around it) is where the utterance is
            utterances.append(
                Utterance(
                    1000.0 * start / sample_rate_hz + UTTERANCE_MARGIN_MS,
                    1000.0 * (start + len(piece)) / sample_rate_hz - UTTERANCE_MARGIN_MS,
                )
            )
            position_s = end_s + rng.uniform(*pause_s)
        plans.append(StreamPlan(f"bench-{seed}-{index:04d}:customer", placements, utterances, sample_rate_hz))
    return plans


# results and matching (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentResult:
    """One segment's result as the benchmark saw it (with --stages vad: the segment itself).

    Times named `*_at_ms` are wall clock (Unix ms, one machine's clock); `start_ms` / `end_ms` are
    stream time.
    """

    stream_id: str
    segment_index: int
    start_ms: float
    end_ms: float
    received_at_ms: float | None = None  # its pub/sub notice reached the benchmark; None: none came
    speech_end_at_ms: float | None = None  # the VAD worker received the chunk closing the segment
    made_at_ms: float | None = None  # the result (segment) was made
    # the worker's own figures: vad / queue / inference / other, and their total
    stage_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def key(self) -> ResultKey:
        return (self.stream_id, self.segment_index)


def result_from_event(event: EmotionEvent, *, received_at_ms: float | None) -> SegmentResult:
    """The benchmark's view of an EmotionEvent: its times and its LatencyBreakdown's parts."""
    latency = event.latency
    stage_ms = {
        name: value
        for name, value in (
            ("vad", latency.vad_ms),
            ("queue", latency.queue_ms),
            ("inference", latency.inference_ms),
        )
        if value is not None
    }
    if latency.total_ms is not None:
        if len(stage_ms) == 3:
            stage_ms["other"] = latency.total_ms - sum(stage_ms.values())
        stage_ms["total"] = latency.total_ms  # not a part: the sum of vad .. other
    speech_end_at_ms = (
        None
        if event.created_at_ms is None or latency.total_ms is None
        else event.created_at_ms - latency.total_ms
    )
    return SegmentResult(
        stream_id=event.stream_id,
        segment_index=event.segment_index,
        start_ms=event.start_ms,
        end_ms=event.end_ms,
        received_at_ms=received_at_ms,
        speech_end_at_ms=speech_end_at_ms,
        made_at_ms=None if event.created_at_ms is None else float(event.created_at_ms),
        stage_ms=stage_ms,
    )


def result_from_segment(header: SegmentHeader, *, received_at_ms: float) -> SegmentResult:
    """--stages vad: the segment as read from the segments topic."""
    stage_ms = {}
    if header.emitted_at_ms is not None and header.speech_end_at_ms is not None:
        stage_ms["vad"] = float(header.emitted_at_ms - header.speech_end_at_ms)
    return SegmentResult(
        stream_id=header.stream_id,
        segment_index=header.segment_index,
        start_ms=header.start_ms,
        end_ms=header.end_ms,
        received_at_ms=received_at_ms,
        speech_end_at_ms=None
        if header.speech_end_at_ms is None
        else float(header.speech_end_at_ms),
        made_at_ms=None if header.emitted_at_ms is None else float(header.emitted_at_ms),
        stage_ms=stage_ms,
    )


def first_arrivals(results: Iterable[SegmentResult]) -> tuple[list[SegmentResult], int]:
    """Each (stream id, segment index) once, at its earliest arrival; and how many repeats there were."""
    first: dict[ResultKey, SegmentResult] = {}
    seen = 0
    for result in results:
        seen += 1
        kept = first.get(result.key)
        if kept is None or _earlier(result, kept):
            first[result.key] = result
    return list(first.values()), seen - len(first)


def _earlier(result: SegmentResult, than: SegmentResult) -> bool:
    if result.received_at_ms is None:
        return False
    return than.received_at_ms is None or result.received_at_ms < than.received_at_ms


def overlap_ms(utterance: Utterance, start_ms: float, end_ms: float) -> float:
    """Stream time shared by the utterance and [start_ms, end_ms); 0 when they do not meet."""
    return max(0.0, min(utterance.end_ms, end_ms) - max(utterance.start_ms, start_ms))


def match_one_to_one(
    utterances: Sequence[Utterance], results: Sequence[SegmentResult]
) -> list[tuple[int, int]]:
    """(utterance index, result index) pairs of one stream, sorted.

    Each utterance and each result is in at most one pair, and the two of a pair overlap in stream
    time. Optimal: as many pairs as possible, and among those the most overlap in total (a pair is
    worth more than all overlaps together, so the count comes first).
    """
    if not utterances or not results:
        return []
    overlaps = np.array(
        [[overlap_ms(utterance, r.start_ms, r.end_ms) for r in results] for utterance in utterances]
    )
    pair_worth = 1.0 + float(overlaps.sum())
    weights = np.where(overlaps > 0, pair_worth + overlaps, 0.0)
    rows, columns = linear_sum_assignment(weights, maximize=True)
    return sorted((int(u), int(r)) for u, r in zip(rows, columns) if overlaps[u, r] > 0)


@dataclass(frozen=True)
class Matching:
    """Planned utterances against results, every stream."""

    pairs: list[tuple[str, Utterance, SegmentResult]]  # (stream id, utterance, its result)
    lost: list[tuple[str, Utterance]]  # utterances no result matched
    unmatched: list[SegmentResult]  # results matching no utterance (or of a stream not planned)


def match_streams(
    utterances_by_stream: Mapping[str, Sequence[Utterance]], results: Iterable[SegmentResult]
) -> Matching:
    """One-to-one matching per stream (`match_one_to_one`); results must be distinct (see `first_arrivals`)."""
    by_stream: dict[str, list[SegmentResult]] = {}
    for result in results:
        by_stream.setdefault(result.stream_id, []).append(result)
    pairs: list[tuple[str, Utterance, SegmentResult]] = []
    lost: list[tuple[str, Utterance]] = []
    unmatched: list[SegmentResult] = []
    for stream_id, utterances in utterances_by_stream.items():
        got = sorted(by_stream.pop(stream_id, []), key=lambda r: r.segment_index)
        matched = match_one_to_one(utterances, got)
        matched_utterances = {u for u, _ in matched}
        matched_results = {r for _, r in matched}
        pairs += [(stream_id, utterances[u], got[r]) for u, r in matched]
        lost += [(stream_id, u) for i, u in enumerate(utterances) if i not in matched_utterances]
        unmatched += [r for i, r in enumerate(got) if i not in matched_results]
    for strays in by_stream.values():
        unmatched += strays
    return Matching(pairs, lost, unmatched)


@dataclass(frozen=True)
class CrossCheck:
    """Which results each place holds: pub/sub notices, Redis result keys, the emotions topic."""

    notified: int
    in_redis: int
    on_topic: int
    missing_from_redis: list[ResultKey]
    missing_from_topic: list[ResultKey]
    not_notified: list[ResultKey]


def cross_check(
    *, notified: set[ResultKey], in_redis: set[ResultKey], on_topic: set[ResultKey]
) -> CrossCheck:
    """Every result any of the three places holds, checked against each place."""
    every = notified | in_redis | on_topic
    return CrossCheck(
        notified=len(notified),
        in_redis=len(in_redis),
        on_topic=len(on_topic),
        missing_from_redis=sorted(every - in_redis),
        missing_from_topic=sorted(every - on_topic),
        not_notified=sorted(every - notified),
    )


# statistics (pure) ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@dataclass(frozen=True)
class Spread:
    """min / median / max of some values; None when there were none."""

    count: int
    min: float | None
    median: float | None
    max: float | None


def spread(values: Sequence[float]) -> Spread:
    if not values:
        return Spread(0, None, None, None)
    return Spread(len(values), min(values), statistics.median(values), max(values))


@dataclass(frozen=True)
class PlanShape:
    """The pause distribution a plan used: silence between utterances, and utterance lengths."""

    pauses_s: Spread
    utterances_s: Spread


def plan_shape(utterances_by_stream: Mapping[str, Sequence[Utterance]]) -> PlanShape:
    pauses_s: list[float] = []
    lengths_s: list[float] = []
    for utterances in utterances_by_stream.values():
        ordered = sorted(utterances, key=lambda u: u.start_ms)
        lengths_s += [u.duration_ms / 1000 for u in ordered]
        pauses_s += [(b.start_ms - a.end_ms) / 1000 for a, b in itertools.pairwise(ordered)]
    return PlanShape(spread(pauses_s), spread(lengths_s))


def latency_ms(result: SegmentResult, *, utterance_end_at_ms: float) -> float | None:
    """Utterance end (wall clock of its audio) -> the result's notice; None without a notice."""
    if result.received_at_ms is None:
        return None
    return result.received_at_ms - utterance_end_at_ms


def latency_parts_ms(
    result: SegmentResult,
    *,
    utterance_end_at_ms: float,
    hangover_ms: float,
    closing_chunk_at_ms: tuple[float, float] | None = None,
) -> dict[str, float]:
    """The parts of `LATENCY_PARTS` this result carries; all of them sum to latency - hangover.
    `closing_chunk_at_ms`: (due, sent) wall clock of the chunk that closed the segment, if known."""
    parts: dict[str, float] = {}
    if result.speech_end_at_ms is not None and closing_chunk_at_ms is not None:
        due_at_ms, sent_at_ms = closing_chunk_at_ms
        parts["endpoint"] = due_at_ms - utterance_end_at_ms - hangover_ms
        parts["send_late"] = sent_at_ms - due_at_ms
        parts["to_vad"] = result.speech_end_at_ms - sent_at_ms
    elif result.speech_end_at_ms is not None:
        parts["audio_to_vad"] = result.speech_end_at_ms - utterance_end_at_ms - hangover_ms
    parts.update(result.stage_ms)
    if result.made_at_ms is not None and result.received_at_ms is not None:
        parts["publish"] = result.received_at_ms - result.made_at_ms
    return {name: parts[name] for name in LATENCY_PARTS if name in parts}


@dataclass(frozen=True)
class ClosingChunk:
    """The chunk whose arrival closed a segment, found by replaying the end-pointer offline."""

    seq: int
    segment_end_ms: float  # the replayed segment's end (stream time), to check it is the worker's


def closing_chunks(
    plan: StreamPlan, *, chunk_ms: int, chunks: int, encoding: AudioEncoding, params: StreamParams
) -> dict[int, ClosingChunk]:
    """Segment index -> the chunk that closed it, by feeding the stream's chunks, encoded and decoded
    as sender and VAD worker do, in order through the worker's own per-stream state (its resampling
    to 16 kHz and end-pointer); seq `chunks` is the end of stream."""
    state: StreamState[int] = StreamState(plan.stream_id, params)
    chunk_samples = plan.sample_rate_hz * chunk_ms // 1000
    silence = np.zeros(chunk_samples, dtype=np.int16)
    closing: dict[int, ClosingChunk] = {}
    for seq in range(chunks + 1):
        if seq < chunks:
            samples = plan.chunk(seq * chunk_samples, chunk_samples)
            pcm = decode_to_s16(encode_s16(silence if samples is None else samples, encoding), encoding)
        else:
            pcm = np.zeros(0, dtype=np.int16)
        step = state.accept(Chunk(seq, pcm, plan.sample_rate_hz, end_of_stream=seq == chunks), seq)
        for segment in step.segments:
            closing[segment.index] = ClosingChunk(seq, segment.end_ms)
    return closing


def replay_disagreement(result: SegmentResult, closing: Mapping[int, ClosingChunk], sent_chunks: int) -> str | None:
    """Why the replay cannot place this result's closing chunk; None where it can."""
    chunk = closing.get(result.segment_index)
    if chunk is None:
        return f"the replay has no segment {result.segment_index} (it cut {len(closing)})"
    if abs(chunk.segment_end_ms - result.end_ms) > 1.0:
        return (f"segment {result.segment_index} ends at {result.end_ms:.0f} ms in the worker, "
                f"{chunk.segment_end_ms:.0f} ms in the replay")
    if chunk.seq >= sent_chunks:
        return f"segment {result.segment_index} was closed by chunk {chunk.seq}, which was not sent"
    return None


def closing_chunk_at_ms(
    result: SegmentResult,
    closing: Mapping[int, ClosingChunk],
    *,
    origin_s: float,
    chunk_ms: int,
    sent_at_s: Sequence[float],
) -> tuple[float, float] | None:
    """(due, sent) wall clock of the chunk that closed this result's segment; None where the replay
    does not hold this segment (another end, so another segmentation) or the chunk was not sent."""
    if replay_disagreement(result, closing, len(sent_at_s)) is not None:
        return None
    chunk = closing[result.segment_index]
    due_at_ms = 1000.0 * origin_s + (chunk.seq + 1) * chunk_ms
    return due_at_ms, 1000.0 * sent_at_s[chunk.seq]


def quantiles(values: Sequence[float], qs: Sequence[int] = QUANTILES) -> dict[int, float | None]:
    return {q: _round(percentile(values, q)) for q in qs}


def seed_spread(reports: Sequence[Mapping[str, Any]]) -> dict[str, Spread]:
    """Over the runs of one stream count (one per seed): the spread of the headline figures."""

    def values(*path: Any) -> list[float]:
        found = []
        for report in reports:
            value: Any = report
            for step in path:
                value = value[step]
            if value is not None:
                found.append(float(value))
        return found

    return {
        "p50_beyond_hangover_ms": spread(values("beyond_hangover_ms", 50)),
        "p95_beyond_hangover_ms": spread(values("beyond_hangover_ms", 95)),
        "p95_beyond_hangover_less_sender_late_ms": spread(values("beyond_hangover_less_sender_late_ms", 95)),
        "lost": spread(values("lost")),
        "unmatched_results": spread(values("unmatched_results")),
        "duplicates": spread(values("duplicates")),
        "workers_cpu_ms_per_stream_s": spread(values("cpu_ms_per_stream_s", "workers")),
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# collecting results ---------------------------------------------------------------------------


@dataclass
class Notices:
    """Results as they arrive (pub/sub notices, or segments with --stages vad), from a listener thread."""

    received: list[SegmentResult] = field(default_factory=list)
    unreadable: int = 0

    def listen(self, url: str, channel: str, stop: threading.Event) -> None:
        client = redis.Redis.from_url(url)
        pubsub = client.pubsub()
        pubsub.subscribe(channel)
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                now_ms = 1000.0 * time.time()
                try:
                    event = EmotionEvent.model_validate_json(message["data"])
                except ValueError:
                    self.unreadable += 1
                    continue
                self.received.append(result_from_event(event, received_at_ms=now_ms))
        pubsub.close()
        client.close()

    def listen_segments(self, settings: Settings, stop: threading.Event) -> None:
        """--stages vad: segments as they reach the segments topic (no inference, no Redis)."""
        asyncio.run(self._listen_segments(settings, stop))

    async def _listen_segments(self, settings: Settings, stop: threading.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            settings.topics.segments,
            bootstrap_servers=settings.kafka.bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                now_ms = 1000.0 * time.time()
                for records in batches.values():
                    for record in records:
                        header = SegmentHeader.from_kafka(record.key, record.headers)
                        self.received.append(result_from_segment(header, received_at_ms=now_ms))
        finally:
            await consumer.stop()


def redis_results(settings: Settings, stream_ids: Sequence[str]) -> list[EmotionEvent]:
    """The results Redis holds for these streams: every result key up to each stream's latest."""
    prefix = settings.redis.key_prefix
    client = redis.Redis.from_url(settings.redis.url)
    try:
        pipe = client.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.get(latest_key(prefix, stream_id))
        latest = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for stream_id, text in zip(stream_ids, latest):
            if text:
                highest = EmotionEvent.model_validate_json(text).segment_index
                for index in range(highest + 1):
                    pipe.get(result_key(prefix, stream_id, index))
        stored = pipe.execute()
    finally:
        client.close()
    return [EmotionEvent.model_validate_json(text) for text in stored if text]


def topic_results(settings: Settings) -> tuple[list[EmotionEvent], int]:
    """Every record of the emotions topic (from offset 0, no group, as `emostream tail` reads) and
    how many were not readable EmotionEvents."""
    consumer = make_tail_consumer(settings, topic=settings.topics.emotions, wait_s=TOPIC_WAIT_S)
    events: list[EmotionEvent] = []
    bad = 0
    try:
        for item in iter_events(consumer, selection=TailFilter(), idle_timeout_s=TOPIC_IDLE_S):
            if isinstance(item, BadResult):
                bad += 1
            else:
                events.append(item)
    finally:
        consumer.close()
    return events, bad


# machine load ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_S  # utime + stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_S


# load generator -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSpec:
    """What `plan_streams` needs: the sender process plans the same streams from it."""

    streams: int
    duration_s: float
    pause_s: tuple[float, float]
    seed: int
    sample_rate_hz: int = FIXTURE_RATE_HZ

    def plans(self) -> list[StreamPlan]:
        return plan_streams(self.streams, self.duration_s, pause_s=self.pause_s, seed=self.seed,
                            sample_rate_hz=self.sample_rate_hz)


@dataclass
class SendTimes:
    """What the sender reports back: per stream the wall clock (Unix s) at which its audio time 0 is
    spoken and at which chunk k began to be sent (index k), and how late each send round was."""

    origins_s: dict[str, float] = field(default_factory=dict)
    sent_at_s: dict[str, list[float]] = field(default_factory=dict)
    lateness_s: list[float] = field(default_factory=list)


def send_streams(
    settings: Settings,
    spec: PlanSpec,
    connection: Any,
    *,
    chunk_ms: int,
    encoding: AudioEncoding,
) -> None:
    """The sender process: chunk k of every stream when its audio is complete, then end of stream;
    its SendTimes go back through `connection` (a multiprocessing Pipe end).

    A process of its own, not a thread of the benchmark: in one process its asyncio loop shared the
    GIL with the pub/sub listener. Uses aiokafka (C record batches) rather than kafka-python, whose
    pure-Python CRC-32C costs ~0.5 ms of CPU per 3 kB record here: the load generator shares the
    cores with the workers.
    """
    times = SendTimes()
    try:
        asyncio.run(_send_streams(settings, spec.plans(), chunk_ms=chunk_ms, duration_s=spec.duration_s,
                                  encoding=encoding, times=times))
    finally:
        connection.send(times)
        connection.close()


async def _send_streams(
    settings: Settings,
    plans: list[StreamPlan],
    *,
    chunk_ms: int,
    duration_s: float,
    encoding: AudioEncoding,
    times: SendTimes,
) -> None:
    from aiokafka import AIOKafkaProducer

    # aiokafka batches at most max_batch_size bytes per partition per request (16 KiB by default:
    # five 3.2 kB chunks), one request in flight per partition; at 200 streams (2,000 chunks a
    # second on 4 partitions) that needs a broker round trip under 10 ms, and the sender fell
    # seconds behind real time. A gateway's per-call producers each send far fewer.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=SENDER_MAX_BATCH_BYTES,
    )
    await producer.start()
    rate_hz = plans[0].sample_rate_hz
    chunk_samples = rate_hz * chunk_ms // 1000
    chunks = int(duration_s * 1000 // chunk_ms)
    groups = [plans[g::SEND_GROUPS] for g in range(SEND_GROUPS)]
    began = time.time() + 0.5
    group_sent_at_s: list[list[float]] = [[] for _ in groups]
    for g, group in enumerate(groups):
        for plan in group:  # audio time 0 of this stream is spoken at this wall time
            times.origins_s[plan.stream_id] = began + g * chunk_ms / 1000 / SEND_GROUPS
            times.sent_at_s[plan.stream_id] = group_sent_at_s[g]  # one list per group, shared
    topic = settings.topics.audio
    silence = {enc: encode_s16(np.zeros(chunk_samples, np.int16), enc) for enc in AudioEncoding}
    fixed = [("v", b"1"), ("rate", str(rate_hz).encode()), ("enc", encoding.value.encode())]
    keys = {plan.stream_id: plan.stream_id.encode() for plan in plans}
    pending = []
    for seq in range(chunks + 1):
        for g, group in enumerate(groups):
            due = began + (seq + 1) * chunk_ms / 1000 + g * chunk_ms / 1000 / SEND_GROUPS
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                times.lateness_s.append(-delay)
            group_sent_at_s[g].append(time.time())
            eos = seq == chunks
            # headers as AudioChunkHeader.to_kafka_headers() writes them, built by hand to stay cheap
            headers = fixed + [("seq", str(seq).encode()), ("eos", b"true" if eos else b"false")]
            for plan in group:
                if eos:
                    value = b""
                else:
                    samples = plan.chunk(seq * chunk_samples, chunk_samples)
                    value = silence[encoding] if samples is None else encode_s16(samples, encoding)
                pending.append(
                    await producer.send(
                        topic, key=keys[plan.stream_id], value=value, headers=headers
                    )
                )
        if len(pending) > 10_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await producer.stop()


# counting one run (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ResultCounts:
    """One run's results counted against its plan."""

    matching: Matching
    duplicates: int  # repeated notices of a stream and segment index
    check: CrossCheck | None  # None with --stages vad (no Redis, no emotions topic)
    topic_duplicates: int  # repeated records of a stream and segment index on the emotions topic


def count_results(
    utterances_by_stream: Mapping[str, Sequence[Utterance]],
    notices: Iterable[SegmentResult],
    *,
    stored: Sequence[EmotionEvent] | None,
    on_topic: Sequence[EmotionEvent] | None,
) -> ResultCounts:
    """Duplicates dropped, every result checked against Redis and the topic (when given), then
    matched: a result Redis or the topic holds but no notice announced still satisfies an
    utterance (it has no latency)."""
    notified, duplicates = first_arrivals(notices)
    if stored is None or on_topic is None:
        return ResultCounts(match_streams(utterances_by_stream, notified), duplicates, None, 0)
    known = {r.key for r in notified}
    topic_keys = {(e.stream_id, e.segment_index) for e in on_topic}
    check = cross_check(
        notified=set(known),
        in_redis={(e.stream_id, e.segment_index) for e in stored},
        on_topic=topic_keys,
    )
    results = list(notified)
    for event in [*stored, *on_topic]:
        if (event.stream_id, event.segment_index) not in known:
            known.add((event.stream_id, event.segment_index))
            results.append(result_from_event(event, received_at_ms=None))
    return ResultCounts(
        match_streams(utterances_by_stream, results),
        duplicates,
        check,
        len(on_topic) - len(topic_keys),
    )


@dataclass(frozen=True)
class LatencySamples:
    latencies_ms: list[float]  # end of utterance (its audio's wall clock) -> notice of its result
    parts_ms: dict[str, list[float]]  # LATENCY_PARTS name -> values
    worker_total_ms: list[float]  # LatencyBreakdown.total_ms: speech end received -> result made
    # latency beyond the hangover less the load generator's lateness (send_late), where known: the
    # pipeline's own, with the gateway's sends as they happened on the shared cores
    pipeline_beyond_ms: list[float] = field(default_factory=list)


def vad_chunk_outcomes(metrics_texts: Iterable[str]) -> dict[str, int]:
    """The VAD workers' chunk and gap counters (Prometheus text of each worker's /metrics), summed:
    chunks processed, duplicate, late, lost; gaps filled, closed. Anything but `processed` means a
    worker saw other audio than the sender sent, and the offline replay then cuts other segments."""
    totals: dict[str, int] = {}
    for text in metrics_texts:
        for family in text_string_to_metric_families(text):
            if family.name not in ("emostream_chunks", "emostream_gaps"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    label = sample.labels.get("outcome") or f"gaps_{sample.labels.get('handling')}"
                    totals[label] = totals.get(label, 0) + int(sample.value)
    return totals


def closing_times(
    plans: Sequence[StreamPlan],
    pairs: Sequence[tuple[str, Utterance, SegmentResult]],
    *,
    settings: Settings,
    chunk_ms: int,
    chunks: int,
    encoding: AudioEncoding,
    origins_s: Mapping[str, float],
    sent_at_s: Mapping[str, Sequence[float]],
) -> tuple[dict[ResultKey, tuple[float, float]], list[str]]:
    """(due, sent) of the closing chunk of every matched result the replay agrees with, and why the
    replay disagrees (stream: reason) for every other matched result."""
    params = StreamParams.from_settings(settings.vad)
    by_stream = {plan.stream_id: plan for plan in plans}
    replayed: dict[str, dict[int, ClosingChunk]] = {}
    times: dict[ResultKey, tuple[float, float]] = {}
    disagreements: list[str] = []
    for stream_id, _, result in pairs:
        if stream_id not in replayed:
            replayed[stream_id] = closing_chunks(by_stream[stream_id], chunk_ms=chunk_ms, chunks=chunks,
                                                 encoding=encoding, params=params)
        sent = sent_at_s.get(stream_id, ())
        found = closing_chunk_at_ms(result, replayed[stream_id], origin_s=origins_s[stream_id],
                                    chunk_ms=chunk_ms, sent_at_s=sent)
        if found is not None:
            times[result.key] = found
        else:
            disagreements.append(f"{stream_id}: {replay_disagreement(result, replayed[stream_id], len(sent))}")
    return times, disagreements


def latency_samples(
    pairs: Iterable[tuple[str, Utterance, SegmentResult]],
    *,
    origins_s: Mapping[str, float],
    hangover_ms: float,
    closing_at_ms: Mapping[ResultKey, tuple[float, float]] | None = None,
) -> LatencySamples:
    """Latency and its parts of every matched result with a notice; `origins_s` is the wall clock
    (Unix s) at which each stream's audio time 0 was spoken; `closing_at_ms`, per result key, the
    (due, sent) wall clock of the chunk that closed its segment where known."""
    latencies: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name in LATENCY_PARTS}
    worker_total_ms: list[float] = []
    pipeline_beyond_ms: list[float] = []
    for stream_id, utterance, result in pairs:
        end_at_ms = 1000.0 * origins_s[stream_id] + utterance.end_ms
        latency = latency_ms(result, utterance_end_at_ms=end_at_ms)
        if latency is None:
            continue
        latencies.append(latency)
        found = latency_parts_ms(result, utterance_end_at_ms=end_at_ms, hangover_ms=hangover_ms,
                                 closing_chunk_at_ms=(closing_at_ms or {}).get(result.key))
        for name, value in found.items():
            parts[name].append(value)
        if "send_late" in found:
            pipeline_beyond_ms.append(latency - hangover_ms - found["send_late"])
        if "total" in result.stage_ms:
            worker_total_ms.append(result.stage_ms["total"])
    return LatencySamples(latencies, parts, worker_total_ms, pipeline_beyond_ms)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far, to subtract: named processes, this one, the whole machine."""

    process_s: dict[str, float]
    generator_s: float  # this process: the load generator and listeners
    machine_busy_s: float
    monotonic_s: float
    load_average: tuple[float, float, float]

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> "CpuSnapshot":
        return cls(
            {name: cpu_seconds(pid) for name, pid in pids.items()},
            time.process_time(),
            machine_busy_seconds(),
            time.monotonic(),
            os.getloadavg(),
        )


def cores_used(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """Cores each named process used between the snapshots, plus `load_generator` and
    `machine_busy` (every process on the machine)."""
    window_s = end.monotonic_s - start.monotonic_s
    cores = {
        name: (end.process_s[name] - start.process_s[name]) / window_s for name in start.process_s
    }
    # this process's listeners, and the sender process where it is one of the named ones
    cores["load_generator"] = (end.generator_s - start.generator_s) / window_s + cores.pop("sender", 0.0)
    cores["machine_busy"] = (end.machine_busy_s - start.machine_busy_s) / window_s
    return cores


# one run --------------------------------------------------------------------------------------


def run_once(args: argparse.Namespace, streams: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One stack, `streams` streams of the plan of `seed`; the run's report (JSON-ready)."""
    with_inference = "inference" in args.stages
    tag = f"bench{streams}-s{seed}-{int(time.time())}"
    settings = Settings(
        topics={
            "partitions": args.partitions,
            "audio": f"audio.{tag}",
            "segments": f"segments.{tag}",
            "emotions": f"emotions.{tag}",
            "alerts": f"alerts.{tag}",
            "dead_letters": f"dead.{tag}",
        },
        inference={"model": args.model, "batch_max": args.batch_max, "batch_within_s": args.batch_within_s},
        kafka={"fetch_max_wait_ms": args.fetch_max_wait_ms},
        observability={"log_level": "WARNING"},
        worker_id=tag,
    )
    counts = StackCounts(
        vad=1, inference=args.inference_workers if with_inference else 0, plugins=0
    )
    stack = LocalStack(settings, counts=counts, log_dir=workdir / tag)
    stop = threading.Event()
    notices = Notices()
    spec = PlanSpec(streams, args.duration_s, (args.pause_min_s, args.pause_max_s), seed, args.sample_rate_hz)
    plans = spec.plans()
    utterances_by_stream = {plan.stream_id: plan.utterances for plan in plans}
    times = SendTimes()
    stored: list[EmotionEvent] | None = None
    on_topic: list[EmotionEvent] | None = None
    topic_unreadable = 0
    try:
        stack.start(wait=False)
        stack.wait_healthy(args.ready_timeout_s)
        settings = stack.settings
        if with_inference:
            channel = results_channel(settings.redis.key_prefix)
            listener = threading.Thread(
                target=notices.listen, args=(settings.redis.url, channel, stop), daemon=True
            )
        else:
            listener = threading.Thread(
                target=notices.listen_segments, args=(settings, stop), daemon=True
            )
        listener.start()
        receiving, sending = SENDER_CONTEXT.Pipe(duplex=False)
        sender = SENDER_CONTEXT.Process(
            target=send_streams,
            args=(settings, spec, sending),
            kwargs={"chunk_ms": args.chunk_ms, "encoding": AudioEncoding(args.encoding)},
            daemon=True,
        )
        services = {"broker": stack.broker, "redis": stack.redis}
        pids = {p.name: p.pid for p in stack.workers} | {n: s.pid for n, s in services.items() if s}
        sender.start()
        pids["sender"] = sender.pid
        warmup_s = min(10.0, args.duration_s / 4)
        time.sleep(warmup_s)
        cpu_start = CpuSnapshot.take({name: pid for name, pid in pids.items() if pid})
        time.sleep(max(1.0, args.duration_s - 2 * warmup_s))
        cpu_end = CpuSnapshot.take({name: pid for name, pid in pids.items() if pid})
        if receiving.poll(args.duration_s + SENDER_START_S):
            times = receiving.recv()
        sender.join(SENDER_START_S)
        if not times.origins_s:
            raise RuntimeError(f"the sender process sent nothing back (exit code {sender.exitcode})")
        # drain: results still queued arrive late but are not lost; wait until none came for drain_s
        last_count, quiet_since, drain_began = -1, time.monotonic(), time.monotonic()
        while (
            time.monotonic() - quiet_since < args.drain_s
            and time.monotonic() - drain_began < args.max_drain_s
        ):
            if len(notices.received) != last_count:
                last_count, quiet_since = len(notices.received), time.monotonic()
            time.sleep(0.5)
        drained_s = time.monotonic() - drain_began
        chunk_outcomes = vad_chunk_outcomes(
            urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
            for worker in stack.workers if worker.stage == StageName.VAD)
        if with_inference:
            stored = redis_results(settings, list(utterances_by_stream))
            on_topic, topic_unreadable = topic_results(settings)
    finally:
        stop.set()
        stack.stop()

    hangover_ms = float(settings.vad.hangover_ms)
    counted = count_results(
        utterances_by_stream, notices.received, stored=stored, on_topic=on_topic
    )
    closing_at_ms, replay_disagreements = closing_times(
        plans, counted.matching.pairs, settings=settings, chunk_ms=args.chunk_ms,
        chunks=int(args.duration_s * 1000 // args.chunk_ms), encoding=AudioEncoding(args.encoding),
        origins_s=times.origins_s, sent_at_s=times.sent_at_s,
    )
    samples = latency_samples(counted.matching.pairs, origins_s=times.origins_s, hangover_ms=hangover_ms,
                              closing_at_ms=closing_at_ms)
    cores = cores_used(cpu_start, cpu_end)
    by_stage = {
        str(stage): sum(cores[w.name] for w in stack.workers if w.stage == stage)
        for stage, workers in counts.by_stage().items()
        if workers
    }
    worker_cpu = sum(by_stage.values())
    infra_cpu = cores["broker"] + cores["redis"]
    ours_cpu = worker_cpu + infra_cpu + cores["load_generator"]
    busy_cpu = cores["machine_busy"]
    beyond = [value - hangover_ms for value in samples.latencies_ms]
    p95_beyond = percentile(beyond, 95)
    check = counted.check
    matching = counted.matching
    shape = plan_shape(utterances_by_stream)
    missing_anywhere = bool(check and (check.missing_from_redis or check.missing_from_topic))
    return {
        "streams": streams,
        "seed": seed,
        "utterances": sum(len(u) for u in utterances_by_stream.values()),
        "results_matched": len(matching.pairs),
        "lost": len(matching.lost),
        "unmatched_results": len(matching.unmatched),
        "duplicates": counted.duplicates,
        "latency_samples": len(samples.latencies_ms),
        "closing_chunk_known": len(closing_at_ms),  # results whose audio_to_vad is split in three
        "closing_chunk_unknown": replay_disagreements[:20],  # why, for the others (at most 20 shown)
        "vad_chunk_outcomes": chunk_outcomes,
        "latency_ms": quantiles(samples.latencies_ms),
        "beyond_hangover_ms": quantiles(beyond),
        "beyond_hangover_less_sender_late_ms": quantiles(samples.pipeline_beyond_ms),
        # the parts, then the inference worker's own total (not a part)
        "breakdown_p50_p95_ms": {
            name: [_round(percentile(v, 50)), _round(percentile(v, 95))]
            for name, v in (*samples.parts_ms.items(), ("total", samples.worker_total_ms))
            if v
        },
        "cross_check": None
        if check is None
        else {
            "notified": check.notified,
            "in_redis": check.in_redis,
            "on_topic": check.on_topic,
            "missing_from_redis": len(check.missing_from_redis),
            "missing_from_topic": len(check.missing_from_topic),
            "not_notified": len(check.not_notified),
            "topic_duplicates": counted.topic_duplicates,
            "unreadable": notices.unreadable + topic_unreadable,
            "examples": [
                list(key)
                for key in (
                    check.missing_from_redis + check.missing_from_topic + check.not_notified
                )[:5]
            ],
        },
        "plan": {
            "pauses_s": _spread_json(shape.pauses_s),
            "utterances_s": _spread_json(shape.utterances_s),
        },
        "cpu_cores": {
            "workers": round(worker_cpu, 3),
            **{stage: round(value, 3) for stage, value in by_stage.items()},
            "broker+redis": round(infra_cpu, 3),
            "broker": round(cores["broker"], 3),
            "redis": round(cores["redis"], 3),
            "load_generator": round(cores["load_generator"], 3),
        },
        "cpu_ms_per_stream_s": {
            "workers": round(1000 * worker_cpu / streams, 2),
            "all": round(1000 * ours_cpu / streams, 2),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(v, 2) for v in cpu_start.load_average],
            "load_average_after": [round(v, 2) for v in cpu_end.load_average],
            "busy_cores": round(busy_cpu, 3),
            "benchmark_cores": round(ours_cpu, 3),
            "benchmark_share_of_busy": round(ours_cpu / busy_cpu, 3) if busy_cpu > 0 else None,
            "other_cores": round(max(0.0, busy_cpu - ours_cpu), 3),
        },
        "sender_late_p99_ms": round(1000 * (percentile(times.lateness_s, 99) or 0.0), 1),
        "load_average_1min": round(cpu_end.load_average[0], 2),
        "drained_s": round(drained_s, 1),
        "sustained": not matching.lost
        and not missing_anywhere
        and p95_beyond is not None
        and p95_beyond <= args.target_p95_ms,
        "hangover_ms": hangover_ms,
        "config": {
            "chunk_ms": args.chunk_ms,
            "encoding": args.encoding,
            "sample_rate_hz": args.sample_rate_hz,
            "partitions": args.partitions,
            "inference_workers": counts.inference,
            "batch_max": args.batch_max,
            "batch_within_s": args.batch_within_s,
            "fetch_max_wait_ms": args.fetch_max_wait_ms,
            "stages": args.stages,
            "duration_s": args.duration_s,
        },
    }


def _spread_json(values: Spread) -> dict[str, float | int | None]:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(values).items()}


# output ---------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _s(values: Mapping[str, Any]) -> str:
    if not values["count"]:
        return "none"
    return f"{values['min']:.2f}/{values['median']:.2f}/{values['max']:.2f} s (n={values['count']})"


def format_run(report: Mapping[str, Any]) -> str:
    """The text lines of one run's report."""
    lat, beyond, cpu = report["latency_ms"], report["beyond_hangover_ms"], report["cpu_cores"]
    machine = report["machine"]
    headline = (
        f"streams={report['streams']:4d} seed={report['seed']} "
        f"sustained={'yes' if report['sustained'] else 'NO'} utterances={report['utterances']} "
        f"matched={report['results_matched']} lost={report['lost']} "
        f"unmatched={report['unmatched_results']} duplicates={report['duplicates']} | "
        f"latency p50/p95/p99 = {_ms(lat[50])}/{_ms(lat[95])}/{_ms(lat[99])} ms "
        f"(beyond {report['hangover_ms']:.0f} ms hangover: "
        f"{_ms(beyond[50])}/{_ms(beyond[95])}/{_ms(beyond[99])} ms; {report['latency_samples']} samples)"
    )
    own = report["beyond_hangover_less_sender_late_ms"]
    if own[50] is not None:
        headline += (f"\n  beyond the hangover less the generator's own lateness (send_late): "
                     f"{_ms(own[50])}/{_ms(own[95])}/{_ms(own[99])} ms")
    plan = (
        f"  plan: pauses min/median/max {_s(report['plan']['pauses_s'])}, "
        f"utterances {_s(report['plan']['utterances_s'])}"
    )
    lines = [headline, plan]
    check = report["cross_check"]
    if check is not None:
        lines.append(
            f"  cross-check: notified {check['notified']}, in Redis {check['in_redis']}, "
            f"on the emotions topic {check['on_topic']} ({check['topic_duplicates']} repeated); "
            f"missing from Redis {check['missing_from_redis']}, from the topic "
            f"{check['missing_from_topic']}, never notified {check['not_notified']}, "
            f"unreadable {check['unreadable']}"
            + (f"; e.g. {check['examples']}" if check["examples"] else "")
        )
    else:
        lines.append("  cross-check: none (--stages vad: segments read from the segments topic)")
    breakdown = {
        name: values
        for name, values in report["breakdown_p50_p95_ms"].items()
        if name in LATENCY_PARTS
    }
    if breakdown:
        parts = ", ".join(f"{name} {_ms(p50)}/{_ms(p95)}" for name, (p50, p95) in breakdown.items())
        p50_sum = sum(p50 for p50, _ in breakdown.values() if p50 is not None)
        lines.append(
            f"  beyond the hangover, p50/p95 ms per part: {parts} "
            f"(sum of p50s {p50_sum:.0f} against p50 {_ms(beyond[50])}; closing chunk known for "
            f"{report['closing_chunk_known']} of {report['latency_samples']})"
        )
    for reason in report.get("closing_chunk_unknown", []):
        lines.append(f"  closing chunk not known: {reason}")
    outcomes = report.get("vad_chunk_outcomes") or {}
    if outcomes:
        lines.append("  VAD workers' chunks: " + ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items())))
    stages = " ".join(f"{stage} {cpu[stage]:.2f}" for stage in ("vad", "inference") if stage in cpu)
    lines.append(
        f"  CPU cores: {stages} broker {cpu['broker']:.2f} redis {cpu['redis']:.2f} "
        f"generator {cpu['load_generator']:.2f} | per stream: workers "
        f"{report['cpu_ms_per_stream_s']['workers']:.2f} ms/s, all "
        f"{report['cpu_ms_per_stream_s']['all']:.2f} ms/s | sender late p99 "
        f"{report['sender_late_p99_ms']} ms | drained {report['drained_s']} s"
    )
    share = machine["benchmark_share_of_busy"]
    lines.append(
        f"  machine: {machine['cpus']} CPUs, load average "
        f"{'/'.join(str(v) for v in machine['load_average_before'])} -> "
        f"{'/'.join(str(v) for v in machine['load_average_after'])} (1/5/15 min); busy "
        f"{machine['busy_cores']:.2f} cores, of which the benchmark's processes "
        f"{machine['benchmark_cores']:.2f} ({'-' if share is None else f'{100 * share:.0f} %'}), "
        f"others {machine['other_cores']:.2f}"
    )
    return "\n".join(lines)


def format_spread(streams: int, seeds: Sequence[int], figures: Mapping[str, Spread]) -> str:
    def text(values: Spread) -> str:
        if values.count == 0:
            return "-"
        return f"{values.min:.0f}/{values.median:.0f}/{values.max:.0f}"

    named = ", ".join(f"{name} {text(values)}" for name, values in figures.items())
    return f"streams={streams:4d} over seeds {','.join(map(str, seeds))} (min/median/max): {named}"


def write_png(
    path: Path, reports: Sequence[Mapping[str, Any]], *, target_p95_ms: float, title: str
) -> None:
    """p50 and p95 beyond the hangover against the stream count: a dot per run, a line through the
    median over seeds, the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    counts = sorted({int(r["streams"]) for r in reports})
    for q, colour in ((50, "tab:blue"), (95, "tab:red")):
        xs = [int(r["streams"]) for r in reports if r["beyond_hangover_ms"][q] is not None]
        ys = [r["beyond_hangover_ms"][q] for r in reports if r["beyond_hangover_ms"][q] is not None]
        axes.scatter(xs, ys, color=colour, alpha=0.5, s=18)
        medians = [
            (n, statistics.median(y for x, y in zip(xs, ys) if x == n)) for n in counts if n in xs
        ]
        axes.plot(
            [n for n, _ in medians],
            [m for _, m in medians],
            color=colour,
            label=f"p{q}",
            marker="o",
        )
    for report in reports:
        if report["lost"]:
            axes.annotate(
                f"{report['lost']} lost",
                (report["streams"], report["beyond_hangover_ms"][95] or 0),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 4),
            )
    axes.axhline(
        target_p95_ms, color="grey", linestyle="--", label=f"target p95 {target_p95_ms:.0f} ms"
    )
    axes.set_xlabel("concurrent streams")
    axes.set_ylabel("latency beyond the hangover (ms)")
    axes.set_xticks(counts)
    axes.set_title(textwrap.fill(title, 90), fontsize=8)
    axes.set_ylim(bottom=0)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def main() -> int:
    parts = "\n".join(f"  {name}: {meaning}" for name, meaning in LATENCY_PARTS.items())
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=f"latency parts (beyond the hangover):\n{parts}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--streams",
        default="100,200,300",
        help="comma-separated stream counts, one run each (per seed)",
    )
    parser.add_argument(
        "--seeds",
        default="",
        help="comma-separated plan seeds; each stream count runs once per seed and the spread is "
        "reported (default: one run, seeded with the stream count)",
    )
    parser.add_argument("--duration-s", type=float, default=60.0, help="audio seconds per stream")
    parser.add_argument(
        "--chunk-ms",
        type=int,
        default=100,
        help="audio per record: 20 (a telephony gateway's frame) or 100 (gateways send 20-200 ms)",
    )
    parser.add_argument("--encoding", default="s16le", choices=[e.value for e in AudioEncoding])
    parser.add_argument("--sample-rate-hz", type=int, default=FIXTURE_RATE_HZ, choices=SEND_RATES_HZ,
                        help="the rate streams are sent at: 8000 with --encoding mulaw is a telephony "
                             "gateway (the VAD worker then resamples every chunk to 16 kHz)")
    parser.add_argument(
        "--pause-min-s", type=float, default=4.0, help="shortest pause between utterances"
    )
    parser.add_argument(
        "--pause-max-s", type=float, default=12.0, help="longest pause between utterances"
    )
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions of every topic (at least the workers)"
    )
    parser.add_argument(
        "--inference-workers",
        type=int,
        default=1,
        help="inference worker processes (1 or 2 on 2 cores)",
    )
    parser.add_argument(
        "--batch-max", type=int, default=4, help="inference micro-batch (CPU: small is faster)"
    )
    parser.add_argument(
        "--batch-within-s", type=float, default=InferenceSettings().batch_within_s,
        help="how long the inference worker waits to fill a micro-batch (default: the setting's, %(default)s)",
    )
    parser.add_argument(
        "--fetch-max-wait-ms", type=int, default=KafkaSettings().fetch_max_wait_ms,
        help="longest a worker's fetch waits for records (default: the setting's, %(default)s)",
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="registry name or checkpoint folder (default: %(default)s)"
    )
    parser.add_argument(
        "--drain-s",
        type=float,
        default=8.0,
        help="after the last chunk, wait until no result came for this long",
    )
    parser.add_argument(
        "--stages",
        default="vad,inference",
        choices=["vad,inference", "vad"],
        help="vad: only the VAD worker, latency to the segment on the segments topic (where inference is not the limit)",
    )
    parser.add_argument(
        "--max-drain-s", type=float, default=180.0, help="give up waiting for results after this"
    )
    parser.add_argument(
        "--target-p95-ms",
        type=float,
        default=300.0,
        help="p95 beyond the hangover to call it sustained",
    )
    parser.add_argument(
        "--ready-timeout-s",
        type=float,
        default=300.0,
        help="wait this long for the workers to load the model and take their partitions",
    )
    parser.add_argument("--png", type=Path, default=None, help="plot latency against streams here")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per run (and per spread over seeds) instead of text",
    )
    args = parser.parse_args()
    stream_counts, seeds = _ints(args.streams), _ints(args.seeds)
    if not stream_counts or min(stream_counts) < 1:
        parser.error(f"--streams {args.streams!r}: give stream counts of at least 1, e.g. 4,8")
    if args.chunk_ms < 10 or args.chunk_ms * args.sample_rate_hz % 1000:
        parser.error(
            f"--chunk-ms {args.chunk_ms}: use whole milliseconds of at least 10, e.g. 20 or 100"
        )
    if args.inference_workers < 1 or args.inference_workers > args.partitions:
        parser.error(
            f"--inference-workers {args.inference_workers} on --partitions {args.partitions}: "
            "use 1 to the partition count (a worker without a partition has nothing to do)"
        )
    if args.pause_min_s > args.pause_max_s:
        parser.error(f"--pause-min-s {args.pause_min_s} is above --pause-max-s {args.pause_max_s}")
    workers = (
        f"1 VAD + {args.inference_workers} inference worker(s)"
        if "inference" in args.stages
        else "1 VAD worker"
    )
    title = (
        f"{os.cpu_count()} CPUs, {args.duration_s:.0f} s per stream, {args.chunk_ms} ms {args.sample_rate_hz // 1000} kHz {args.encoding} "
        f"chunks, pauses {args.pause_min_s}-{args.pause_max_s} s, {workers} on {args.partitions} "
        f"partitions, micro-batch {args.batch_max} within {args.batch_within_s} s, fetches wait at most "
        f"{args.fetch_max_wait_ms} ms, model {args.model}"
    )
    print(
        f"# streams benchmark on {title}; seeds {args.seeds or 'the stream counts'}; "
        f"load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="emostream-bench-") as folder:
        for streams in stream_counts:
            runs = []
            for seed in seeds or [streams]:
                report = run_once(args, streams, seed, Path(folder))
                runs.append(report)
                print(json.dumps(report) if args.json else format_run(report), flush=True)
            reports += runs
            if len(runs) > 1:
                figures = seed_spread(runs)
                if args.json:
                    spread_json = {name: asdict(values) for name, values in figures.items()}
                    print(json.dumps({"streams": streams, "seeds": seeds, "spread": spread_json}))
                else:
                    print(format_spread(streams, seeds, figures), flush=True)
    if args.png is not None:
        write_png(args.png, reports, target_p95_ms=args.target_p95_ms, title=title)
        print(f"# wrote {args.png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
