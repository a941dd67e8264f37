"""How many concurrent real-time streams the pipeline sustains on this machine, and how fast.

Starts its own stack (Tansu broker, redis-server, one VAD worker, one inference worker: the same
subprocesses `emostream up` runs), then streams N simulated calls in real time: each stream is
silence with utterances of real (synthetic, espeak-ng) speech from tests/fixtures/speech.wav placed
at random pauses, so where every utterance ends is known exactly (stream time). Chunks are sent as
a gateway would: chunk k when its audio is complete, streams spread evenly over each chunk period.

Printed per run:
- latency from the end of an utterance (audio time) to its result in Redis (pub/sub notice
  received), p50 / p95 / p99, and the same minus the VAD hangover (the end-pointer must hear
  `hangover_ms` of silence before it may close a segment);
- records lost: utterances without a result once results stopped arriving (and results matching no
  utterance);
- CPU per stream: CPU seconds per second of the two workers (and of broker + Redis + the load
  generator) during the steady window, divided by N;
- sustained: nothing lost and p95 beyond hangover <= --target-p95-ms.

Usage: python benchmarks/streams_benchmark.py --streams 100,200,300 --duration-s 60
"""

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import soundfile as sf
from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ, AudioEncoding
from emostream.schemas.redis_keys import results_channel
from emostream.schemas.segment import SegmentHeader
from emostream.schemas.settings import Settings
from emostream.workers.cli.clients.producer import encode_s16
from emostream.workers.runtime.topics import ensure_topics, stack_topics
from emostream.workers.stack.local_stack import WorkerProcess
from emostream.workers.stack.services import RedisServer, TansuBroker

REPO = Path(__file__).resolve().parents[1]
SPEECH_WAV = REPO / "tests" / "fixtures" / "speech.wav"
SPEECH_JSON = REPO / "tests" / "fixtures" / "speech.json"
SAMPLE_RATE_HZ = PIPELINE_SAMPLE_RATE_HZ  # the fixture's rate, sent as s16le without resampling
CLOCK_TICKS_S = os.sysconf("SC_CLK_TCK")
SEND_GROUPS = 10  # each chunk period is split into this many send bursts
UTTERANCE_MARGIN_MS = (
    60  # the fixture's utterance boundaries are cut this much wider (espeak's soft edges)
)


@dataclass(frozen=True)
class Utterance:
    start_ms: float
    end_ms: float


@dataclass
class StreamPlan:
    stream_id: str
    placements: list[tuple[int, np.ndarray]]  # (start sample, speech samples)
    utterances: list[Utterance]

    def chunk(self, start_sample: int, samples: int) -> np.ndarray | None:
        """The chunk's samples, or None when it is all silence."""
        out: np.ndarray | None = None
        end_sample = start_sample + samples
        for place, speech in self.placements:
            lo, hi = max(place, start_sample), min(place + len(speech), end_sample)
            if lo < hi:
                if out is None:
                    out = np.zeros(samples, dtype=np.int16)
                out[lo - start_sample : hi - start_sample] = speech[lo - place : hi - place]
        return out


def load_utterances() -> list[np.ndarray]:
    samples, rate_hz = sf.read(SPEECH_WAV, dtype="int16")
    assert rate_hz == SAMPLE_RATE_HZ, f"{SPEECH_WAV}: {rate_hz} Hz, expected {SAMPLE_RATE_HZ}"
    card = json.loads(SPEECH_JSON.read_text())
    pieces = []
    for item in card["utterances"]:
        start = max(0, (item["start_ms"] - UTTERANCE_MARGIN_MS) * SAMPLE_RATE_HZ // 1000)
        end = min(len(samples), (item["end_ms"] + UTTERANCE_MARGIN_MS) * SAMPLE_RATE_HZ // 1000)
        pieces.append(samples[start:end])
    return pieces


def plan_streams(
    count: int, duration_s: float, *, pause_s: tuple[float, float], seed: int
) -> list[StreamPlan]:
    """Per stream: pause, utterance, pause, utterance, ... until the duration (random, seeded)."""
    rng = random.Random(seed)
    speech = load_utterances()
    plans = []
    for index in range(count):
        placements, utterances = [], []
        position_s = rng.uniform(0.3, pause_s[1])
        while True:
            piece = speech[rng.randrange(len(speech))]
            end_s = position_s + len(piece) / SAMPLE_RATE_HZ
            if end_s > duration_s - 1.0:
                break
            start = int(position_s * SAMPLE_RATE_HZ)
            placements.append((start, piece))
            # the speech itself (without the margins cut around it) is where the utterance is
            utterances.append(
                Utterance(
                    1000.0 * start / SAMPLE_RATE_HZ + UTTERANCE_MARGIN_MS,
                    1000.0 * (start + len(piece)) / SAMPLE_RATE_HZ - UTTERANCE_MARGIN_MS,
                )
            )
            position_s = end_s + rng.uniform(*pause_s)
        plans.append(StreamPlan(f"bench-{seed}-{index:04d}:customer", placements, utterances))
    return plans


@dataclass
class Results:
    received: list[tuple[str, int, float, float, float]] = field(
        default_factory=list
    )  # id, seg, start, end, wall
    breakdown: dict[str, list[float]] = field(
        default_factory=dict
    )  # latency part -> ms (from the events)

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
                now = time.time()
                for records in batches.values():
                    for record in records:
                        header = SegmentHeader.from_kafka(record.key, record.headers)
                        self.received.append(
                            (
                                header.stream_id,
                                header.segment_index,
                                header.start_ms,
                                header.end_ms,
                                now,
                            )
                        )
        finally:
            await consumer.stop()

    def listen(self, url: str, channel: str, stop: threading.Event) -> None:
        client = redis.Redis.from_url(url)
        pubsub = client.pubsub()
        pubsub.subscribe(channel)
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                now = time.time()
                event = json.loads(message["data"])
                self.received.append(
                    (
                        event["stream_id"],
                        event["segment_index"],
                        event["start_ms"],
                        event["end_ms"],
                        now,
                    )
                )
                for part, value in (event.get("latency") or {}).items():
                    if value is not None:
                        self.breakdown.setdefault(part, []).append(value)
        pubsub.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_S  # utime + stime


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def send_streams(
    settings: Settings,
    plans: list[StreamPlan],
    *,
    chunk_ms: int,
    duration_s: float,
    encoding: AudioEncoding,
    origins: dict[str, float],
    lateness_s: list[float],
) -> None:
    """Real-time sender: chunk k of every stream when its audio is complete; then end of stream.

    Uses aiokafka (C record batches) rather than kafka-python, whose pure-Python CRC-32C costs
    ~0.5 ms of CPU per 3 kB record here: the load generator shares the cores with the workers.
    """
    asyncio.run(
        _send_streams(
            settings,
            plans,
            chunk_ms=chunk_ms,
            duration_s=duration_s,
            encoding=encoding,
            origins=origins,
            lateness_s=lateness_s,
        )
    )


async def _send_streams(
    settings: Settings,
    plans: list[StreamPlan],
    *,
    chunk_ms: int,
    duration_s: float,
    encoding: AudioEncoding,
    origins: dict[str, float],
    lateness_s: list[float],
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
    )
    await producer.start()
    chunk_samples = SAMPLE_RATE_HZ * chunk_ms // 1000
    chunks = int(duration_s * 1000 // chunk_ms)
    groups = [plans[g::SEND_GROUPS] for g in range(SEND_GROUPS)]
    began = time.time() + 0.5
    for g, group in enumerate(groups):
        for plan in group:  # audio time 0 of this stream is spoken at this wall time
            origins[plan.stream_id] = began + g * chunk_ms / 1000 / SEND_GROUPS
    topic = settings.topics.audio
    silence = {enc: encode_s16(np.zeros(chunk_samples, np.int16), enc) for enc in AudioEncoding}
    fixed = [("v", b"1"), ("rate", str(SAMPLE_RATE_HZ).encode()), ("enc", encoding.value.encode())]
    keys = {plan.stream_id: plan.stream_id.encode() for plan in plans}
    pending = []
    for seq in range(chunks + 1):
        for g, group in enumerate(groups):
            due = began + (seq + 1) * chunk_ms / 1000 + g * chunk_ms / 1000 / SEND_GROUPS
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lateness_s.append(-delay)
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


def run_once(args: argparse.Namespace, streams: int, workdir: Path) -> dict[str, object]:
    broker = TansuBroker(log_dir=workdir)
    redis_server = RedisServer(log_dir=workdir)
    broker.start()
    redis_server.start()
    tag = f"bench{streams}-{int(time.time())}"
    settings = Settings(
        kafka={"bootstrap_servers": broker.bootstrap_servers},
        redis={"url": redis_server.url},
        topics={
            "partitions": args.partitions,
            "audio": f"audio.{tag}",
            "segments": f"segments.{tag}",
            "emotions": f"emotions.{tag}",
            "alerts": f"alerts.{tag}",
            "dead_letters": f"dead.{tag}",
        },
        inference={"model": args.model, "batch_max": args.batch_max},
        observability={"log_level": "WARNING"},
        worker_id=tag,
    )
    ensure_topics(settings.kafka, stack_topics(settings))
    workers = [
        WorkerProcess(
            stage, settings=settings, name=f"{stage}-{tag}", log_path=workdir / f"{stage}-{tag}.log"
        )
        for stage in args.stages.split(",")
    ]
    stop = threading.Event()
    results = Results()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_healthy(120)
        if "inference" in args.stages:
            listener = threading.Thread(
                target=results.listen,
                args=(redis_server.url, results_channel(settings.redis.key_prefix), stop),
                daemon=True,
            )
        else:
            listener = threading.Thread(
                target=results.listen_segments, args=(settings, stop), daemon=True
            )
        listener.start()
        plans = plan_streams(
            streams, args.duration_s, pause_s=(args.pause_min_s, args.pause_max_s), seed=streams
        )
        origins: dict[str, float] = {}
        lateness: list[float] = []
        encoding = AudioEncoding(args.encoding)
        sender = threading.Thread(
            target=send_streams,
            args=(
                settings,
                plans,
            ),
            daemon=True,
            kwargs={
                "chunk_ms": args.chunk_ms,
                "duration_s": args.duration_s,
                "encoding": encoding,
                "origins": origins,
                "lateness_s": lateness,
            },
        )
        pids = {w.name: w.pid for w in workers}
        pids["broker"] = broker.pid
        pids["redis"] = redis_server.pid
        sender.start()
        warmup_s = min(10.0, args.duration_s / 4)
        time.sleep(warmup_s)
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self_start, wall_start = time.process_time(), time.monotonic()
        time.sleep(max(1.0, args.duration_s - 2 * warmup_s))
        cpu_end = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self_end, wall_end = time.process_time(), time.monotonic()
        load_after = os.getloadavg()[0]  # other processes on the machine share the cores: say so
        sender.join()
        # drain: results still queued arrive late but are not lost; wait until none came for drain_s
        last_count, quiet_since, drain_began = -1, time.monotonic(), time.monotonic()
        while (
            time.monotonic() - quiet_since < args.drain_s
            and time.monotonic() - drain_began < args.max_drain_s
        ):
            if len(results.received) != last_count:
                last_count, quiet_since = len(results.received), time.monotonic()
            time.sleep(0.5)
        drained_s = time.monotonic() - drain_began
    finally:
        stop.set()
        for worker in workers:
            worker.stop(grace_s=5)
        redis_server.stop()
        broker.stop()
    window_s = wall_end - wall_start
    worker_cpu = sum(cpu_end[w.name] - cpu_start[w.name] for w in workers) / window_s
    infra_cpu = sum(cpu_end[n] - cpu_start[n] for n in ("broker", "redis")) / window_s
    generator_cpu = (self_end - self_start) / window_s
    per_worker = {w.stage: (cpu_end[w.name] - cpu_start[w.name]) / window_s for w in workers}

    latencies_ms: list[float] = []
    matched = 0
    expected = 0
    spurious = 0
    by_stream: dict[str, list[tuple[int, float, float, float]]] = {}
    for stream_id, index, start_ms, end_ms, wall in results.received:
        by_stream.setdefault(stream_id, []).append((index, start_ms, end_ms, wall))
    for plan in plans:
        got = sorted({r[0]: r for r in by_stream.get(plan.stream_id, [])}.values())
        used: set[int] = set()
        for utterance in plan.utterances:
            expected += 1
            hit = next(
                (r for r in got if r[1] <= utterance.end_ms and r[2] >= utterance.start_ms), None
            )
            if hit is None:
                continue
            matched += 1
            used.add(hit[0])
            latencies_ms.append(1000.0 * (hit[3] - origins[plan.stream_id]) - utterance.end_ms)
        spurious += len([r for r in got if r[0] not in used])
    hangover_ms = settings.vad.hangover_ms
    p95 = percentile(latencies_ms, 95)
    return {
        "streams": streams,
        "utterances": expected,
        "results_matched": matched,
        "lost": expected - matched,
        "unmatched_results": spurious,
        "latency_ms": {q: round(percentile(latencies_ms, q), 1) for q in (50, 95, 99)},
        "beyond_hangover_ms": {
            q: round(percentile(latencies_ms, q) - hangover_ms, 1) for q in (50, 95, 99)
        },
        "cpu_cores": {
            "workers": round(worker_cpu, 3),
            **{k: round(v, 3) for k, v in per_worker.items()},
            "broker+redis": round(infra_cpu, 3),
            "load_generator": round(generator_cpu, 3),
        },
        "cpu_ms_per_stream_s": {
            "workers": round(1000 * worker_cpu / streams, 2),
            "all": round(1000 * (worker_cpu + infra_cpu + generator_cpu) / streams, 2),
        },
        "breakdown_p50_p95_ms": {
            part.removesuffix("_ms"): [round(percentile(v, 50), 1), round(percentile(v, 95), 1)]
            for part, v in sorted(results.breakdown.items())
        },
        "sender_late_p99_ms": round(1000 * percentile(lateness, 99), 1) if lateness else 0.0,
        "load_average_1min": round(load_after, 2),
        "drained_s": round(drained_s, 1),
        "sustained": expected == matched and p95 - hangover_ms <= args.target_p95_ms,
        "hangover_ms": hangover_ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--streams", default="100,200,300", help="comma-separated stream counts, one run each"
    )
    parser.add_argument("--duration-s", type=float, default=60.0, help="audio seconds per stream")
    parser.add_argument(
        "--chunk-ms", type=int, default=100, help="audio per record (gateways send 20-200 ms)"
    )
    parser.add_argument("--encoding", default="s16le", choices=[e.value for e in AudioEncoding])
    parser.add_argument(
        "--pause-min-s", type=float, default=4.0, help="shortest pause between utterances"
    )
    parser.add_argument(
        "--pause-max-s", type=float, default=12.0, help="longest pause between utterances"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--batch-max", type=int, default=4, help="inference micro-batch (CPU: small is faster)"
    )
    parser.add_argument(
        "--model", default="plb-ravdess8", help="registry name or checkpoint folder"
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
        "--json", action="store_true", help="print one JSON object per run instead of text"
    )
    args = parser.parse_args()
    print(
        f"# streams benchmark on {os.cpu_count()} CPUs: {args.duration_s:.0f} s per stream, chunks of {args.chunk_ms} ms "
        f"{args.encoding}, pauses {args.pause_min_s}-{args.pause_max_s} s, model {args.model}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="emostream-bench-") as folder:
        for streams in [int(n) for n in args.streams.split(",")]:
            report = run_once(args, streams, Path(folder))
            if args.json:
                print(json.dumps(report), flush=True)
                continue
            lat, beyond, cpu = (
                report["latency_ms"],
                report["beyond_hangover_ms"],
                report["cpu_cores"],
            )
            print(
                f"streams={streams:4d} sustained={'yes' if report['sustained'] else 'NO '} "
                f"utterances={report['utterances']} lost={report['lost']} unmatched={report['unmatched_results']} | "
                f"latency p50/p95/p99 = {lat[50]:.0f}/{lat[95]:.0f}/{lat[99]:.0f} ms "
                f"(beyond {report['hangover_ms']} ms hangover: {beyond[50]:.0f}/{beyond[95]:.0f}/{beyond[99]:.0f} ms) | "
                f"CPU cores: vad {cpu['vad']:.2f} inference {cpu.get('inference', 0.0):.2f} broker+redis {cpu['broker+redis']:.2f} "
                f"generator {cpu['load_generator']:.2f} | CPU per stream: workers "
                f"{report['cpu_ms_per_stream_s']['workers']:.2f} ms/s, all {report['cpu_ms_per_stream_s']['all']:.2f} ms/s "
                f"| sender late p99 {report['sender_late_p99_ms']} ms | parts p50/p95 ms {report['breakdown_p50_p95_ms']} "
                f"| load average {report['load_average_1min']} | drained {report['drained_s']} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
