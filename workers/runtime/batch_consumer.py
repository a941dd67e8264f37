"""A consumer-group consumer that takes records in batches below faust's per-event stream.

faust hands every record through its fetcher, conductor, channel queue and stream iterator before an
agent sees it; profiled on the VAD worker at 10,000 records a second, faust's part of that path
(draining into the stream, the conductor, the stream iteration) cost about 30 % of the worker's CPU
and aiokafka's record unpacking 15 % more (README, "Streaming"). This consumer is aiokafka's own
(`getmany`): a fetched batch goes to the stage's handler record by record, with nothing in between.
Measured at 200 streams of 100 ms chunks, the VAD worker went from 0.80 to 0.34 cores.

What it keeps of faust's contract, because the VAD stage's crash safety rests on it:
- manual acknowledgement: a record's offset is committed only when it and every record before it in
  its partition are acknowledged (`OffsetTracker`); commits every `commit_interval_s` and on
  revocation, so a new owner reads from the first record that still matters;
- partition events go through the app's signals (`on_partitions_assigned` / `on_partitions_revoked`),
  which the stage and the worker's readiness already listen to;
- the same group id as the stage's faust app (`<worker_id>-<stage>`), so offsets committed before a
  worker upgrade are where the new worker starts; faust's own consumer never joins it (the app has
  no agent on this topic).

`ConsumedRecord` looks like a faust event to the stage (`.message.tp/.offset/.key/.value/.headers`,
`.ack()`), so dead letters and the stream state take either.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from emostream.schemas.settings import Settings
from emostream.workers.runtime.kafka_config import aiokafka_options, consumer_group_options

__all__ = ["BatchConsumer", "ConsumedRecord", "OffsetTracker", "RecordMessage"]

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0
MAX_RECORDS_PER_BATCH = 500
MAX_POLL_INTERVAL_MS = 300_000  # faust's: a stage paused longer (Redis down) leaves the group
START_RETRY_S = 2.0
POLL_TIMEOUT_MS = 200  # getmany's wait when nothing is fetched; a stop is seen within it


class OffsetTracker:
    """Offsets taken in order per partition, acknowledged in any order; the commit point of a
    partition is its first unacknowledged offset (or one past the last taken, when all are)."""

    def __init__(self) -> None:
        self._taken: dict[Any, deque[int]] = {}
        self._acked: dict[Any, set[int]] = {}
        self._next: dict[Any, int] = {}  # tp -> commit point not yet committed
        self._committed: dict[Any, int] = {}

    def take(self, tp: Any, offset: int) -> None:
        self._taken.setdefault(tp, deque()).append(offset)

    def ack(self, tp: Any, offset: int) -> None:
        taken = self._taken.get(tp)
        if not taken:  # partition forgotten (revoked): the new owner replays it
            return
        acked = self._acked.setdefault(tp, set())
        acked.add(offset)
        released = None
        while taken and taken[0] in acked:
            released = taken.popleft()
            acked.discard(released)
        if released is not None:
            self._next[tp] = taken[0] if taken else released + 1

    def commit_points(self, tps: Iterable[Any] | None = None) -> dict[Any, int]:
        """Commit points that moved since the last `committed(...)`, for `tps` (default: all)."""
        chosen = self._next if tps is None else {tp: self._next[tp] for tp in tps if tp in self._next}
        return {tp: offset for tp, offset in chosen.items() if self._committed.get(tp) != offset}

    def committed(self, points: dict[Any, int]) -> None:
        self._committed.update(points)

    def last_committed(self, tp: Any) -> int | None:
        return self._committed.get(tp)

    def forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            for table in (self._taken, self._acked, self._next, self._committed):
                table.pop(tp, None)


@dataclass(frozen=True, slots=True)
class RecordMessage:
    """The fields of a consumed record that stages and dead letters read (faust's Message names)."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition


class ConsumedRecord:
    """One record handed to a stage; `ack()` once nothing needs it replayed (faust's `event.ack()`)."""

    __slots__ = ("_acked", "_tracker", "message")

    def __init__(self, message: RecordMessage, tracker: OffsetTracker) -> None:
        self.message = message
        self._tracker = tracker
        self._acked = False

    def ack(self) -> bool:
        if self._acked:
            return False
        self._acked = True
        self._tracker.ack(self.message.tp, self.message.offset)
        return True


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: "BatchConsumer") -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner._assigned(set(assigned))


RecordHandler = Callable[[ConsumedRecord], Awaitable[None]]


class BatchConsumer:
    """Consumes `topic` in the group `group_id` and awaits `handle(record)` for each record, in
    partition order. `on_assigned` / `on_revoked` get the partition sets (after revoked partitions'
    acknowledged offsets are committed). Implements `ConsumerView` for liveness and readiness."""

    def __init__(self, settings: Settings, *, topic: str, group_id: str, handle: RecordHandler,
                 on_assigned: Callable[[set[TopicPartition]], Awaitable[None]],
                 on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
                 max_records: int = MAX_RECORDS_PER_BATCH, commit_interval_s: float = COMMIT_INTERVAL_S) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.handle = handle
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.max_records = max_records
        self.commit_interval_s = commit_interval_s
        self.tracker = OffsetTracker()
        self._consumer: AIOKafkaConsumer | None = None
        self._generation = 0  # revocations so far; a batch fetched before one is not handled further

    # -- ConsumerView --------------------------------------------------------------------------
    def assignment(self) -> set[Any]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def highwater(self, tp: Any) -> int | None:
        try:
            return self._consumer.highwater(tp) if self._consumer is not None else None
        except Exception:  # noqa: BLE001 - not assigned (rebalancing)
            return None

    def committed_offset(self, tp: Any) -> int | None:
        return self.tracker.last_committed(tp)

    # -- running -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until cancelled; on the way out commit what is acknowledged and leave the group."""
        consumer = await self._started_consumer()
        committer = asyncio.create_task(self._commit_every_interval(), name=f"{self.group_id}-commit")
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=self.max_records)
                generation = self._generation
                for tp, records in batches.items():
                    for record in records:
                        if self._generation != generation:
                            break  # a rebalance while this batch was handled: what is left is replayed
                        self.tracker.take(tp, record.offset)
                        await self.handle(ConsumedRecord(
                            RecordMessage(tp, record.offset, record.key, record.value, list(record.headers or ()),
                                          record.timestamp), self.tracker))
        finally:
            committer.cancel()
            await self._commit()
            await consumer.stop()  # leaves the group: the partitions move without a session timeout
            self._consumer = None

    async def _started_consumer(self) -> AIOKafkaConsumer:
        """A started consumer subscribed to the topic, waiting out a broker that is not up yet (as
        faust's consumer does)."""
        kafka = self.settings.kafka
        while True:
            consumer = AIOKafkaConsumer(
                **aiokafka_options(kafka, client_id=self.group_id),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=kafka.fetch_max_wait_ms,
                **consumer_group_options(kafka),
                max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            )
            consumer.subscribe([self.topic], listener=_Rebalance(self))
            self._consumer = consumer  # the rebalance listener reads committed offsets through it
            try:
                await consumer.start()
                return consumer
            except KafkaError as error:
                await consumer.stop()
                log.warning("%s: cannot reach the broker (%s); retrying in %.0f s", self.group_id, error,
                            START_RETRY_S)
                await asyncio.sleep(START_RETRY_S)

    async def _commit_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval_s)
            await self._commit()

    async def _commit(self, tps: Iterable[Any] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        points = self.tracker.commit_points(tps)
        if not points:
            return
        try:
            await consumer.commit(dict(points))
        except KafkaError as error:  # a rebalance in flight: the next owner replays from the last commit
            log.warning("%s: commit of %d partitions failed (%s); retried at the next interval",
                        self.group_id, len(points), error)
            return
        self.tracker.committed(points)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self._generation += 1
        await self._commit(revoked)
        self.tracker.forget(revoked)
        await self.on_revoked(revoked)

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        for tp in assigned:  # where each partition starts: what liveness counts waiting records from
            try:
                committed = await consumer.committed(tp) if consumer is not None else None
            except KafkaError:
                committed = None
            if committed is not None:
                self.tracker.committed({tp: committed})
        await self.on_assigned(assigned)
