"""Shared fixtures: a real broker and a real Redis started by the suite, per-test isolation, workers.

Session-wide services (started once, on free loopback ports, never the machine's own Redis):
- `broker_service` -> TansuBroker, `broker` -> "127.0.0.1:PORT". Do not stop or restart these:
  every test shares them. A test that restarts its broker uses `restartable_broker`.
- `redis_service` -> RedisServer (1024 databases), `redis_url` -> "redis://127.0.0.1:PORT/0".

Per test (isolated from every other test):
- `stack_settings` -> Settings pointing at the shared broker and at a fresh Redis database of its
  own, with topic names and worker_id (consumer groups) unique to the test; topics already created.
- `make_stack_settings(bootstrap_servers=None, redis_url=None, create_topics_now=True, **sections)` for
  more than one such Settings, or for ones pointing at a `restartable_broker` / `restartable_redis`.
- `stack_env` -> the EMOSTREAM_* variables of `stack_settings` (for your own subprocesses).
- `stack_redis` -> redis.Redis on the test's database.
- `create_topics(settings)` -> {topic: partitions}; creates what is missing (e.g. after a restart).
- `read_topic(settings, topic, min_records=1, timeout_s=10, stream_id=None)` -> records, from
  offset 0 of every partition, no consumer group, no end offsets.
- `spawn_worker(stage, settings=None, env=None, name=None, wait_healthy=True)` -> WorkerProcess
  running `python -m emostream.workers.stages <stage>`; `.kill()` is kill -9. All are stopped
  after the test, and their log tails are printed (pytest shows them when the test fails).
- `restartable_broker` / `restartable_redis`: a private TansuBroker / RedisServer for the test;
  `.restart(down_s=...)` keeps the port. In-memory: a restart loses all topics / keys.
- `speech_wav` -> Path of tests/fixtures/speech.wav; `speech_fixture` -> its utterance times.
- `emostream_cli` -> `.argv(*args)` / `.run(*args, env=..., timeout_s=...)` for the console command.
- `asr_digits` / `asr_pretrained` / `asr_checkpoint` (session): the tiny ASR-multitask model of
  tests/_asr_helpers.py, trained once per session on a few FSDD clips; skipped without FSDD.
"""

import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest
import redis
from emostream.schemas.settings import Settings
from emostream.workers import cli
from emostream.workers.runtime.kafka_config import kafka_python_options
from emostream.workers.runtime.topics import ensure_topics, stack_topics
from emostream.workers.stack.local_stack import WorkerProcess
from emostream.workers.stack.services import RedisServer, TansuBroker
from emostream.workers.stack.settings_env import is_settings_variable, settings_to_env
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

if TYPE_CHECKING:  # torch and the model load only in the sessions that train it
    from emostream.model.asr_training import UtteranceSet

    from tests._asr_helpers import Pretrained, ServedCheckpoint

FIXTURES_DIR = Path(__file__).parent / "fixtures"
REDIS_DATABASES = 1024  # one fresh database per test that asks for stack settings
_redis_db_counter = itertools.count(1)  # database 0 is `redis_url`'s, shared
_test_counter = itertools.count(1)


# Hypothesis: `.ci/run` selects the "ci" profile (derandomized: the same examples on every run, so a
# failure in CI reproduces locally with HYPOTHESIS_PROFILE=ci); developers get random exploration.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.register_profile("dev")
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config: pytest.Config) -> None:
    # The suite configures everything it starts; a developer's exported EMOSTREAM_* settings
    # must not leak into Settings() built here or in worker subprocesses.
    for name in [name for name in os.environ if is_settings_variable(name)]:
        del os.environ[name]


# -- services ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def broker_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    service = TansuBroker(log_dir=tmp_path_factory.mktemp("tansu"))
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def broker(broker_service: TansuBroker) -> str:
    """Bootstrap address of the session's Tansu broker, e.g. "127.0.0.1:40123"."""
    return broker_service.bootstrap_servers


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    service = RedisServer(log_dir=tmp_path_factory.mktemp("redis"), databases=REDIS_DATABASES)
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_url(redis_service: RedisServer) -> str:
    """URL of database 0 of the session's redis-server (not the machine's Redis on 6379)."""
    return redis_service.url


@pytest.fixture
def restartable_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own: stop / start / restart(down_s=...) keep its port; data is lost."""
    service = TansuBroker(log_dir=tmp_path)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: stop / start / restart(down_s=...) keep its port; keys are lost."""
    service = RedisServer(log_dir=tmp_path)
    service.start()
    yield service
    service.stop()


# -- per-test settings --------------------------------------------------------------------------
def _test_tag(request: pytest.FixtureRequest) -> str:
    readable = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24]
    return f"t{next(_test_counter):03d}-{readable}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def create_topics() -> Callable[[Settings], dict[str, int]]:
    """`create_topics(settings)`: create every topic of `settings` (idempotent); {name: partitions}."""

    def create(settings: Settings) -> dict[str, int]:
        return ensure_topics(settings.kafka, stack_topics(settings))

    return create


@pytest.fixture
def make_stack_settings(
    request: pytest.FixtureRequest,
    broker: str,
    redis_service: RedisServer,
    create_topics: Callable[[Settings], dict[str, int]],
) -> Callable[..., Settings]:
    """Factory of isolated Settings: unique topics / worker_id / Redis database per call.

    `make_stack_settings(bootstrap_servers=None, redis_url=None, create_topics_now=True, **sections)`;
    `sections` override whole settings sections by field, e.g. `vad={"hangover_ms": 200}`,
    `topics={"partitions": 2}`, `inference={"batch_max": 4}`.
    """
    tag = _test_tag(request)
    calls = itertools.count()

    def make(
        *,
        bootstrap_servers: str | None = None,
        redis_url: str | None = None,
        create_topics_now: bool = True,
        **sections: Mapping[str, Any],
    ) -> Settings:
        call_tag = tag if (index := next(calls)) == 0 else f"{tag}-{index}"
        if redis_url is None:
            database = next(_redis_db_counter) % REDIS_DATABASES or 1
            redis_url = redis_service.url_for_db(database)
            redis.Redis.from_url(redis_url).flushdb()
        topics = {
            "audio": f"emostream.audio.{call_tag}",
            "segments": f"emostream.segments.{call_tag}",
            "emotions": f"emostream.emotions.{call_tag}",
            "alerts": f"emostream.alerts.{call_tag}",
            "dead_letters": f"emostream.dead-letters.{call_tag}",
            **dict(sections.pop("topics", {})),
        }
        values: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": bootstrap_servers or broker,
                **dict(sections.pop("kafka", {})),
            },
            "redis": {"url": redis_url, **dict(sections.pop("redis", {}))},
            "topics": topics,
            "worker_id": f"emostream-{call_tag}",
            **sections,
        }
        settings = Settings(**values)
        if create_topics_now:
            create_topics(settings)
        return settings

    return make


@pytest.fixture
def stack_settings(make_stack_settings: Callable[..., Settings]) -> Settings:
    """Settings for this test alone: shared broker, own topics, own Redis database; topics created."""
    return make_stack_settings()


@pytest.fixture
def stack_env(stack_settings: Settings) -> dict[str, str]:
    """EMOSTREAM_* variables equal to `stack_settings` (add them to os.environ minus EMOSTREAM_*)."""
    return settings_to_env(stack_settings)


@pytest.fixture
def stack_redis(stack_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack_settings.redis.url)
    yield client
    client.close()


# -- reading topics -----------------------------------------------------------------------------
@pytest.fixture
def read_topic() -> Callable[..., list[ConsumerRecord]]:
    """`read_topic(settings, topic, min_records=1, timeout_s=10.0, stream_id=None)`.

    Reads every partition from offset 0 with no consumer group until at least `min_records`
    (matching `stream_id`, the record key, if given) arrived or `timeout_s` passed; returns them
    sorted by (partition, offset). Never asks for end offsets (Tansu's are wrong).
    """

    def read(
        settings: Settings,
        topic: str,
        *,
        min_records: int = 1,
        timeout_s: float = 10.0,
        stream_id: str | None = None,
    ) -> list[ConsumerRecord]:
        consumer = KafkaConsumer(
            **kafka_python_options(settings.kafka, client_id="emostream-tests"),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            deadline = time.monotonic() + timeout_s
            partitions = consumer.partitions_for_topic(topic)
            while not partitions and time.monotonic() < deadline:
                time.sleep(0.1)
                consumer.topics()
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise AssertionError(
                    f"topic {topic!r} does not exist at {settings.kafka.bootstrap_servers}"
                )
            assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
            consumer.assign(assigned)
            for partition in assigned:
                consumer.seek(partition, 0)
            records: list[ConsumerRecord] = []
            key = stream_id.encode("utf-8") if stream_id is not None else None
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(record for record in batch if key is None or record.key == key)
                if len(records) >= min_records:
                    # one more short poll so records produced in the same burst are included
                    for batch in consumer.poll(timeout_ms=200).values():
                        records.extend(
                            record for record in batch if key is None or record.key == key
                        )
                    break
            return sorted(records, key=lambda record: (record.partition, record.offset))
        finally:
            consumer.close()

    return read


# -- workers ------------------------------------------------------------------------------------
@pytest.fixture
def spawn_worker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """`spawn_worker(stage, settings=None, env=None, name=None, wait_healthy=True)` -> WorkerProcess.

    `stage` is "vad", "inference" or "plugins"; `settings` defaults to `stack_settings`; `env` adds
    variables after the settings' own. Waits for GET /healthz == 200 unless `wait_healthy=False`.
    """
    workers: list[WorkerProcess] = []

    def spawn(
        stage: str,
        settings: Settings | None = None,
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        wait_healthy: bool = True,
        ready_timeout_s: float = 90.0,
    ) -> WorkerProcess:
        settings = settings or request.getfixturevalue("stack_settings")
        name = name or f"{stage}-{len(workers)}"
        worker = WorkerProcess(
            stage, settings=settings, name=name, log_path=tmp_path / f"{name}.log", extra_env=env
        )
        workers.append(worker.start())
        if wait_healthy:
            worker.wait_healthy(ready_timeout_s)
        return worker

    yield spawn
    for worker in workers:
        worker.terminate()
    for worker in workers:
        code = worker.stop(grace_s=5.0)
        print(
            f"\n--- worker {worker.name} (exit {code}), log {worker.log_path} ---\n{worker.log_tail(3_000)}"
        )


# -- audio fixtures -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Utterance:
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class SpeechFixture:
    path: Path
    sample_rate_hz: int
    duration_ms: int
    utterances: list[Utterance]


@pytest.fixture(scope="session")
def speech_fixture() -> SpeechFixture:
    """tests/fixtures/speech.wav (16 kHz mono s16, 7.9 s, 3 utterances) and where its speech is."""
    card = json.loads((FIXTURES_DIR / "speech.json").read_text())
    return SpeechFixture(
        path=FIXTURES_DIR / card["file"],
        sample_rate_hz=card["sample_rate_hz"],
        duration_ms=card["duration_ms"],
        utterances=[
            Utterance(item["start_ms"], item["end_ms"], item["text"]) for item in card["utterances"]
        ],
    )


@pytest.fixture(scope="session")
def speech_wav(speech_fixture: SpeechFixture) -> Path:
    return speech_fixture.path


# -- the console command ------------------------------------------------------------------------
class EmostreamCli:
    """Runs `emostream <command> ...` as a subprocess (`python -m emostream.workers.cli`)."""

    def argv(self, command: str, *args: str) -> list[str]:
        module = f"emostream.workers.cli.commands.{command}"
        if module in cli.COMMAND_MODULES:
            return [sys.executable, "-m", "emostream.workers.cli", command, *args]
        # Not registered in cli.COMMAND_MODULES yet: run the module alone (test_stack checks registration).
        return [sys.executable, "-m", module, *args]

    @staticmethod
    def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment without EMOSTREAM_* settings variables, plus `env`."""
        environment = {
            name: value for name, value in os.environ.items() if not is_settings_variable(name)
        }
        environment.update(env or {})
        return environment

    def run(
        self,
        command: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, *args),
            env=self.environment(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


@pytest.fixture(scope="session")
def emostream_cli() -> EmostreamCli:
    return EmostreamCli()


# -- the tiny ASR-multitask model (tests/_asr_helpers.py) ---------------------------------------
@pytest.fixture(scope="session")
def asr_digits() -> "UtteranceSet":
    """12 FSDD clips (george and jackson saying zero..five) as log-mel features; skips without FSDD."""
    from tests import _asr_helpers

    if not _asr_helpers.fsdd_available():
        pytest.skip(_asr_helpers.FSDD_MISSING)
    return _asr_helpers.digit_utterances()


@pytest.fixture(scope="session")
def asr_pretrained(asr_digits: "UtteranceSet") -> "Pretrained":
    """The CTC pre-trained network of `asr_digits`: (model, tokenizer, history)."""
    from tests import _asr_helpers

    return _asr_helpers.pretrain_digits(asr_digits)


@pytest.fixture(scope="session")
def asr_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, asr_digits: "UtteranceSet", asr_pretrained: "Pretrained"
) -> "ServedCheckpoint":
    """`asr_pretrained` fine-tuned with TL+MTL on the speakers, as a registry checkpoint folder that
    transcribes (`.folder`, `.card`, `.recipe`)."""
    from tests import _asr_helpers

    folder = tmp_path_factory.mktemp("asr-checkpoint") / _asr_helpers.SERVED_NAME
    return _asr_helpers.write_served_checkpoint(folder, asr_digits, asr_pretrained)
