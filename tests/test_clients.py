"""`emostream send` and `emostream tail` against the real broker, as a user runs them."""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import soxr
from emostream.schemas.audio import AudioChunkHeader, AudioEncoding, ChannelRole
from emostream.schemas.event import EmotionEvent
from emostream.schemas.settings import Settings
from emostream.workers.runtime.codecs import MULAW_TO_S16
from emostream.workers.runtime.kafka_config import kafka_python_options
from emostream.workers.stack.settings_env import settings_to_env
from kafka import KafkaProducer

LABELS = ("neutral", "happy", "angry", "sad")


def parsed_chunks(records: list) -> list[tuple[AudioChunkHeader, bytes]]:
    chunks = [
        (AudioChunkHeader.from_kafka(record.key, record.headers), record.value)
        for record in records
    ]
    return sorted(chunks, key=lambda chunk: chunk[0].seq)


def test_send_streams_the_recording_as_ordered_chunks_with_an_end_of_stream(
    emostream_cli, stack_settings: Settings, read_topic: Callable, speech_wav: Path
) -> None:
    completed = emostream_cli.run(
        "send",
        str(speech_wav),
        "--stream-id",
        "call-7:customer",
        env=settings_to_env(stack_settings),
    )
    assert completed.returncode == 0, completed.stderr
    assert "sent stream call-7:customer: 395 chunks + end-of-stream, 7.88 s" in completed.stdout

    records = read_topic(
        stack_settings, stack_settings.topics.audio, min_records=396, stream_id="call-7:customer"
    )
    assert len(records) == 396
    assert {record.partition for record in records} == {
        records[0].partition
    }  # one stream, one partition
    assert [record.offset for record in records] == sorted(record.offset for record in records)
    chunks = parsed_chunks(records)
    assert [header.seq for header, _ in chunks] == list(range(396))
    assert [header.seq for header, _ in chunks] == [
        AudioChunkHeader.from_kafka(r.key, r.headers).seq for r in records
    ]
    *audio, (last, last_value) = chunks
    assert last.end_of_stream and last_value == b""
    assert not any(header.end_of_stream for header, _ in audio)
    assert all(
        header.sample_rate_hz == 16_000
        and header.encoding is AudioEncoding.S16LE
        and header.role is ChannelRole.CUSTOMER
        for header, _ in chunks
    )
    assert all(header.duration_ms(len(value)) == 20.0 for header, value in audio[:-1])
    samples, _ = soundfile.read(str(speech_wav), dtype="int16")
    assert (
        b"".join(value for _, value in audio) == samples.astype("<i2").tobytes()
    )  # bit-exact at 16 kHz


def test_send_mulaw_at_8khz_keeps_the_speech(
    emostream_cli, stack_settings: Settings, read_topic: Callable, speech_wav: Path
) -> None:
    completed = emostream_cli.run(
        "send",
        str(speech_wav),
        "--stream-id",
        "call-8:agent",
        "--role",
        "agent",
        "--encoding",
        "mulaw",
        "--chunk-ms",
        "100",
        env=settings_to_env(stack_settings),
    )
    assert completed.returncode == 0, completed.stderr
    chunks = parsed_chunks(
        read_topic(
            stack_settings, stack_settings.topics.audio, min_records=80, stream_id="call-8:agent"
        )
    )
    assert len(chunks) == 80 and chunks[-1][0].end_of_stream
    assert all(
        header.sample_rate_hz == 8_000 and header.encoding is AudioEncoding.MULAW
        for header, _ in chunks
    )
    assert all(
        len(value) == 800 for _, value in chunks[:-2]
    )  # 100 ms at 8 kHz, one byte per sample
    decoded = MULAW_TO_S16[
        np.frombuffer(b"".join(value for _, value in chunks), dtype=np.uint8)
    ].astype(np.float32)
    original, _ = soundfile.read(str(speech_wav), dtype="float32")
    reference = soxr.resample(original, 16_000, 8_000) * 32_767
    assert abs(len(decoded) - len(reference)) <= 1
    size = min(len(decoded), len(reference))
    assert np.corrcoef(decoded[:size], reference[:size])[0, 1] > 0.99


def test_send_realtime_paces_chunks_like_a_live_call(
    emostream_cli, stack_settings: Settings, read_topic: Callable, speech_wav: Path, tmp_path: Path
) -> None:
    samples, rate_hz = soundfile.read(str(speech_wav), dtype="int16")
    clip = tmp_path / "two-seconds.flac"
    soundfile.write(str(clip), samples[: 2 * rate_hz], rate_hz)
    began = time.monotonic()
    completed = emostream_cli.run(
        "send",
        str(clip),
        "--stream-id",
        "call-9:user",
        "--realtime",
        "--chunk-ms",
        "100",
        env=settings_to_env(stack_settings),
    )
    assert completed.returncode == 0, completed.stderr
    assert time.monotonic() - began >= 2.0
    chunks = parsed_chunks(
        read_topic(
            stack_settings, stack_settings.topics.audio, min_records=21, stream_id="call-9:user"
        )
    )
    sent_at_ms = [header.sent_at_ms for header, _ in chunks]
    assert all(value is not None for value in sent_at_ms)
    # chunk n leaves n * 100 ms after the first (a little late at worst, never early)
    for seq, sent_ms in enumerate(sent_at_ms[:-1]):
        lag_ms = sent_ms - sent_at_ms[0] - seq * 100
        assert -5 <= lag_ms <= 150, f"chunk {seq}: {lag_ms} ms off the real-time schedule"


def test_send_names_the_problem_with_its_input(
    emostream_cli, stack_settings: Settings, tmp_path: Path, speech_wav: Path
) -> None:
    missing = emostream_cli.run(
        "send", str(tmp_path / "nope.wav"), "--stream-id", "a", env=settings_to_env(stack_settings)
    )
    assert (
        missing.returncode == 2
        and "nope.wav" in missing.stderr
        and "cannot read audio" in missing.stderr
    )
    bad_id = emostream_cli.run(
        "send", str(speech_wav), "--stream-id", "call {1}", env=settings_to_env(stack_settings)
    )
    assert bad_id.returncode == 2 and "stream id 'call {1}' not allowed" in bad_id.stderr


def make_event(stream_id: str, segment_index: int, label: str) -> EmotionEvent:
    scores = {name: (0.7 if name == label else 0.1) for name in LABELS}
    return EmotionEvent(
        stream_id=stream_id,
        segment_index=segment_index,
        start_ms=1000.0 * segment_index,
        end_ms=1000.0 * segment_index + 800,
        label=label,
        scores=scores,
        model_name="plb-test",
        model_version="1",
        role=ChannelRole.CUSTOMER,
    )


def produce_events(
    settings: Settings, events: list[EmotionEvent | bytes], *, timestamp_ms: int | None = None
) -> None:
    producer = KafkaProducer(
        **kafka_python_options(settings.kafka, client_id="test"),
        acks="all",
        enable_idempotence=False,
    )
    try:
        for event in events:
            if isinstance(event, bytes):
                producer.send(
                    settings.topics.emotions, key=b"junk", value=event, timestamp_ms=timestamp_ms
                )
            else:
                producer.send(
                    settings.topics.emotions,
                    key=event.stream_id.encode(),
                    value=event.model_dump_json().encode(),
                    timestamp_ms=timestamp_ms,
                )
        producer.flush(timeout=10)
    finally:
        producer.close()


def test_tail_prints_new_results_of_one_stream_as_json_and_skips_old_ones(
    emostream_cli, stack_settings: Settings
) -> None:
    an_hour_ago_ms = int(time.time() * 1000) - 3_600_000
    produce_events(
        stack_settings, [make_event("call-1:customer", 0, "neutral")], timestamp_ms=an_hour_ago_ms
    )
    tail = subprocess.Popen(
        emostream_cli.argv(
            "tail",
            "--json",
            "--stream-id",
            "call-1:customer",
            "--max-events",
            "2",
            "--timeout-s",
            "30",
        ),
        env=emostream_cli.environment(settings_to_env(stack_settings)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    produce_events(
        stack_settings,
        [
            make_event("call-1:customer", 1, "angry"),
            make_event("call-2:customer", 0, "happy"),
            b"not json",
            make_event("call-1:customer", 2, "sad"),
        ],
    )
    stdout, stderr = tail.communicate(timeout=40)
    assert tail.returncode == 0, stderr
    events = [EmotionEvent.model_validate_json(line) for line in stdout.splitlines()]
    assert [
        (event.stream_id, event.segment_index, event.label)
        for event in sorted(events, key=lambda e: e.segment_index)
    ] == [
        ("call-1:customer", 1, "angry"),
        ("call-1:customer", 2, "sad"),
    ]


def test_tail_from_beginning_shows_history_in_readable_lines_and_reports_bad_records(
    emostream_cli, stack_settings: Settings
) -> None:
    an_hour_ago_ms = int(time.time() * 1000) - 3_600_000
    produce_events(
        stack_settings,
        [make_event("call-3:customer", 0, "neutral"), b'{"half": '],
        timestamp_ms=an_hour_ago_ms,
    )
    completed = emostream_cli.run(
        "tail",
        "--from-beginning",
        "--idle-timeout-s",
        "3",
        env=settings_to_env(stack_settings),
        timeout_s=30,
    )
    assert completed.returncode == 0, completed.stderr
    assert (
        "call-3:customer #0" in completed.stdout
        and "neutral" in completed.stdout
        and "0.70" in completed.stdout
    )
    assert (
        "not an EmotionEvent" in completed.stderr
        and stack_settings.topics.emotions in completed.stderr
    )
    json_lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert json_lines == []  # readable, not JSON, without --json


def test_send_and_tail_say_when_the_broker_cannot_be_reached(emostream_cli, speech_wav: Path) -> None:
    from emostream.workers.stack.services import find_free_port

    nowhere = f"127.0.0.1:{find_free_port()}"  # nothing listens there
    environment = emostream_cli.environment()
    commands = {  # side by side: each waits out the client's bootstrap timeout
        "send": emostream_cli.argv("send", str(speech_wav), "--stream-id", "call-9:customer",
                                   "--bootstrap-servers", nowhere),
        "tail": emostream_cli.argv("tail", "--bootstrap-servers", nowhere, "--timeout-s", "5"),
    }
    running = {name: subprocess.Popen(argv, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for name, argv in commands.items()}
    for name, process in running.items():
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 1 and "Traceback" not in stderr, stderr
        assert f"emostream {name}: cannot reach the broker at {nowhere}" in stderr
