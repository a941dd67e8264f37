"""The local stack: broker + Redis + N worker processes per stage, started and stopped in order.

Workers run as `python -m emostream.workers.stages <stage>` subprocesses (the stage entry point,
not the CLI) configured only by
`EMOSTREAM_*` environment variables (see `settings_env`), exactly as they run in a container, so
`emostream up`, the test suite and Kubernetes start the same code the same way. Each worker gets a
free port for its health / metrics endpoint (`EMOSTREAM_OBSERVABILITY__METRICS_PORT`) and is ready
when `GET /healthz` answers 200.

Order: start broker and Redis, create topics, start workers; stop workers first (SIGTERM, then
SIGKILL after a grace period), then Redis, then the broker. `supervise()` (called by `emostream
up` in its loop) restarts a worker that died, with exponential backoff per worker
(`RESTART_BACKOFF_INITIAL_S` doubling up to `RESTART_BACKOFF_MAX_S`, reset once it ran
`RESTART_BACKOFF_RESET_S`); the broker and Redis keep running. `services_down()` names a broker
or Redis process that died: the one case where the stack stops as a whole. The stack is ready when every worker
is healthy and, per stage, its workers' /healthz `partitions` lists cover the input topic.
"""

import json
import logging
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from emostream.schemas.redaction import redact_url
from emostream.schemas.settings import Settings
from emostream.workers.runtime.stage_names import STAGE_ENTRY_MODULE, StageName, stage_input_topic
from emostream.workers.runtime.topics import ensure_topics, stack_topics
from emostream.workers.stack.services import (
    LOOPBACK_HOST,
    RedisServer,
    ServiceError,
    TansuBroker,
    die_with_parent_preexec,
    find_free_port,
    stop_process,
)
from emostream.workers.stack.settings_env import child_environment

__all__ = [
    "LocalStack",
    "StackCounts",
    "WorkerProcess",
    "worker_command",
]


RESTART_BACKOFF_INITIAL_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTART_BACKOFF_RESET_S = 60.0  # a worker that ran this long restarts after the initial backoff again
WORKER_STOP_GRACE_S = 10.0  # a worker finishing its batch, committing and leaving its group
WORKER_READY_TIMEOUT_S = 90.0  # first start imports torch / librosa and loads the model
HEALTH_POLL_INTERVAL_S = 0.2
HEALTH_REQUEST_TIMEOUT_S = 1.0

log = logging.getLogger(__name__)


def worker_command(stage: str, *, python: str = sys.executable) -> list[str]:
    """The command line that starts one worker of `stage` (environment carries the settings)."""
    try:
        StageName(stage)
    except ValueError:
        names = ", ".join(name.value for name in StageName)
        raise ValueError(f"unknown worker stage {stage!r}; use one of {names}") from None
    return [python, "-m", STAGE_ENTRY_MODULE, stage]


class WorkerProcess:
    """One worker subprocess: start, wait until /healthz answers, SIGTERM-stop or SIGKILL (crash)."""

    def __init__(
        self,
        stage: str,
        *,
        settings: Settings,
        log_path: Path,
        name: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.stage = stage
        self.name = name or stage
        self.metrics_port = settings.observability.metrics_port or find_free_port()
        update: dict[str, object] = {"metrics_port": self.metrics_port}
        if "metrics_host" in type(settings.observability).model_fields:
            update["metrics_host"] = (
                LOOPBACK_HOST  # a local worker's endpoint stays on this machine
            )
        observability = settings.observability.model_copy(update=update)
        self.settings = settings.model_copy(update={"observability": observability})
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at_s: float | None = None  # monotonic
        self.restarts = 0
        self.restart_backoff_s = RESTART_BACKOFF_INITIAL_S
        self.restart_due_s: float | None = None  # monotonic time of the next restart, once it died

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def health_url(self) -> str:
        """Liveness (`/healthz`); readiness is `ready_url`."""
        return f"http://{LOOPBACK_HOST}:{self.metrics_port}/healthz"

    @property
    def ready_url(self) -> str:
        return f"http://{LOOPBACK_HOST}:{self.metrics_port}/readyz"

    @property
    def metrics_url(self) -> str:
        """Prometheus text (`/metrics`)."""
        return f"http://{LOOPBACK_HOST}:{self.metrics_port}/metrics"

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def environment(self) -> dict[str, str]:
        environment = child_environment(self.settings)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        # glibc: keep the model's large tensors in the heap instead of an mmap/munmap per inference
        environment.setdefault("MALLOC_MMAP_THRESHOLD_", "67108864")
        environment.update(self.extra_env)
        return environment

    def start(self) -> "WorkerProcess":
        if self.is_running():
            raise ServiceError(f"worker {self.name} already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(
            self.log_path, "ab"
        ) as log_file:  # the child keeps its own copy of the descriptor
            self._process = subprocess.Popen(
                [*worker_command(self.stage), *self.extra_args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=die_with_parent_preexec(),  # noqa: PLW1509 (only a prctl call)
            )
        self.started_at_s = time.monotonic()
        log.info(
            "worker %s started (pid %d), health %s, log %s",
            self.name,
            self._process.pid,
            self.health_url,
            self.log_path,
        )
        return self

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_healthy(self) -> bool:
        """Ready: GET /readyz answers 200 (started, joined its group, live)."""
        try:
            with urllib.request.urlopen(
                self.ready_url, timeout=HEALTH_REQUEST_TIMEOUT_S
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def health(self) -> dict[str, Any]:
        """The /healthz JSON (e.g. status, stage, redis, partitions), or {} if it does not answer."""
        try:
            with urllib.request.urlopen(
                self.health_url, timeout=HEALTH_REQUEST_TIMEOUT_S
            ) as response:
                document = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return {}
        return document if isinstance(document, dict) else {}

    def wait_healthy(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> float:
        """Block until GET /readyz answers 200; return the seconds waited. Raises if it exits or times out."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if not self.is_running():
                raise ServiceError(
                    f"worker {self.name} exited with code {self.returncode} before it was healthy; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_healthy():
                return time.monotonic() - began
            time.sleep(HEALTH_POLL_INTERVAL_S)
        raise ServiceError(
            f"worker {self.name}: {self.ready_url} not answering 200 after {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def terminate(self) -> None:
        """Send SIGTERM and return at once (use `stop` to wait)."""
        if self.is_running():
            self._process.terminate()  # type: ignore[union-attr]

    def kill(self) -> int | None:
        """SIGKILL now: a crash, no commit, no leave-group. Returns the exit code (-9)."""
        return self.stop(grace_s=0.0)

    def stop(self, *, grace_s: float = WORKER_STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL. Returns the exit code (None if never started)."""
        return stop_process(self._process, f"worker {self.name}", grace_s)

    def log_tail(self, max_chars: int = 4_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""


@dataclass(frozen=True)
class StackCounts:
    """How many worker processes of each stage to run."""

    vad: int = 1
    inference: int = 1
    plugins: int = 1

    def by_stage(self) -> dict[str, int]:
        return {StageName.VAD: self.vad, StageName.INFERENCE: self.inference, StageName.PLUGINS: self.plugins}


@dataclass
class LocalStack:
    """Broker + Redis (unless `external`) + topics + workers, on loopback.

    `settings` are the base; `start()` replaces the Kafka and Redis addresses with those of the
    services it started (the broker on `broker_port`, Redis on `redis_port`, free ports if None).
    With `external=True` it starts no services and uses the addresses in `settings` as they are
    (a real Kafka cluster and Redis).
    """

    settings: Settings
    counts: StackCounts = field(default_factory=StackCounts)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emostream-stack-")))
    broker_port: int | None = None
    redis_port: int | None = None
    external: bool = False
    broker: TansuBroker | None = None
    redis: RedisServer | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    topic_partitions: dict[str, int] = field(default_factory=dict)  # as found after creating topics

    def start_services(self) -> Settings:
        """Start broker and Redis, create the topics; return the settings pointing at them."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.external:
            self.broker = TansuBroker(port=self.broker_port, log_dir=self.log_dir)
            self.broker.start()
            self.redis = RedisServer(port=self.redis_port, log_dir=self.log_dir)
            self.redis.start()
            kafka = self.settings.kafka.model_copy(
                update={"bootstrap_servers": self.broker.bootstrap_servers}
            )
            redis = self.settings.redis.model_copy(update={"url": self.redis.url})
            self.settings = self.settings.model_copy(update={"kafka": kafka, "redis": redis})
        self.topic_partitions = ensure_topics(self.settings.kafka, stack_topics(self.settings))
        return self.settings

    def start_workers(self) -> list[WorkerProcess]:
        for stage, count in self.counts.by_stage().items():
            for index in range(count):
                name = f"{stage}-{index}"
                worker = WorkerProcess(
                    stage, settings=self.settings, name=name, log_path=self.log_dir / f"{name}.log"
                )
                self.workers.append(worker.start())
        return self.workers

    def wait_healthy(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Every worker answers /healthz 200, then every stage's input partitions are all assigned."""
        deadline = time.monotonic() + timeout_s
        for worker in self.workers:
            worker.wait_healthy(max(deadline - time.monotonic(), 0.1))
        while (unassigned := self.unassigned_partitions()) and time.monotonic() < deadline:
            time.sleep(HEALTH_POLL_INTERVAL_S)
        if unassigned:
            problems = "; ".join(
                f"{stage}: {', '.join(names)}" for stage, names in unassigned.items()
            )
            raise ServiceError(
                f"partitions still unassigned {timeout_s:.0f} s after start ({problems})"
            )

    def stage_input_topic(self, stage: str) -> str:
        return stage_input_topic(stage, self.settings.topics)

    def unassigned_partitions(self) -> dict[str, list[str]]:
        """Per stage with workers: input partitions no worker of the stage reports in /healthz."""
        missing: dict[str, list[str]] = {}
        for stage, count in self.counts.by_stage().items():
            if count == 0:
                continue
            topic = self.stage_input_topic(stage)
            partitions = self.topic_partitions.get(topic, self.settings.topics.partitions)
            wanted = {f"{topic}:{partition}" for partition in range(partitions)}
            assigned: set[str] = set()
            for worker in self.workers:
                if worker.stage == stage:
                    assigned.update(str(name) for name in worker.health().get("partitions", []))
            if wanted - assigned:
                missing[stage] = sorted(wanted - assigned)
        return missing

    def start(self, *, wait: bool = True) -> Self:
        try:
            self.start_services()
            self.start_workers()
            if wait:
                self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def exited_workers(self) -> list[WorkerProcess]:
        return [worker for worker in self.workers if not worker.is_running()]

    def services_down(self) -> list[str]:
        """The broker / Redis processes this stack started that are no longer running."""
        down = []
        if self.broker is not None and not self.broker.is_running():
            down.append(f"broker (Tansu, {self.broker.bootstrap_servers}) exited; log {self.broker.log_path}")
        if self.redis is not None and not self.redis.is_running():
            down.append(f"Redis ({redact_url(self.redis.url)}) exited; log {self.redis.log_path}")
        return down

    def supervise(self, *, now_s: float | None = None) -> list[str]:
        """Restart workers that died, each after its backoff; returns a log line per event."""
        now_s = time.monotonic() if now_s is None else now_s
        events: list[str] = []
        for worker in self.workers:
            if worker.is_running():
                continue
            if worker.restart_due_s is None:
                ran_s = now_s - (worker.started_at_s or now_s)
                if ran_s >= RESTART_BACKOFF_RESET_S:
                    worker.restart_backoff_s = RESTART_BACKOFF_INITIAL_S
                worker.restart_due_s = now_s + worker.restart_backoff_s
                events.append(
                    f"worker {worker.name} (pid {worker.pid}) exited with code {worker.returncode} "
                    f"after {ran_s:.1f} s; restarting in {worker.restart_backoff_s:.1f} s "
                    f"(log {worker.log_path})"
                )
                continue
            if now_s < worker.restart_due_s:
                continue
            worker.restart_due_s = None
            worker.restart_backoff_s = min(worker.restart_backoff_s * 2, RESTART_BACKOFF_MAX_S)
            worker.restarts += 1
            try:
                worker.start()
            except (OSError, ServiceError) as error:
                events.append(f"worker {worker.name}: restart failed: {error}")
                continue
            events.append(
                f"worker {worker.name} restarted (pid {worker.pid}, restart {worker.restarts})"
            )
        return events

    def stop(self) -> None:
        """Workers first (SIGTERM all, then wait), then Redis, then the broker."""
        for worker in self.workers:
            worker.terminate()  # all at once, so their shutdowns overlap
        for worker in self.workers:
            worker.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
