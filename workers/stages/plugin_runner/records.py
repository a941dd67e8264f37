"""Where an event on the emotions topic came from: to name it in a dead letter and let an operator replay it."""

from dataclasses import dataclass, field
from typing import Any

from emostream.schemas.dead_letter import DeadLetter
from emostream.workers.runtime.dead_letters import dead_letter_for

__all__ = ["RecordRef", "record_from_faust"]


@dataclass(frozen=True)
class RecordRef:
    """Where an event came from, to name it in a dead letter and let an operator replay it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)

    def dead_letter(self, *, stage: str, reason: str) -> DeadLetter:
        return dead_letter_for(
            stage=stage,
            reason=reason,
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            key=self.key,
            headers=self.headers,
            value=self.value,
        )


def record_from_faust(event: Any) -> RecordRef:
    message = event.message
    headers = {name: raw for name, raw in (message.headers or []) if raw is not None}
    value = message.value if isinstance(message.value, bytes) else bytes(message.value or b"")
    return RecordRef(
        topic=message.topic, partition=message.partition, offset=message.offset, key=message.key, value=value, headers=headers
    )
