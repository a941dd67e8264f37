"""Dead letters: a record that failed validation or processing, with the reason and its origin (JSON)."""

import base64

from pydantic import BaseModel, ConfigDict, Field


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int = 1
    stage: str = Field(description="the stage that gave up: vad, inference, plugin:<name>, ...")
    reason: str = Field(description="what was wrong, naming the input and the problem")
    origin_topic: str
    origin_partition: int
    origin_offset: int
    key: str | None = Field(None, description="record key as text (UTF-8, replacement characters if not)")
    headers: dict[str, str] = Field(default_factory=dict, description="record headers as text")
    value_b64: str | None = Field(
        None,
        description="the original value (its first bytes when `value_truncated`), base64, for inspection and replay",
    )
    value_size_bytes: int | None = Field(None, ge=0, description="size of the original value")
    value_truncated: bool = Field(False, description="only a prefix of the value was kept (large record)")
    failed_at_ms: int

    @staticmethod
    def encode_value(value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")
