"""A gateway that is not written in Python can produce audio: kcat (librdkafka, C) -> our parser.

kcat comes from Debian's package (`apt-get install -y kcat`; `.ci/run` installs it when missing).

Known incompatibility, worked around here: Debian 12's kcat uses librdkafka 2.0.2, which cannot parse
the ApiVersions v3 response of the Tansu 0.6.0 broker ("Protocol read buffer underflow for
ApiVersion v3", then it gives up; `api.version.request=false` is not honoured). The response's
trailing tagged fields (SupportedFeatures, FinalizedFeaturesEpoch=-1, FinalizedFeatures,
ZkMigrationReady) are what it trips on. So kcat talks to a private broker through a small relay,
`ApiVersionsTagStripper`, that forwards every request and response byte for byte except that it
empties those trailing tagged fields of ApiVersions v3+ responses. Produce, Fetch and Metadata,
and therefore the audio records, their keys and headers, pass through untouched. Against a real
Kafka cluster kcat needs no relay.
"""

import asyncio
import shutil
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import soundfile
from emostream.schemas.audio import AudioChunkHeader, AudioEncoding, ChannelRole
from emostream.schemas.settings import Settings
from emostream.workers.stack.services import TansuBroker, find_free_port
from emostream.workers.stack.settings_env import settings_to_env

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(
    KCAT is None,
    reason="kcat is not installed: `apt-get install -y kcat` (Debian package; .ci/run installs it)",
)

API_VERSIONS_KEY = 18
FIRST_FLEXIBLE_API_VERSIONS = 3


def _read_uvarint(buffer: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _skip_tagged_fields(buffer: bytes, position: int) -> int:
    count, position = _read_uvarint(buffer, position)
    for _ in range(count):
        _tag, position = _read_uvarint(buffer, position)
        size, position = _read_uvarint(buffer, position)
        position += size
    return position


def strip_api_versions_tags(response: bytes) -> bytes:
    """ApiVersions v3+ response (correlation id first) with its trailing tagged fields emptied."""
    position = 4 + 2  # correlation id, error code
    entries, position = _read_uvarint(response, position)  # compact array: N + 1
    for _ in range(max(entries - 1, 0)):
        position += 6  # api key, min version, max version
        position = _skip_tagged_fields(response, position)
    position += 4  # throttle time
    return response[:position] + b"\x00"


class ApiVersionsTagStripper:
    """A loopback relay in front of a broker; see the module docstring for why and what it changes."""

    def __init__(self, *, listen_port: int, broker_port: int) -> None:
        self.listen_port = listen_port
        self.broker_port = broker_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kafka-relay", daemon=True
        )
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> "ApiVersionsTagStripper":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.listen_port), self._loop
        ).result(timeout=5)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        requested: dict[int, tuple[int, int]] = {}  # correlation id -> (api key, api version)
        tasks = [
            asyncio.ensure_future(self._requests(client_reader, broker_writer, requested)),
            asyncio.ensure_future(self._responses(broker_reader, client_writer, requested)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_writer.close()
        broker_writer.close()

    @staticmethod
    async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while True:
            try:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                yield await reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requested: dict
    ) -> None:
        async for frame in self._frames(reader):
            api_key, api_version, correlation_id = struct.unpack_from(">hhi", frame, 0)
            requested[correlation_id] = (api_key, api_version)
            writer.write(struct.pack(">i", len(frame)) + frame)
            await writer.drain()

    async def _responses(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requested: dict
    ) -> None:
        async for frame in self._frames(reader):
            api_key, api_version = requested.pop(struct.unpack_from(">i", frame, 0)[0], (None, 0))
            error_code = struct.unpack_from(">h", frame, 4)[0] if len(frame) >= 6 else -1
            if (
                api_key == API_VERSIONS_KEY
                and api_version >= FIRST_FLEXIBLE_API_VERSIONS
                and error_code == 0
            ):
                frame = strip_api_versions_tags(frame)
            writer.write(struct.pack(">i", len(frame)) + frame)
            await writer.drain()


@pytest.fixture
def kcat_broker(tmp_path: Path) -> Iterator[str]:
    """A private Tansu broker whose advertised address is the relay's; yields that address."""
    relay_port = find_free_port()
    broker = TansuBroker(log_dir=tmp_path, advertised_address=f"127.0.0.1:{relay_port}").start()
    relay = ApiVersionsTagStripper(listen_port=relay_port, broker_port=broker.port).start()
    yield f"127.0.0.1:{relay_port}"
    relay.stop()
    broker.stop()


def run_kcat(
    *args: str, timeout_s: float = 30.0, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    assert KCAT is not None
    return subprocess.run(
        [KCAT, *args], input=stdin, capture_output=True, timeout=timeout_s, check=False
    )


def test_kcat_produced_mulaw_chunk_parses_as_an_audio_chunk(
    kcat_broker: str,
    make_stack_settings: Callable[..., Settings],
    read_topic: Callable,
    speech_wav: Path,
    tmp_path: Path,
) -> None:
    settings = make_stack_settings(bootstrap_servers=kcat_broker)
    samples, _ = soundfile.read(str(speech_wav), dtype="int16", frames=1_600)  # 100 ms at 16 kHz
    chunk = tmp_path / "chunk.raw"
    chunk.write_bytes(samples.astype("<i2").tobytes())
    produced = run_kcat(
        "-P",
        "-b",
        kcat_broker,
        "-t",
        settings.topics.audio,
        "-k",
        "call-42:customer",
        "-H",
        "v=1",
        "-H",
        "seq=17",
        "-H",
        "rate=16000",
        "-H",
        "enc=s16le",
        "-H",
        "role=customer",
        "-H",
        "ts_ms=1732330000123",
        "-H",
        "eos=false",
        str(chunk),
    )
    assert produced.returncode == 0, produced.stderr.decode(errors="replace")

    (record,) = read_topic(settings, settings.topics.audio, min_records=1)
    header = AudioChunkHeader.from_kafka(record.key, record.headers)
    assert header == AudioChunkHeader(
        stream_id="call-42:customer",
        seq=17,
        rate=16_000,
        enc=AudioEncoding.S16LE,
        role=ChannelRole.CUSTOMER,
        ts_ms=1_732_330_000_123,
        eos=False,
    )
    assert record.value == chunk.read_bytes()
    assert header.duration_ms(len(record.value)) == 100.0


def test_kcat_reads_what_emostream_send_produced_with_its_text_headers(
    kcat_broker: str, make_stack_settings: Callable[..., Settings], emostream_cli, speech_wav: Path
) -> None:
    settings = make_stack_settings(bootstrap_servers=kcat_broker)
    sent = emostream_cli.run(
        "send",
        str(speech_wav),
        "--stream-id",
        "call-5:agent",
        "--role",
        "agent",
        "--encoding",
        "alaw",
        "--chunk-ms",
        "200",
        env=settings_to_env(settings),
    )
    assert sent.returncode == 0, sent.stderr
    consumed = run_kcat(
        "-C",
        "-b",
        kcat_broker,
        "-t",
        settings.topics.audio,
        "-o",
        "beginning",
        "-c",
        "41",
        "-q",
        "-f",
        "%k|%h|%S\n",
    )
    assert consumed.returncode == 0, consumed.stderr.decode(errors="replace")
    lines = consumed.stdout.decode().splitlines()
    assert len(lines) == 41  # 7.9 s in 200 ms chunks + the end-of-stream record
    first = lines[0].split("|")
    assert first[0] == "call-5:agent"
    assert first[1].startswith("v=1,seq=0,rate=8000,enc=alaw,role=agent,ts_ms=") and first[
        1
    ].endswith(",eos=false")
    assert first[2] == "1600"  # 200 ms at 8 kHz, one byte per sample
    assert lines[-1].split("|")[1].endswith("eos=true") and lines[-1].split("|")[2] == "0"
    assert all(line.split("|")[0] == "call-5:agent" for line in lines)
