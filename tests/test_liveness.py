"""Liveness over any ConsumerView (workers/runtime/liveness.py): a watched consumer task that ends
fails it, naming the task and the error; records waiting behind the committed offset count as lag,
records already consumed before a restart do not."""

import asyncio
from types import SimpleNamespace

from emostream.workers.runtime.liveness import Liveness


class _Partitions:
    """A ConsumerView of fixed partitions: high watermarks and committed offsets as given."""

    def __init__(self, highwater: dict[str, int], committed: dict[str, int]) -> None:
        self._highwater = highwater
        self._committed = committed

    def assignment(self) -> set[str]:
        return set(self._highwater)

    def highwater(self, tp: str) -> int | None:
        return self._highwater.get(tp)

    def committed_offset(self, tp: str) -> int | None:
        return self._committed.get(tp)


def test_a_watched_consumer_task_that_ends_fails_liveness_with_its_error():
    async def scenario() -> list[str]:
        liveness = Liveness(SimpleNamespace(agents={}), consumer=lambda: _Partitions({}, {}), stall_after_s=60)

        async def consume() -> None:
            raise RuntimeError("broker protocol error")

        task = asyncio.create_task(consume())
        liveness.watch("vad consumer", task)
        assert liveness.problems() == [], "live while the task runs"
        await asyncio.gather(task, return_exceptions=True)
        return liveness.problems()

    assert asyncio.run(scenario()) == ["vad consumer stopped: RuntimeError: broker protocol error"]


def test_lag_counts_from_the_committed_offset_until_a_record_is_taken():
    partitions = _Partitions(highwater={"audio-0": 120, "audio-1": 50}, committed={"audio-0": 120, "audio-1": 40})
    liveness = Liveness(SimpleNamespace(agents={}), consumer=lambda: partitions, stall_after_s=0)
    assert liveness.lag_records() == 10, "a restarted worker owes only what came after its commit"
    liveness.took("audio-1", 44)
    assert liveness.lag_records() == 5
    assert liveness.problems() == ["consumer took no record for 0 s while 5 records wait"]
