"""The plugin-runner stage (one module per job: `metrics`, `records`, `ledger`, `lanes`,
`dispatcher`, `stage`): consumes the emotions topic and hands each event to every configured
plugin's `on_emotion`.

Guarantees
- Isolation: each plugin has its own lane (queues + tasks). A slow or failing plugin only fills its
  own lane; the others keep delivering. The consumer waits only when one lane holds
  `plugins.max_pending_events` events (bounded memory); per-attempt timeouts keep lanes draining.
- Ordering: within a lane, the events of one stream are delivered one at a time in the order read
  (= segment order, since the topic is keyed by stream id); different streams run concurrently,
  at most `plugins.max_concurrent_streams` at once per plugin.
- Retries: per attempt `timeout_s`, `max_attempts` with exponential backoff (per plugin, see
  `emostream.plugins.delivery`); a non-retryable error (e.g. webhook 4xx) is not retried. An event
  a plugin gave up on goes to the dead-letter topic (stage `plugin:<name>`, the plugin's error) and
  the others are not affected.
- At-least-once: a record's offset is acknowledged only when every plugin has delivered or
  dead-lettered it; faust commits the highest contiguous acknowledged offset, so a crash replays
  what was in flight. A Redis ledger of delivered idempotency keys (per plugin; one HMGET per event,
  marks written in batches every `LEDGER_FLUSH_INTERVAL_S`) makes a replay skip what a plugin
  already received, so a plugin sees duplicates only if Redis lost the ledger or the crash hit
  within that interval after its delivery. Plugins with side effects should still deduplicate on
  `event.idempotency_key` (the webhook sends it as `Idempotency-Key`).
- Metrics per plugin (Prometheus, on the worker's /metrics), see `PluginMetrics`.

Run it with `emostream worker plugins`; the plugins come from `EMOSTREAM_PLUGINS__CONFIG_PATH` /
`EMOSTREAM_PLUGINS__CONFIG_JSON` (see `emostream.plugins.registry`).
"""

from emostream.workers.stages.plugin_runner.dispatcher import PluginDispatcher
from emostream.workers.stages.plugin_runner.lanes import DeadLetterTarget
from emostream.workers.stages.plugin_runner.ledger import DeliveryLedger, RedisDeliveryLedger
from emostream.workers.stages.plugin_runner.metrics import PluginMetrics
from emostream.workers.stages.plugin_runner.records import RecordRef
from emostream.workers.stages.plugin_runner.stage import PluginStage, build

__all__ = [
    "DeadLetterTarget",
    "DeliveryLedger",
    "PluginDispatcher",
    "PluginMetrics",
    "PluginStage",
    "RecordRef",
    "RedisDeliveryLedger",
    "build",
]
