"""A webhook receiver that verifies emostream's signature and rejects replays (aiohttp).

    CRM_WEBHOOK_SECRET=... python examples/webhook_receiver.py --port 8080

Then enable the `crm` plugin in examples/plugins.json. Only the verifier is emostream's; a receiver
in another language recomputes HMAC-SHA256(secret, timestamp + "." + body) the same way.
"""

import argparse
import json
import os

from aiohttp import web
from emostream.plugins.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayGuard,
    WebhookVerificationError,
    verify_webhook,
)


def make_app(secret: str) -> web.Application:
    guard = ReplayGuard()
    seen_keys: set[str] = set()  # deliveries already handled (retries and replays carry the same key)

    async def emotion(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_webhook(secret, body=body, timestamp_header=request.headers.get(TIMESTAMP_HEADER),
                           signature_header=request.headers.get(SIGNATURE_HEADER), replay_guard=guard)
        except WebhookVerificationError as error:
            return web.Response(status=401, text=str(error))
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if key not in seen_keys:
            seen_keys.add(key)
            event = json.loads(body)["event"]
            print(f"{event['stream_id']} segment {event['segment_index']}: {event['label']}", flush=True)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/emotion", emotion)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="emostream webhook receiver")
    parser.add_argument("--port", type=int, default=8080)
    arguments = parser.parse_args()
    web.run_app(make_app(os.environ["CRM_WEBHOOK_SECRET"]), host="127.0.0.1", port=arguments.port)
