"""`emostream up` supervises its workers: kill -9 of each stage's worker mid-call restarts it (with a
log line), the broker and Redis keep running, and the call loses nothing (one result per utterance).
"""

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import soundfile as sf
from emostream.schemas.audio import AudioEncoding, ChannelRole
from emostream.schemas.event import EmotionEvent
from emostream.schemas.settings import Settings
from emostream.workers.cli.clients.producer import make_audio_producer, send_recording
from emostream.workers.stack.services import find_free_port

from tests._workers_helpers import wait_for

UP_READY_TIMEOUT_S = 180.0
RESULTS_TIMEOUT_S = 180.0


class UpProcess:
    """`emostream up` as a subprocess; its output lines are collected by a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def finish_reading(self, timeout_s: float = 10.0) -> None:
        """After the process exited: wait until the reader took its last lines (EOF)."""
        self._reader.join(timeout_s)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout_s: float, *, after: int = 0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            for line in self.lines[after:]:
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                raise AssertionError(f"emostream up exited ({self.process.returncode}):\n{self.output}")
            return None

        return wait_for(found, timeout_s=timeout_s, what=f"{pattern!r} in up's output")

    def worker_pid(self, name: str) -> int:
        """The pid of worker `name` as last printed (at start or on a restart)."""
        pid = None
        for line in self.lines:
            if match := re.search(rf"worker\s+{re.escape(name)}\s+pid (\d+)", line):
                pid = int(match.group(1))
            if match := re.search(rf"worker {re.escape(name)} restarted \(pid (\d+)", line):
                pid = int(match.group(1))
        assert pid is not None, self.output
        return pid


@pytest.mark.slow
def test_up_restarts_a_killed_worker_of_each_stage_and_the_call_loses_nothing(
    emostream_cli, tmp_path: Path, speech_fixture, read_topic
) -> None:
    from tests._model_helpers import write_checkpoint

    labels = ["neutral", "happy", "sad", "angry"]
    write_checkpoint(tmp_path / "models" / "up-test-plb", labels, name="up-test-plb")
    environment = emostream_cli.environment(
        {"EMOSTREAM_MODEL_PATH": str(tmp_path / "models"), "EMOSTREAM_INFERENCE__MODEL": "up-test-plb"}
    )
    broker_port = find_free_port()
    up = UpProcess(
        emostream_cli.argv("up", "--broker-port", str(broker_port), "--log-dir", str(tmp_path)),
        environment,
    )
    try:
        up.wait_line(r"^ready in", UP_READY_TIMEOUT_S)
        redis_url = up.wait_line(r"^redis    (redis://\S+)", 1).group(1)
        settings = Settings(
            kafka={"bootstrap_servers": f"127.0.0.1:{broker_port}"}, redis={"url": redis_url}
        )
        samples, rate_hz = sf.read(speech_fixture.path, dtype="int16")
        stream_id = "call-supervised:customer"
        sender_errors: list[BaseException] = []

        def send() -> None:
            producer = make_audio_producer(settings)
            try:
                send_recording(
                    producer,
                    topic=settings.topics.audio,
                    stream_id=stream_id,
                    samples=samples,
                    sample_rate_hz=rate_hz,
                    encoding=AudioEncoding.S16LE,
                    role=ChannelRole.CUSTOMER,
                    realtime=True,
                )
            except BaseException as error:  # noqa: BLE001 - reported below
                sender_errors.append(error)
            finally:
                producer.close()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        for stage in ("vad", "inference", "plugins"):  # each stage's worker dies mid-call
            name = f"{stage}-0"
            mark = len(up.lines)
            os.kill(up.worker_pid(name), signal.SIGKILL)
            up.wait_line(rf"worker {name} \(pid \d+\) exited with code -9", 30, after=mark)
            up.wait_line(rf"worker {name} restarted \(pid \d+", 60, after=mark)
        sender.join(timeout=60)
        assert not sender_errors, sender_errors

        def results() -> list[EmotionEvent] | None:
            records = read_topic(
                settings, settings.topics.emotions, min_records=1, timeout_s=2, stream_id=stream_id
            )
            by_index = {}
            for record in records:
                event = EmotionEvent.model_validate_json(record.value)
                by_index[event.segment_index] = event
            found = [by_index[index] for index in sorted(by_index)]
            return found if len(found) >= len(speech_fixture.utterances) else None

        events = wait_for(results, timeout_s=RESULTS_TIMEOUT_S, what="one result per utterance")
        assert [event.segment_index for event in events] == list(range(len(speech_fixture.utterances)))
        for event, utterance in zip(events, speech_fixture.utterances):
            assert abs(event.start_ms - utterance.start_ms) < 400, (event, utterance)
        assert "stopping everything" not in up.output
        assert up.process.poll() is None, "up keeps running"
    finally:
        up.process.send_signal(signal.SIGTERM)
        try:
            up.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.process.kill()
        up.finish_reading()
        print(up.output)
    assert up.process.returncode == 0, up.output


@pytest.mark.parametrize("service", ["broker", "redis"])
def test_up_stops_everything_and_says_so_when_the_broker_or_redis_dies(
    emostream_cli, tmp_path: Path, service: str
) -> None:
    no_workers = ["--vad-workers", "0", "--inference-workers", "0", "--plugin-workers", "0"]
    up = UpProcess(
        emostream_cli.argv(
            "up", *no_workers, "--broker-port", str(find_free_port()), "--log-dir", str(tmp_path)
        ),
        emostream_cli.environment(),
    )
    try:
        up.wait_line(r"^ready in", UP_READY_TIMEOUT_S)
        pids = up.wait_line(r"^pids     broker (\d+), redis (\d+)", 1)
        os.kill(int(pids.group(1 if service == "broker" else 2)), signal.SIGKILL)
        up.process.wait(timeout=30)
    finally:
        if up.process.poll() is None:
            up.process.kill()
    up.finish_reading()
    assert up.process.returncode == 1, up.output
    name = "broker (Tansu" if service == "broker" else "Redis ("
    assert re.search(rf"emostream up: {re.escape(name)}.* exited; .*stopping everything", up.output), up.output
    assert "stopped" in up.output
