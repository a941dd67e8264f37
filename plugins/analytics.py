"""Adapter 4: call-centre analytics. Per call and channel: the running emotion timeline, the share of
time per emotion, and escalation alerts, kept in Redis and published to the alerts topic.

Escalation rule: a segment of a watched channel (default: the customer's; the role comes from the
event, or from the stream id's suffix when the gateway sent none) is *distressed* when the
score of any alert label (default: angry, fearful) is >= `score_threshold`; `consecutive_segments`
distressed segments in a row (adjacent segment indices) raise one alert, identified by
`<stream id>/escalation/<first segment index>`. A longer run does not raise another; the next run
after a calm segment does.

Redis (prefix from settings, default `emo:v1`; the braces are a cluster hash tag, so one call's
keys share a slot):
- `emo:v1:call:{<call id>}:timeline` hash `<stream id>#<segment index, 8 digits>` -> segment JSON
- `emo:v1:call:{<call id>}:alerts`   hash alert id -> alert JSON
- `emo:v1:call:{<call id>}:summary`  the latest `CallSummary` JSON
- channel `emo:v1:alerts`            pub/sub notice of each new alert (the alert JSON)
All with a TTL of `retention_s`. Everything is recomputed from the timeline hash, so the plugin
keeps no state in memory: replays and restarts give the same answer, and replicas may share calls.

`emostream report CALL_ID` reads the same keys through `load_call_summary`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from emostream.plugins.api import Plugin, PluginContext, PluginOptions, effective_role, require
from emostream.plugins.connections import aiokafka_producer_options, async_redis_client
from emostream.schemas.alert import EscalationAlert
from emostream.schemas.audio import ChannelRole
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import alerts_channel, call_key
from emostream.schemas.settings import RedisSettings, TopicSettings
from pydantic import BaseModel, ConfigDict, Field

SEGMENT_FIELD_DIGITS = 8


# -- records (JSON in Redis; the alerts topic's EscalationAlert is in schemas/alert.py) ----------
class TimelineSegment(BaseModel):
    """One segment of a call's timeline (compact: no latency, no model details)."""

    model_config = ConfigDict(frozen=True)

    stream_id: str
    role: ChannelRole
    segment_index: int
    start_ms: float
    end_ms: float
    label: str
    score: float = Field(description="score of `label`")
    scores: dict[str, float] = Field(description="score per label, as the model gave it")

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms

    def alert_score(self, alert_labels: Iterable[str]) -> float:
        """The highest score among the alert labels (0 if the model has none of them)."""
        return max((self.scores.get(label, 0.0) for label in alert_labels), default=0.0)


class StreamSummary(BaseModel):
    stream_id: str
    role: ChannelRole
    segments: int
    speech_ms: float
    share_of_time: dict[str, float] = Field(description="label -> fraction of this channel's speech time")


class CallSummary(BaseModel):
    call_id: str
    segments: int
    speech_ms: float
    share_of_time: dict[str, float] = Field(description="label -> fraction of the call's speech time")
    streams: list[StreamSummary]
    alerts: list[EscalationAlert]
    timeline: list[TimelineSegment] = Field(description="every segment, by start time")
    updated_at_ms: int


class AnalyticsOptions(PluginOptions):
    alert_labels: list[str] = Field(default_factory=lambda: ["angry", "fearful"], min_length=1)
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="alert-label score that makes a segment distressed")
    consecutive_segments: int = Field(3, ge=1, description="distressed segments in a row that raise an alert")
    watched_roles: list[ChannelRole] = Field(default_factory=lambda: [ChannelRole.CUSTOMER])
    retention_s: int = Field(7 * 86_400, ge=1, description="TTL of a call's analytics keys in Redis")
    publish_alerts: bool = Field(True, description="also publish alerts to the alerts topic (Kafka)")
    redis_url: str | None = Field(None, description="default: settings.redis.url")
    alerts_topic: str | None = Field(None, description="default: settings.topics.alerts")

    def rule_text(self) -> str:
        labels = " or ".join(self.alert_labels)
        roles = ", ".join(role.value for role in self.watched_roles)
        return f"{labels} >= {self.score_threshold:g} for {self.consecutive_segments} consecutive {roles} segments"


# -- pure computations ---------------------------------------------------------------------------
def timeline_segment(event: EmotionEvent) -> TimelineSegment:
    return TimelineSegment(
        stream_id=event.stream_id,
        role=effective_role(event),
        segment_index=event.segment_index,
        start_ms=event.start_ms,
        end_ms=event.end_ms,
        label=event.label,
        score=event.scores.get(event.label, 0.0),
        scores=dict(event.scores),
    )


def share_of_time(segments: Iterable[TimelineSegment]) -> dict[str, float]:
    """Label -> fraction of the segments' total duration (sums to 1; empty when no speech)."""
    duration_by_label: dict[str, float] = defaultdict(float)
    for segment in segments:
        duration_by_label[segment.label] += segment.duration_ms
    total_ms = sum(duration_by_label.values())
    if total_ms <= 0:
        return {}
    return {label: duration_ms / total_ms for label, duration_ms in sorted(duration_by_label.items())}


def find_escalations(
    call_id: str, segments: Iterable[TimelineSegment], options: AnalyticsOptions, *, now_ms: int | None = None
) -> list[EscalationAlert]:
    """Every run of `consecutive_segments` distressed, adjacent segments of a watched stream."""
    raised_at_ms = int(time.time() * 1000) if now_ms is None else now_ms
    by_stream: dict[str, list[TimelineSegment]] = defaultdict(list)
    for segment in segments:
        if segment.role in options.watched_roles:
            by_stream[segment.stream_id].append(segment)
    alerts: list[EscalationAlert] = []
    for stream_id, stream_segments in sorted(by_stream.items()):
        run: list[TimelineSegment] = []
        for segment in sorted(stream_segments, key=lambda item: item.segment_index):
            distressed = segment.alert_score(options.alert_labels) >= options.score_threshold
            adjacent = bool(run) and segment.segment_index == run[-1].segment_index + 1
            if not distressed:
                run = []
                continue
            run = run + [segment] if adjacent else [segment]
            if len(run) == options.consecutive_segments:
                alerts.append(
                    EscalationAlert(
                        alert_id=f"{stream_id}/escalation/{run[0].segment_index}",
                        call_id=call_id,
                        stream_id=stream_id,
                        role=segment.role,
                        first_segment_index=run[0].segment_index,
                        last_segment_index=segment.segment_index,
                        start_ms=run[0].start_ms,
                        end_ms=segment.end_ms,
                        labels=[item.label for item in run],
                        max_alert_score=max(item.alert_score(options.alert_labels) for item in run),
                        rule=options.rule_text(),
                        raised_at_ms=raised_at_ms,
                    )
                )
    return alerts


def summarize_call(
    call_id: str, segments: Iterable[TimelineSegment], alerts: Iterable[EscalationAlert], *, now_ms: int | None = None
) -> CallSummary:
    timeline = sorted(segments, key=lambda item: (item.start_ms, item.stream_id, item.segment_index))
    by_stream: dict[str, list[TimelineSegment]] = defaultdict(list)
    for segment in timeline:
        by_stream[segment.stream_id].append(segment)
    streams = [
        StreamSummary(
            stream_id=stream_id,
            role=items[0].role,
            segments=len(items),
            speech_ms=sum(item.duration_ms for item in items),
            share_of_time=share_of_time(items),
        )
        for stream_id, items in sorted(by_stream.items())
    ]
    return CallSummary(
        call_id=call_id,
        segments=len(timeline),
        speech_ms=sum(item.duration_ms for item in timeline),
        share_of_time=share_of_time(timeline),
        streams=streams,
        alerts=sorted(alerts, key=lambda alert: (alert.start_ms, alert.alert_id)),
        timeline=timeline,
        updated_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
    )


# -- Redis layout ----------------------------------------------------------------------------------
def timeline_field(stream_id: str, segment_index: int) -> str:
    return f"{stream_id}#{segment_index:0{SEGMENT_FIELD_DIGITS}d}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


async def load_call_segments(redis: Any, key_prefix: str, call_id: str) -> list[TimelineSegment]:
    raw: Mapping[Any, Any] = await redis.hgetall(call_key(key_prefix, call_id, "timeline"))
    return [TimelineSegment.model_validate_json(_text(value)) for value in raw.values()]


async def load_call_alerts(redis: Any, key_prefix: str, call_id: str) -> list[EscalationAlert]:
    raw: Mapping[Any, Any] = await redis.hgetall(call_key(key_prefix, call_id, "alerts"))
    return [EscalationAlert.model_validate_json(_text(value)) for value in raw.values()]


async def load_call_summary(redis: Any, key_prefix: str, call_id: str) -> CallSummary | None:
    """The call's summary recomputed from its timeline and alerts; None if Redis has no such call."""
    segments = await load_call_segments(redis, key_prefix, call_id)
    if not segments:
        return None
    alerts = await load_call_alerts(redis, key_prefix, call_id)
    return summarize_call(call_id, segments, alerts)


# -- the plugin ----------------------------------------------------------------------------------
class AnalyticsPlugin(Plugin[AnalyticsOptions]):
    """Keeps every call's timeline, share of time and escalation alerts in Redis; publishes alerts."""

    Options: ClassVar[type[PluginOptions]] = AnalyticsOptions
    kind: ClassVar[str] = "analytics"

    def __init__(self, options: AnalyticsOptions | None = None, *, name: str | None = None) -> None:
        super().__init__(options, name=name)
        self._redis: Any | None = None
        self._owns_redis = False
        self._producer: Any | None = None
        # replaced in start() by the settings' values; the defaults come from the settings model
        self._key_prefix: str = RedisSettings.model_fields["key_prefix"].default
        self._alerts_topic: str = TopicSettings.model_fields["alerts"].default

    async def start(self, context: PluginContext) -> None:
        await super().start(context)
        settings = context.settings
        self._key_prefix = settings.redis.key_prefix
        self._alerts_topic = self.options.alerts_topic or settings.topics.alerts
        if context.redis is not None and self.options.redis_url is None:
            self._redis = context.redis
        else:
            self._redis = async_redis_client(settings.redis, plugin=self.name, url=self.options.redis_url)
            self._owns_redis = True
        if self.options.publish_alerts:
            aiokafka = require("aiokafka", plugin=self.name)
            self._producer = aiokafka.AIOKafkaProducer(
                **aiokafka_producer_options(settings.kafka, client_id=f"{settings.worker_id}-{self.name}")
            )
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()
        self._redis = None

    async def on_emotion(self, event: EmotionEvent) -> None:
        if self._redis is None:
            raise RuntimeError(f"plugin {self.name!r}: on_emotion before start()")
        redis, call_id, ttl_s = self._redis, event.call_id, self.options.retention_s
        timeline_key = call_key(self._key_prefix, call_id, "timeline")
        segment = timeline_segment(event)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(timeline_key, timeline_field(event.stream_id, event.segment_index), segment.model_dump_json())
            pipe.expire(timeline_key, ttl_s)
            await pipe.execute()

        segments = await load_call_segments(redis, self._key_prefix, call_id)
        alerts_key = call_key(self._key_prefix, call_id, "alerts")
        stream_segments = [item for item in segments if item.stream_id == event.stream_id]
        for alert in find_escalations(call_id, stream_segments, self.options):
            if await redis.hexists(alerts_key, alert.alert_id):
                continue
            await self._publish_alert(alert)  # first the topic, then Redis: a crash in between re-publishes
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hset(alerts_key, alert.alert_id, alert.model_dump_json())
                pipe.expire(alerts_key, ttl_s)
                pipe.publish(alerts_channel(self._key_prefix), alert.model_dump_json())
                await pipe.execute()

        summary = summarize_call(call_id, segments, await load_call_alerts(redis, self._key_prefix, call_id))
        await redis.set(call_key(self._key_prefix, call_id, "summary"), summary.model_dump_json(), ex=ttl_s)

    async def _publish_alert(self, alert: EscalationAlert) -> None:
        if self._producer is None:
            return
        await self._producer.send_and_wait(
            self._alerts_topic,
            value=alert.model_dump_json().encode("utf-8"),
            key=alert.stream_id.encode("utf-8"),
            headers=[("type", b"escalation"), ("v", b"1")],
        )


def summary_as_text(summary: CallSummary) -> str:
    """A human summary of a call (what `emostream report` prints)."""
    lines = [
        f"call {summary.call_id}: {summary.segments} segments, {summary.speech_ms / 1000:.1f} s of speech",
        "share of time: " + _shares(summary.share_of_time),
    ]
    for stream in summary.streams:
        lines.append(
            f"  {stream.stream_id} ({stream.role.value}): {stream.segments} segments, "
            f"{stream.speech_ms / 1000:.1f} s: {_shares(stream.share_of_time)}"
        )
    if summary.alerts:
        lines.append(f"alerts ({len(summary.alerts)}):")
        for alert in summary.alerts:
            lines.append(
                f"  {alert.start_ms / 1000:.1f}-{alert.end_ms / 1000:.1f} s {alert.stream_id} segments "
                f"{alert.first_segment_index}-{alert.last_segment_index}: {', '.join(alert.labels)} "
                f"(max {alert.max_alert_score:.2f}; {alert.rule})"
            )
    else:
        lines.append("alerts: none")
    return "\n".join(lines)


def _shares(shares: Mapping[str, float]) -> str:
    ordered = sorted(shares.items(), key=lambda item: -item[1])
    return ", ".join(f"{label} {fraction:.0%}" for label, fraction in ordered) or "(no speech)"


def summary_as_json(summary: CallSummary) -> str:
    return json.dumps(summary.model_dump(mode="json"), indent=2)
