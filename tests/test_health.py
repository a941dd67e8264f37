"""Liveness (`/healthz`) and readiness (`/readyz`) of a real worker: an agent that stopped fails
liveness while the process lives on; and bounded memory while Redis is down: past `vad.max_held_chunks` the VAD agent stops taking records, so records wait, and after
`observability.liveness_stall_s` liveness fails; once Redis is back it takes records again and is
live."""

import json
import urllib.error
import urllib.request

import pytest
import soundfile as sf
from emostream.plugins import Plugin, PluginOptions
from emostream.schemas.settings import Settings
from emostream.workers.cli.clients.producer import make_audio_producer

from tests._workers_helpers import chunked, segment_headers, send_chunks, wait_for

STALL_S = 3.0
MAX_HELD_CHUNKS = 20


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_metrics_listen_on_loopback_unless_told_otherwise() -> None:
    assert Settings().observability.metrics_host == "127.0.0.1"
    overridden = Settings(observability={"metrics_host": "0.0.0.0"})
    assert overridden.observability.metrics_host == "0.0.0.0"


@pytest.mark.slow
def test_liveness_fails_while_records_wait_untaken_and_recovers_with_redis(
    make_stack_settings, restartable_redis, spawn_worker, read_topic, speech_fixture
):
    settings = make_stack_settings(
        redis_url=restartable_redis.url,
        redis={"retry_interval_s": 0.5},
        vad={"max_held_chunks": MAX_HELD_CHUNKS},
        observability={"liveness_stall_s": STALL_S},
        topics={"partitions": 1},
    )
    worker = spawn_worker("vad", settings)
    base = f"http://127.0.0.1:{worker.metrics_port}"
    status, ready = _get(f"{base}/readyz")
    assert status == 200 and ready["status"] == "ready", ready
    assert _get(f"{base}/healthz")[0] == 200

    restartable_redis.stop()
    samples, _ = sf.read(speech_fixture.path, dtype="int16")
    pieces = chunked(samples, 320)
    producer = make_audio_producer(settings)
    # first seen at seq 1 while Redis is down: the stream waits for its checkpoint, holding chunks
    send_chunks(
        producer,
        topic=settings.topics.audio,
        stream_id="held:user",
        samples=samples,
        seqs=list(range(1, len(pieces))),
    )

    def failing():
        status, document = _get(f"{base}/healthz")
        return document if status == 503 else None

    document = wait_for(failing, timeout_s=STALL_S + 30, what="/healthz 503")
    assert document["status"] == "failing"
    assert any("took no record" in problem for problem in document["problems"]), document
    assert document["held_chunks"] <= MAX_HELD_CHUNKS, "memory stays bounded while Redis is down"
    assert _get(f"{base}/readyz")[0] == 503

    restartable_redis.start()
    wait_for(lambda: _get(f"{base}/healthz")[0] == 200, timeout_s=30, what="/healthz 200 again")
    wait_for(lambda: _get(f"{base}/readyz")[0] == 200, timeout_s=30, what="/readyz 200 again")
    def all_segments():
        found = segment_headers(
            read_topic(
                settings,
                settings.topics.segments,
                stream_id="held:user",
                timeout_s=2,
                min_records=len(speech_fixture.utterances),
            )
        )
        return found if len(found) >= len(speech_fixture.utterances) else None

    segments = wait_for(all_segments, timeout_s=40, what="the held stream's segments")
    assert len(segments) == len(speech_fixture.utterances), "nothing of the call was lost"


class FailingStartPlugin(Plugin[PluginOptions]):
    """A plugin whose start() fails: the plugin runner's agent stops on its first record."""

    kind = "failing-start"

    async def start(self, context) -> None:
        raise RuntimeError("cannot reach the CRM")

    async def on_emotion(self, event) -> None: ...


@pytest.mark.slow
def test_liveness_fails_when_an_agent_stopped(stack_settings, spawn_worker):
    config = [{"type": "tests.test_health:FailingStartPlugin", "name": "crm"}]
    worker = spawn_worker(
        "plugins",
        stack_settings,
        env={"EMOSTREAM_PLUGINS__CONFIG_JSON": json.dumps(config)},
        wait_healthy=False,
    )
    base = f"http://127.0.0.1:{worker.metrics_port}"

    def failing():
        assert worker.is_running(), "the process stays up: only liveness can tell it is useless"
        status, document = _get(f"{base}/healthz") if _answers(base) else (0, {})
        return document if status == 503 else None

    document = wait_for(failing, timeout_s=90, what="/healthz 503")
    assert document["status"] == "failing"
    assert any("agent emostream-plugins stopped" in problem for problem in document["problems"])
    assert _get(f"{base}/readyz")[0] == 503


@pytest.mark.slow
def test_a_worker_whose_model_cannot_load_exits_with_one_line_naming_it(stack_settings, spawn_worker):
    worker = spawn_worker("inference", stack_settings, env={"EMOSTREAM_INFERENCE__MODEL": "no-such-model"},
                          wait_healthy=False)
    wait_for(lambda: worker.returncode is not None, timeout_s=90, what="the worker's exit")
    assert worker.returncode == 2
    log = worker.log_tail(50_000)
    assert "the inference worker cannot start: model 'no-such-model' not found; available: " in log
    assert "Traceback" not in log


def _answers(base: str) -> bool:
    try:
        urllib.request.urlopen(f"{base}/metrics", timeout=2).close()
        return True
    except OSError:
        return False
