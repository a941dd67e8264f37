"""The example chatbot (examples/chatbot.py) runs as its users would run it, against the real Redis,
and changes its reply style when the decided emotion changes."""

import os
import subprocess
import sys
import time
from pathlib import Path

from emostream.plugins.testing import make_event
from emostream.schemas.settings import Settings
from emostream.workers.runtime.result_store import ResultStore
from emostream.workers.stack.settings_env import ENV_PREFIX, settings_to_env

EXAMPLE = Path(__file__).parents[1] / "examples" / "chatbot.py"


async def test_chatbot_changes_reply_style_on_emotion(stack_settings: Settings) -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    environment.update(settings_to_env(stack_settings), PYTHONUNBUFFERED="1")
    bot = subprocess.Popen(  # noqa: ASYNC220 - the bot runs beside this test's event loop
        [sys.executable, str(EXAMPLE), "--stream-id", "demo-1:user"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )
    store = ResultStore(stack_settings.redis)
    try:
        assert "following demo-1:user" in bot.stdout.readline()
        bot.stdin.write("where is my parcel\n")
        bot.stdin.flush()
        assert bot.stdout.readline().strip() == "[bot, neutral] Sure, I can help with where is my parcel."
        # one angry segment is not enough (hysteresis 2); two in a row switch the style
        for index, label in enumerate(["neutral", "angry", "neutral", "angry", "angry", "angry"]):
            await store.write_results([make_event("demo-1:user", index, label, confidence=0.9)])
        deadline = time.monotonic() + 10
        line = bot.stdout.readline()
        assert time.monotonic() < deadline
        assert line.startswith("[bot] segment 4 ") and "sounds angry: reply style neutral -> apologetic" in line, line
        bot.stdin.write("it never came\n")
        bot.stdin.flush()
        assert bot.stdout.readline().startswith("[bot, apologetic] I'm really sorry about this.")
        bot.stdin.close()
        assert bot.wait(timeout=10) == 0
    finally:
        await store.close()
        if bot.poll() is None:
            bot.kill()
