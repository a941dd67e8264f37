"""The Redis layout: every key and channel name, in one place (`prefix` is `redis.key_prefix`, e.g. `emo:v1`).

The braces are a Redis Cluster hash tag: all keys of one stream (or one call) share a slot, so one
Lua script can touch them together.

| key | type | written by |
|---|---|---|
| `<prefix>:{<stream id>}:seg:<n>` | string, TTL | inference stage: EmotionEvent JSON of segment n |
| `<prefix>:{<stream id>}:latest` | string, TTL | inference stage: the highest segment index written |
| `<prefix>:{<stream id>}:events` | stream, capped | inference stage: field `event` = EmotionEvent JSON, id `<n+1>-0` |
| `<prefix>:{<stream id>}:vad` | string, TTL | VAD stage: per-stream resume checkpoint |
| `<prefix>:{<stream id>}:delivered` | hash, TTL | plugin runner: field `<plugin>/<segment>/<model>@<version>` = delivered at (Unix ms) |
| `<prefix>:webhook-replay:<signature>` | string, TTL = tolerance | webhook receivers' replay guard (`SET NX`) |
| channel `<prefix>:results` | pub/sub | inference stage: every result written |
| `<prefix>:call:{<call id>}:timeline / :alerts / :summary` | hash / hash / string | analytics plugin |
| channel `<prefix>:alerts` | pub/sub | analytics plugin: each new escalation alert |
"""


def result_key(prefix: str, stream_id: str, segment_index: int) -> str:
    return f"{prefix}:{{{stream_id}}}:seg:{segment_index}"


def latest_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:{{{stream_id}}}:latest"


def events_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:{{{stream_id}}}:events"


def checkpoint_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:{{{stream_id}}}:vad"


def delivered_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:{{{stream_id}}}:delivered"


def webhook_replay_key(prefix: str, signature: str) -> str:
    """A webhook signature a receiver accepted (`SET NX`, TTL = how long it stays acceptable)."""
    return f"{prefix}:webhook-replay:{signature}"


def results_channel(prefix: str) -> str:
    return f"{prefix}:results"


def call_key(prefix: str, call_id: str, suffix: str) -> str:
    """`emo:v1:call:{call-42}:timeline`: one call's keys share a cluster slot."""
    return f"{prefix}:call:{{{call_id}}}:{suffix}"


def alerts_channel(prefix: str) -> str:
    return f"{prefix}:alerts"
