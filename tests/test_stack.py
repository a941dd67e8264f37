"""The local stack: real Tansu broker and redis-server processes, topics, `emostream up`."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from emostream.schemas.settings import Settings
from emostream.workers.runtime.kafka_config import kafka_python_options
from emostream.workers.runtime.topics import TopicError, TopicSpec, ensure_topics, stack_topics
from emostream.workers.stack.services import (
    RedisServer,
    TansuBroker,
    find_free_port,
    kafka_metadata_brokers,
    port_is_free,
)
from emostream.workers.stack.settings_env import child_environment, settings_to_env
from kafka import KafkaAdminClient, KafkaProducer

UP_READY_TIMEOUT_S = 30.0


# `up` stops its services with SIGKILL after their grace (5 s each), so it always ends; this is a
# deadline for that event on a loaded machine (CI shares 2 cores with training), not a speed claim
STOP_DEADLINE_S = 60.0
TANSU_CLIENT_WAIT_S = 5.0  # Tansu waits this long for connected clients after SIGTERM

def test_broker_is_ready_fast_and_advertises_its_loopback_address(
    broker_service: TansuBroker,
) -> None:
    assert broker_service.started_in_s is not None  # it answered a metadata request
    brokers = kafka_metadata_brokers(broker_service.host, broker_service.port)
    assert [(host, port) for _node, host, port in brokers] == [("127.0.0.1", broker_service.port)]


def test_redis_is_the_suites_own_not_the_machines(
    redis_url: str, redis_service: RedisServer
) -> None:
    assert redis_service.port != 6379
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    assert client.info("server")["tcp_port"] == redis_service.port
    assert client.config_get("save")["save"] == ""  # nothing written to disk


def test_topics_are_created_with_their_partition_counts(stack_settings: Settings) -> None:
    admin = KafkaAdminClient(**kafka_python_options(stack_settings.kafka, client_id="test"))
    try:
        described = {
            item["name"]: len(item["partitions"])
            for item in admin.describe_topics([spec.name for spec in stack_topics(stack_settings)])
        }
    finally:
        admin.close()
    assert described == {
        spec.name: 8 for spec in stack_topics(stack_settings)
    }  # Tansu would auto-create 4


def test_existing_topic_with_fewer_partitions_is_refused_by_name(stack_settings: Settings) -> None:
    with pytest.raises(
        TopicError,
        match=re.escape(
            f"topic '{stack_settings.topics.audio}': exists with 8 partitions, 12 wanted"
        ),
    ):
        ensure_topics(stack_settings.kafka, [TopicSpec(stack_settings.topics.audio, 12)])
    # asking again for what exists is fine (idempotent)
    assert (
        ensure_topics(stack_settings.kafka, stack_topics(stack_settings))[
            stack_settings.topics.audio
        ]
        == 8
    )


def test_broker_restart_keeps_its_port_and_clients_reconnect_but_data_is_lost(
    restartable_broker: TansuBroker,
) -> None:
    settings = Settings(kafka={"bootstrap_servers": restartable_broker.bootstrap_servers})
    spec = TopicSpec("restart-probe", 2)
    ensure_topics(settings.kafka, [spec])
    producer = KafkaProducer(
        **kafka_python_options(settings.kafka, client_id="test"),
        acks="all",
        enable_idempotence=False,
    )
    try:
        producer.send(spec.name, key=b"k", value=b"before").get(timeout=10)
        port = restartable_broker.port
        began = time.monotonic()
        restartable_broker.restart(down_s=0.5)
        restart_s = time.monotonic() - began
        assert restartable_broker.port == port and restartable_broker.is_running()
        print(f"restart took {restart_s:.1f} s")
        admin = KafkaAdminClient(**kafka_python_options(settings.kafka, client_id="test"))
        try:
            assert spec.name not in admin.list_topics()  # memory:// storage: everything is gone
        finally:
            admin.close()
        ensure_topics(settings.kafka, [spec])
        # the producer created before the restart reconnects on its own
        metadata = producer.send(spec.name, key=b"k", value=b"after").get(timeout=20)
        assert metadata.offset == 0
    finally:
        producer.close(timeout=2)


def test_redis_restart_keeps_its_port_and_loses_keys(restartable_redis: RedisServer) -> None:
    client = redis.Redis.from_url(restartable_redis.url)
    client.set("emo:v1:{call-1:customer}:latest", b"{}", ex=60)
    assert client.ttl("emo:v1:{call-1:customer}:latest") > 0
    port = restartable_redis.port
    restartable_redis.restart(down_s=0.2)
    assert restartable_redis.port == port
    assert (
        client.get("emo:v1:{call-1:customer}:latest") is None
    )  # the client reconnected; the key is gone
    assert client.ping()


def test_stop_frees_the_port_and_reaps_the_process(tmp_path: Path) -> None:
    broker = TansuBroker(log_dir=tmp_path).start()
    server = RedisServer(log_dir=tmp_path).start()
    pids = [broker.pid, server.pid]
    # a connected client must not make the stop hang (Tansu waits ~5 s for clients on SIGTERM)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, enable_idempotence=False)
    began = time.monotonic()
    broker.stop()
    server.stop()
    stop_s = time.monotonic() - began
    producer.close(timeout=0)
    # a deadline below Tansu's own ~5 s wait for connected clients: stop() did not wait for it
    assert stop_s < TANSU_CLIENT_WAIT_S, f"stop took {stop_s:.1f} s"
    assert port_is_free(broker.port) and port_is_free(server.port)
    for pid in pids:
        assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_start_on_a_taken_port_names_the_service_and_port(
    tmp_path: Path, broker_service: TansuBroker
) -> None:
    from emostream.workers.stack.services import ServiceError

    with pytest.raises(ServiceError, match=rf"tansu: .*127\.0\.0\.1:{broker_service.port}"):
        TansuBroker(port=broker_service.port, log_dir=tmp_path).start(timeout_s=3.0)


def test_worker_subprocess_sees_exactly_the_parents_settings(stack_settings: Settings) -> None:
    environment = child_environment(
        stack_settings, base={**os.environ, "EMOSTREAM_VAD__HANGOVER_MS": "999"}
    )
    script = "from emostream.schemas.settings import Settings; print(Settings().model_dump_json())"
    completed = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    )
    assert json.loads(completed.stdout) == json.loads(stack_settings.model_dump_json())


def test_console_command_lists_up_send_and_tail() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "emostream.workers.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for command in ("up", "send", "tail"):
        assert re.search(rf"\b{command}\b", completed.stdout), (
            f"`emostream {command}` missing: add emostream.workers.cli.commands.{command} to cli.COMMAND_MODULES"
        )


def _start_up(
    emostream_cli, *args: str, log_dir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        emostream_cli.argv("up", *args, "--log-dir", str(log_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=emostream_cli.environment(env),
    )
    lines: list[str] = []
    deadline = time.monotonic() + UP_READY_TIMEOUT_S
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("ready"):
            return process, lines
    process.kill()
    raise AssertionError("emostream up did not print 'ready':\n" + "\n".join(lines))


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_without_workers_serves_kafka_and_redis_then_stops_everything(
    emostream_cli, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    broker_port = find_free_port()
    process, lines = _start_up(
        emostream_cli,
        "--vad-workers",
        "0",
        "--inference-workers",
        "0",
        "--plugin-workers",
        "0",
        "--broker-port",
        str(broker_port),
        log_dir=tmp_path,
    )
    output = "\n".join(lines)
    assert f"kafka    127.0.0.1:{broker_port} (started)" in output
    redis_url = re.search(r"^redis    (redis://\S+)", output, re.MULTILINE)
    assert redis_url, output
    assert redis.Redis.from_url(redis_url.group(1)).ping()
    defaults = Settings(kafka={"bootstrap_servers": f"127.0.0.1:{broker_port}"})
    admin = KafkaAdminClient(**kafka_python_options(defaults.kafka, client_id="test"))
    try:
        assert set(admin.list_topics()) >= {spec.name for spec in stack_topics(defaults)}
    finally:
        admin.close()
    redis_port = int(redis_url.group(1).rsplit(":", 1)[1].split("/")[0])
    process.send_signal(stop_signal)
    remaining, _ = process.communicate(timeout=STOP_DEADLINE_S)
    assert process.returncode == 0, remaining
    assert "stopped" in remaining
    assert port_is_free(broker_port) and port_is_free(redis_port)


def test_up_external_uses_the_configured_kafka_and_redis_and_creates_the_topics_there(
    emostream_cli, tmp_path: Path, make_stack_settings, broker: str, redis_service: RedisServer
) -> None:
    settings = make_stack_settings(create_topics_now=False)
    no_workers = ["--vad-workers", "0", "--inference-workers", "0", "--plugin-workers", "0"]
    process, lines = _start_up(
        emostream_cli, "--external", *no_workers, log_dir=tmp_path, env=settings_to_env(settings)
    )
    output = "\n".join(lines)
    assert f"kafka    {broker} (external)" in output
    assert f"redis    {settings.redis.url} (external)" in output
    admin = KafkaAdminClient(**kafka_python_options(settings.kafka, client_id="test"))
    try:
        assert set(admin.list_topics()) >= {spec.name for spec in stack_topics(settings)}
    finally:
        admin.close()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=STOP_DEADLINE_S)
    assert process.returncode == 0
    # the external services are untouched
    assert kafka_metadata_brokers("127.0.0.1", int(broker.rsplit(":", 1)[1]))
    assert redis.Redis.from_url(redis_service.url).ping()


@pytest.mark.slow
def test_up_demo_streams_the_bundled_recording_and_prints_a_result_per_utterance(
    emostream_cli, tmp_path: Path, speech_fixture
) -> None:
    from tests._model_helpers import write_checkpoint

    # an untrained checkpoint of the shipped architecture: this test is about the stack, not accuracy
    labels = ["neutral", "happy", "sad", "angry"]
    write_checkpoint(tmp_path / "models" / "stack-test-plb", labels, name="stack-test-plb")
    environment = emostream_cli.environment(
        {
            "EMOSTREAM_MODEL_PATH": str(tmp_path / "models"),
            "EMOSTREAM_INFERENCE__MODEL": "stack-test-plb",
        }
    )
    completed = subprocess.run(
        emostream_cli.argv(
            "up",
            "--demo",
            "--exit-after-demo",
            "--json",
            "--broker-port",
            str(find_free_port()),
            "--log-dir",
            str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=240,
        env=environment,
        check=False,
    )
    logs = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
        for path in sorted(tmp_path.glob("*.log"))
    )
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}\n{logs}"
    events = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(events) == len(speech_fixture.utterances), completed.stdout
    for event, utterance in zip(
        sorted(events, key=lambda item: item["segment_index"]), speech_fixture.utterances
    ):
        assert abs(event["start_ms"] - utterance.start_ms) < 400
        assert abs(event["end_ms"] - utterance.end_ms) < 600
        assert event["model_name"] == "stack-test-plb" and set(event["scores"]) == set(labels)
        assert event["label"] in labels and abs(sum(event["scores"].values()) - 1.0) < 1e-3
