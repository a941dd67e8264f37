"""What liveness, readiness and the stages read of a worker's input consumer: its assignment, each
partition's high watermark and the offset committed for it. faust's consumer (`FaustConsumerView`)
or a stage's own (`workers.runtime.batch_consumer.BatchConsumer`) provide it."""

from typing import Any, Protocol

__all__ = ["ConsumerView", "FaustConsumerView"]


class ConsumerView(Protocol):
    def assignment(self) -> set[Any]:
        """Partitions assigned now (empty before the first assignment or while rebalancing)."""

    def highwater(self, tp: Any) -> int | None:
        """The partition's high watermark from the last fetch response (None if none yet)."""

    def committed_offset(self, tp: Any) -> int | None:
        """The offset this worker committed (or found committed) for the partition, if known."""


class FaustConsumerView:
    """The faust app's consumer (the stages that consume through agents)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def _consumer(self) -> Any | None:
        try:
            consumer = self.app.consumer
        except Exception:  # noqa: BLE001 - app not started yet
            return None
        return consumer if hasattr(consumer, "_read_offset") else None

    def assignment(self) -> set[Any]:
        consumer = self._consumer()
        try:
            return set(consumer.assignment()) if consumer is not None else set()
        except Exception:  # noqa: BLE001 - not started / rebalancing
            return set()

    def highwater(self, tp: Any) -> int | None:
        consumer = self._consumer()
        try:
            return consumer.highwater(tp) if consumer is not None else None
        except Exception:  # noqa: BLE001 - not fetched yet / consumer restarting
            return None

    def committed_offset(self, tp: Any) -> int | None:
        consumer = self._consumer()
        return consumer._committed_offset.get(tp) if consumer is not None else None
