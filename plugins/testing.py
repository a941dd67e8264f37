"""Helpers for testing a plugin without the pipeline: build realistic events, run a plugin on them.

    from emostream.plugins.testing import make_event, run_plugin

    events = [make_event("call-1:customer", index, "angry") for index in range(3)]
    await run_plugin(MyPlugin.from_options({...}), events)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from emostream.plugins.api import Plugin, PluginContext
from emostream.schemas.audio import ChannelRole
from emostream.schemas.event import EmotionEvent

RAVDESS_LABELS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
SEGMENT_MS = 1_500.0  # default length of a made-up segment
GAP_MS = 500.0  # default pause between made-up segments


def make_scores(label: str, confidence: float, labels: Sequence[str] = RAVDESS_LABELS) -> dict[str, float]:
    """Scores summing to 1 with `confidence` on `label` and the rest spread evenly."""
    if label not in labels:
        raise ValueError(f"label {label!r} not in {list(labels)}")
    rest = (1.0 - confidence) / (len(labels) - 1)
    return {name: (confidence if name == label else rest) for name in labels}


def make_event(
    stream_id: str,
    segment_index: int,
    label: str,
    *,
    confidence: float = 0.8,
    role: ChannelRole | None = None,
    scores: dict[str, float] | None = None,
    **fields: Any,
) -> EmotionEvent:
    """An EmotionEvent as the inference stage would write it (segment n starts at n * 2 s)."""
    if role is None:
        suffix = stream_id.rsplit(":", 1)[-1]
        role = ChannelRole(suffix) if suffix in {r.value for r in ChannelRole} else ChannelRole.UNKNOWN
    start_ms = segment_index * (SEGMENT_MS + GAP_MS)
    values: dict[str, Any] = {
        "stream_id": stream_id,
        "role": role,
        "segment_index": segment_index,
        "start_ms": start_ms,
        "end_ms": start_ms + SEGMENT_MS,
        "label": label,
        "scores": scores if scores is not None else make_scores(label, confidence),
        "model_name": "plb-ravdess8",
        "model_version": "test",
    }
    values.update(fields)
    return EmotionEvent(**values)


async def run_plugin(plugin: Plugin[Any], events: Iterable[EmotionEvent], context: PluginContext | None = None) -> None:
    """start -> deliver every event in order -> stop."""
    await plugin.start(context or PluginContext())
    try:
        for event in events:
            await plugin.deliver(event)
    finally:
        await plugin.stop()
