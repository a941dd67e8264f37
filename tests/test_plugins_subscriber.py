"""In-process subscription (no plugin runner): results written to the real Redis by the pipeline's
own ResultStore reach a chatbot's on_emotion, in order, through the event log or pub/sub."""

import asyncio

from emostream.plugins import CallbackPlugin, DecisionOptions, EmotionEvent, subscribe
from emostream.plugins.testing import make_event
from emostream.schemas.settings import Settings
from emostream.workers.runtime.result_store import ResultStore

STREAM = "bot-1:user"


async def _wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_stream_subscription_gets_new_results_in_order_and_replays_from_start(stack_settings: Settings) -> None:
    store = ResultStore(stack_settings.redis)
    received: list[tuple[int, str]] = []

    def on_emotion(event: EmotionEvent) -> None:  # a sync handler, as many bots have
        received.append((event.segment_index, event.label))

    try:
        await store.write_results([make_event(STREAM, 0, "calm")])  # before subscribing: not delivered
        async with subscribe(STREAM, on_emotion, settings=stack_settings) as subscription:
            await store.write_results([make_event(STREAM, 1, "sad"), make_event("other:user", 0, "angry")])
            await store.write_results([make_event(STREAM, 2, "angry"), make_event(STREAM, 3, "angry")])
            await store.write_results([make_event(STREAM, 2, "angry")])  # a replayed segment: not appended again
            await _wait_until(lambda: len(received) >= 3)
            await asyncio.sleep(0.2)
            assert received == [(1, "sad"), (2, "angry"), (3, "angry")]
            assert subscription.last_entry_id == "4-0" and subscription.delivered == 3

        replayed: list[int] = []
        async with subscribe(
            STREAM, lambda event: replayed.append(event.segment_index), settings=stack_settings, from_start=True
        ):
            await _wait_until(lambda: len(replayed) >= 4)
        assert replayed == [0, 1, 2, 3]
    finally:
        await store.close()


async def test_pubsub_subscription_with_decision_helpers(stack_settings: Settings) -> None:
    store = ResultStore(stack_settings.redis)
    labels: list[str] = []

    async def on_emotion(event: EmotionEvent) -> None:
        labels.append(event.label)

    plugin = CallbackPlugin.wrap(on_emotion, decision=DecisionOptions(confidence_threshold=0.5, hysteresis_segments=2))
    try:
        async with subscribe(STREAM, plugin, settings=stack_settings, mode="pubsub"):
            raw = [("neutral", 0.9), ("angry", 0.9), ("neutral", 0.9), ("angry", 0.9), ("angry", 0.9), ("angry", 0.2)]
            for index, (label, confidence) in enumerate(raw):
                await store.write_results([make_event(STREAM, index, label, confidence=confidence)])
            await _wait_until(lambda: len(labels) == len(raw))
        # one odd "angry" does not flip the bot; two in a row do; a low-confidence one is "uncertain",
        # which must also persist 2 segments before it is reported.
        assert labels == ["neutral", "neutral", "neutral", "neutral", "angry", "angry"]
    finally:
        await store.close()


async def test_failing_handler_is_reported_and_the_subscription_goes_on(stack_settings: Settings) -> None:
    from emostream.plugins import DeliveryPolicy

    store = ResultStore(stack_settings.redis)
    seen: list[int] = []
    failures = []

    def on_emotion(event: EmotionEvent) -> None:
        if event.segment_index == 0:
            raise ValueError("the bot crashed on this one")
        seen.append(event.segment_index)

    try:
        async with subscribe(
            STREAM,
            on_emotion,
            settings=stack_settings,
            policy=DeliveryPolicy(timeout_s=1, max_attempts=2, backoff_initial_s=0.01),
            on_failure=failures.append,
        ):
            await store.write_results([make_event(STREAM, 0, "sad"), make_event(STREAM, 1, "sad")])
            await _wait_until(lambda: seen == [1])
        [failure] = failures
        assert failure.attempts == 2 and "ValueError: the bot crashed on this one" in failure.error
    finally:
        await store.close()
