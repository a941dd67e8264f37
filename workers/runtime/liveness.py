"""Liveness of one worker process: is it doing its job, or should it be restarted?

A worker is *not live* when
- an agent (a stage's consumer loop) or a watched task (a stage's own consumer, `watch`) has
  stopped (crashed or returned), or
- a stage reported a condition only a restart can clear (`report(problem)`; e.g. the VAD stage when
  a segment could not be delivered: its chunks can only be replayed from the committed offset), or
- records wait in its partitions (lag: a partition's high watermark is past the next offset the
  stage took) and the stage has taken none for `observability.liveness_stall_s` seconds. Stages
  report each record they take with `took(tp, offset)`; a record the consumer fetched into faust's
  buffer but the agent never took counts as waiting.

Lag uses the high watermark that fetch responses carry (correct on every broker we know, Tansu
included), never ListOffsets. Readiness (started, joined its consumer group) is separate: see
`workers.runtime.metrics.MetricsServer` (`/healthz` = liveness, `/readyz` = readiness).
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any

from emostream.workers.runtime.consumer_view import ConsumerView

__all__ = ["Liveness"]


class Liveness:
    """Checks the app's agents, watched tasks and the input consumer's progress (`consumer()`: the
    worker's `ConsumerView`); `problems()` is empty while live."""

    def __init__(self, app: Any, *, consumer: Callable[[], ConsumerView], stall_after_s: float) -> None:
        self.app = app
        self.consumer = consumer
        self.stall_after_s = stall_after_s
        self._taken: dict[Any, int] = {}  # tp -> last offset a stage took
        self._progress_at_s = time.monotonic()
        self._reported: list[str] = []
        self._watched: dict[str, asyncio.Task[Any]] = {}

    def watch(self, name: str, task: asyncio.Task[Any]) -> None:
        """A task the worker is useless without (a stage's own consumer loop): its end fails liveness."""
        self._watched[name] = task

    def took(self, tp: Any, offset: int) -> None:
        """A stage took the record at `offset` of `tp` (call once per record, any order)."""
        if offset > self._taken.get(tp, -1):
            self._taken[tp] = offset
        self._progress_at_s = time.monotonic()

    def report(self, problem: str) -> None:
        """A condition only a restart clears: liveness fails from now on, naming it."""
        if problem not in self._reported:
            self._reported.append(problem)

    def problems(self) -> list[str]:
        return self._reported + self._dead_agents() + self._stalled_consumer()

    def lag_records(self) -> int:
        """Records in the assigned partitions that the consumer has not read yet (0 if unknown)."""
        consumer = self.consumer()
        lag = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            taken = self._taken.get(tp)
            if taken is not None:
                next_offset = taken + 1
            else:  # nothing taken yet: the group's committed offset is where it starts
                committed = consumer.committed_offset(tp)
                next_offset = committed if committed is not None else 0
            lag += max(0, int(highwater) - next_offset)
        return lag

    def _dead_agents(self) -> list[str]:
        problems = []
        for name, agent in list(getattr(self.app, "agents", {}).items()):
            for actor in list(getattr(agent, "_actors", ())):
                task = getattr(actor, "actor_task", None)
                if task is not None and task.done():
                    problems.append(f"agent {name} stopped{_why(task)}")
        for name, task in self._watched.items():
            if task.done():
                problems.append(f"{name} stopped{_why(task)}")
        return problems

    def _stalled_consumer(self) -> list[str]:
        now_s = time.monotonic()
        lag = self.lag_records()
        idle_s = now_s - self._progress_at_s
        if lag and idle_s >= self.stall_after_s:
            return [f"consumer took no record for {idle_s:.0f} s while {lag} records wait"]
        if not lag:
            self._progress_at_s = now_s  # nothing to do is not a stall
        return []


def _why(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return " (cancelled)"
    error = task.exception()
    return f": {type(error).__name__}: {error}" if error is not None else " (returned)"
