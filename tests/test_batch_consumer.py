"""The VAD stage's batch consumer (workers/runtime/batch_consumer.py): manual acknowledgement in any
order commits only the acknowledged prefix of each partition, and a consumer of the same group
started later resumes at the first record that was not acknowledged (real broker)."""

import asyncio

from aiokafka import TopicPartition
from emostream.workers.runtime.batch_consumer import BatchConsumer, ConsumedRecord, OffsetTracker, RecordMessage
from emostream.workers.runtime.kafka_config import kafka_python_options
from kafka import KafkaProducer

EVENT_DEADLINE_S = 60.0  # how long a test waits for the broker's answer (an event, not a measurement)


def test_commit_point_is_the_first_unacknowledged_offset_of_each_partition():
    tracker = OffsetTracker()
    first, second = TopicPartition("audio", 0), TopicPartition("audio", 1)
    for offset in (10, 11, 12, 13):
        tracker.take(first, offset)
    tracker.take(second, 5)
    assert tracker.commit_points() == {}
    tracker.ack(first, 12)
    tracker.ack(first, 13)
    assert tracker.commit_points() == {}, "10 and 11 are still needed"
    tracker.ack(first, 10)
    assert tracker.commit_points() == {first: 11}
    tracker.committed({first: 11})
    assert tracker.commit_points() == {}, "nothing moved since the commit"
    tracker.ack(first, 11)
    tracker.ack(second, 5)
    assert tracker.commit_points() == {first: 14, second: 6}
    assert tracker.commit_points([second]) == {second: 6}


def test_a_forgotten_partition_ignores_late_acknowledgements():
    tracker = OffsetTracker()
    tp = TopicPartition("audio", 0)
    tracker.take(tp, 0)
    tracker.take(tp, 1)
    tracker.forget([tp])
    tracker.ack(tp, 0)
    assert tracker.commit_points() == {}, "a revoked partition is the new owner's to commit"


def test_a_record_is_acknowledged_once():
    tracker = OffsetTracker()
    tp = TopicPartition("audio", 0)
    for offset in (0, 1):
        tracker.take(tp, offset)
    record = ConsumedRecord(RecordMessage(tp, 0, b"call-1", b"", [], 0), tracker)
    assert record.ack() is True
    assert record.ack() is False
    assert tracker.commit_points() == {tp: 1}


async def _consume(settings, group_id: str, until: int, ack: set[int]) -> list[int]:
    """Offsets handed to a fresh BatchConsumer until `until` of them arrived; acknowledges those in `ack`."""
    seen: list[int] = []
    enough = asyncio.Event()
    assigned: list[set[TopicPartition]] = []

    async def handle(record: ConsumedRecord) -> None:
        seen.append(record.message.offset)
        if record.message.offset in ack:
            record.ack()
        if len(seen) >= until:
            enough.set()

    async def on_assigned(tps: set[TopicPartition]) -> None:
        assigned.append(tps)

    async def on_revoked(tps: set[TopicPartition]) -> None:
        pass

    consumer = BatchConsumer(settings, topic=settings.topics.audio, group_id=group_id, handle=handle,
                             on_assigned=on_assigned, on_revoked=on_revoked, commit_interval_s=0.1)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(enough.wait(), EVENT_DEADLINE_S)
    finally:
        task.cancel()  # the consumer commits what is acknowledged on the way out
        await asyncio.gather(task, return_exceptions=True)
    assert assigned and TopicPartition(settings.topics.audio, 0) in assigned[0]
    return seen


def test_a_restarted_consumer_resumes_at_the_first_unacknowledged_record(make_stack_settings):
    settings = make_stack_settings(topics={"partitions": 1})
    producer = KafkaProducer(**kafka_python_options(settings.kafka, client_id="tests"), acks="all")
    for index in range(10):
        producer.send(settings.topics.audio, key=b"call-1", value=bytes([index]),
                      headers=[("seq", str(index).encode())])
    producer.flush()
    producer.close()
    group_id = f"{settings.worker_id}-batch"

    first_run = asyncio.run(_consume(settings, group_id, until=10, ack={0, 1, 2, 4, 5, 6, 7, 8, 9}))
    assert first_run == list(range(10)), "one partition arrives in order"
    second_run = asyncio.run(_consume(settings, group_id, until=7, ack=set(range(10))))
    assert second_run == [3, 4, 5, 6, 7, 8, 9], "offset 3 was never acknowledged: everything from it comes again"
