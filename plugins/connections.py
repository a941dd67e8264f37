"""Clients for the adapters that need Redis or Kafka, built from the one settings model.

`emostream.plugins` may not import `emostream.workers` (workers depend on plugins, not the reverse),
so the few lines that turn `RedisSettings` / `KafkaSettings` into client options live here.
"""

from __future__ import annotations

from typing import Any

from emostream.plugins.api import require
from emostream.schemas.settings import KafkaSettings, RedisSettings


def async_redis_client(redis_settings: RedisSettings, *, plugin: str = "emostream", url: str | None = None) -> Any:
    """A `redis.asyncio.Redis` for `url` (default: the settings' url) with the settings' auth / TLS."""
    redis_asyncio = require("redis.asyncio", plugin=plugin, extra="redis")
    options: dict[str, Any] = {"socket_timeout": max(redis_settings.socket_timeout_s, 5.0),
                               **redis_settings.auth_options()}
    return redis_asyncio.Redis.from_url(url or redis_settings.url, **options)


def aiokafka_producer_options(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """AIOKafkaProducer options: acks=all, no idempotence (some brokers, e.g. Tansu, reject it)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        import ssl

        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
        options["ssl_context"] = context
    return options
