"""Escalation alerts on the alerts topic (key: stream id) and in Redis, raised by the analytics plugin."""

from emostream.schemas.audio import ChannelRole
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EscalationAlert"]


class EscalationAlert(BaseModel):
    """Published to the alerts topic (key: stream id) and kept in Redis."""

    model_config = ConfigDict(frozen=True)

    version: int = 1
    type: str = "escalation"
    alert_id: str
    call_id: str
    stream_id: str
    role: ChannelRole
    first_segment_index: int
    last_segment_index: int
    start_ms: float
    end_ms: float
    labels: list[str] = Field(description="label of each segment of the run")
    max_alert_score: float
    rule: str = Field(description="the rule that fired, in words")
    raised_at_ms: int
