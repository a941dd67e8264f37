"""A minimal chatbot that adapts its reply style to how the user sounds.

It follows one stream's emotion results from Redis (no plugin runner needed) and answers each line
typed on stdin in the style of the latest *decided* emotion: a new emotion must win 2 segments in a
row (hysteresis), so one odd segment does not flip it, and it is `uncertain` below 40 % confidence.

    python examples/chatbot.py --stream-id demo-1:user            # chat on stdin
    python examples/chatbot.py --stream-id demo-1:user --no-input # only print style changes

Redis comes from EMOSTREAM_REDIS__URL (see examples/README.md for the whole local run).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from emostream.plugins import DecisionOptions, EmotionEvent, Plugin, PluginOptions, subscribe

STYLE_BY_EMOTION: dict[str, str] = {
    "angry": "apologetic",
    "fearful": "reassuring",
    "sad": "empathetic",
    "disgust": "apologetic",
    "happy": "upbeat",
    "surprised": "upbeat",
}
DEFAULT_STYLE = "neutral"
REPLIES: dict[str, str] = {
    "apologetic": "I'm really sorry about this. Let me fix it for you right now: {echo}",
    "reassuring": "Don't worry, you're in good hands. About {echo}: here is what we'll do.",
    "empathetic": "That sounds hard. I'm here to help with {echo}.",
    "upbeat": "Great! Happy to help with {echo}!",
    "neutral": "Sure, I can help with {echo}.",
}


class StyleOptions(PluginOptions):
    """Nothing of its own: the decision helpers (inherited `decision`) are all this bot needs."""


class ReplyStyle(Plugin[StyleOptions]):
    """The on_emotion hook of the bot: keeps the current reply style."""

    Options = StyleOptions
    kind = "reply-style"

    def __init__(self, options: StyleOptions | None = None, *, name: str | None = None) -> None:
        super().__init__(options, name=name)
        self.style = DEFAULT_STYLE

    async def on_emotion(self, event: EmotionEvent) -> None:
        style = STYLE_BY_EMOTION.get(event.label, DEFAULT_STYLE)
        if style != self.style:
            print(
                f"[bot] segment {event.segment_index} ({event.start_ms / 1000:.1f}-{event.end_ms / 1000:.1f} s) "
                f"sounds {event.label}: reply style {self.style} -> {style}",
                flush=True,
            )
            self.style = style

    def reply(self, text: str) -> str:
        return f"[bot, {self.style}] " + REPLIES[self.style].format(echo=text.strip() or "that")


async def main(stream_id: str, read_input: bool) -> int:
    decision = DecisionOptions(confidence_threshold=0.4, hysteresis_segments=2)
    bot = ReplyStyle(StyleOptions(decision=decision), name="chatbot")
    async with subscribe(stream_id, bot) as subscription:
        print(f"[bot] following {stream_id} (Redis {subscription.settings.redis.url}); style {bot.style}", flush=True)
        if not read_input:
            await subscription.wait_closed()
            return 0
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 0
            print(bot.reply(line), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-id", required=True, help="the user's stream, e.g. demo-1:user")
    parser.add_argument("--no-input", action="store_true", help="do not read stdin; only print style changes")
    arguments = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(arguments.stream_id, not arguments.no_input)))
    except KeyboardInterrupt:
        sys.exit(130)
