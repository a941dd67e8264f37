"""The plugin runner's dispatcher in-process (the broker tests cover it end to end): a record is
acknowledged only when every plugin is done with it; a full lane holds the consumer back (bounded
memory) while other streams and plugins go on; a plugin seen to receive an event is not given it
again on replay."""

import asyncio
from typing import ClassVar

from emostream.plugins import (
    CallbackPlugin,
    DeliveryPolicy,
    EmotionEvent,
    Plugin,
    PluginContext,
    PluginOptions,
)
from emostream.plugins.registry import ConfiguredPlugin
from emostream.plugins.testing import make_event
from emostream.schemas.dead_letter import DeadLetter
from emostream.schemas.settings import PluginSettings, Settings
from emostream.workers.stages.plugin_runner import PluginDispatcher, RecordRef

POLICY = DeliveryPolicy(timeout_s=1.0, max_attempts=2, backoff_initial_s=0.01)


class DeadLetters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def send(self, dead_letter: DeadLetter) -> None:
        self.letters.append(dead_letter)


class Gate(Plugin[PluginOptions]):
    """Holds every event until `open` is set."""

    kind: ClassVar[str] = "gate"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.open = asyncio.Event()
        self.received: list[tuple[str, int]] = []

    async def on_emotion(self, event: EmotionEvent) -> None:
        await self.open.wait()
        self.received.append((event.stream_id, event.segment_index))


def _record(offset: int) -> RecordRef:
    return RecordRef(topic="emotions", partition=0, offset=offset, key=b"k", value=b"{}")


def _context(**plugin_settings) -> PluginContext:
    return PluginContext(settings=Settings(plugins=PluginSettings(**plugin_settings)))


async def test_ack_waits_for_every_plugin_and_failures_are_dead_lettered() -> None:
    gate = Gate(name="gate")
    fast: list[int] = []

    async def failing(event: EmotionEvent) -> None:
        raise RuntimeError("CRM is down")

    plugins = [
        ConfiguredPlugin(plugin=gate, policy=POLICY),
        ConfiguredPlugin(plugin=CallbackPlugin.wrap(lambda e: fast.append(e.segment_index), name="fast"), policy=POLICY),
        ConfiguredPlugin(plugin=CallbackPlugin.wrap(failing, name="crm"), policy=POLICY),
    ]
    dead = DeadLetters()
    dispatcher = PluginDispatcher(plugins, dead_letters=dead, context=_context())
    await dispatcher.start()
    acked: list[int] = []
    for index in range(3):
        await dispatcher.submit(make_event("c:user", index, "sad"), _record(index), lambda i=index: acked.append(i))
    await asyncio.sleep(0.2)
    assert fast == [0, 1, 2] and len(dead.letters) == 3  # not held up by the gate
    assert acked == []  # the gate has not finished any: nothing may be committed
    assert dead.letters[0].stage == "plugin:crm" and "RuntimeError: CRM is down" in dead.letters[0].reason
    gate.open.set()
    await dispatcher.drain(2.0)
    assert acked == [0, 1, 2] and gate.received == [("c:user", 0), ("c:user", 1), ("c:user", 2)]
    await dispatcher.stop()


async def test_a_full_lane_holds_the_consumer_but_other_streams_keep_going() -> None:
    gate = Gate(name="gate")
    dispatcher = PluginDispatcher(
        [ConfiguredPlugin(plugin=gate, policy=DeliveryPolicy(timeout_s=5, max_attempts=1))],
        dead_letters=DeadLetters(),
        context=_context(max_pending_events=3, max_concurrent_streams=2),
    )
    await dispatcher.start()
    submitted: list[int] = []

    async def consume() -> None:
        for index in range(5):
            await dispatcher.submit(make_event(f"s{index}:user", 0, "calm"), _record(index), lambda: None)
            submitted.append(index)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    assert submitted == [0, 1, 2] and dispatcher.pending_events() == {"gate": 3}  # bounded
    gate.open.set()
    await asyncio.wait_for(consumer, 2)
    await dispatcher.drain(2.0)
    assert sorted(gate.received) == [(f"s{index}:user", 0) for index in range(5)]
    await dispatcher.stop()


class MemoryLedger:
    def __init__(self) -> None:
        self.marks: set[tuple[str, str]] = set()

    def delivered_to(self, event, plugin_names):
        answer = asyncio.get_running_loop().create_future()
        answer.set_result({name for name in plugin_names if (name, event.idempotency_key) in self.marks})
        return answer

    def mark_delivered(self, plugin_name, event) -> None:
        self.marks.add((plugin_name, event.idempotency_key))

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def test_replayed_events_skip_plugins_that_already_received_them() -> None:
    calls: list[int] = []
    attempts = {"flaky": 0}

    async def flaky(event: EmotionEvent) -> None:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise RuntimeError("first time fails")

    plugins = [
        ConfiguredPlugin(plugin=CallbackPlugin.wrap(lambda e: calls.append(e.segment_index), name="once"), policy=POLICY),
        ConfiguredPlugin(plugin=CallbackPlugin.wrap(flaky, name="flaky"), policy=DeliveryPolicy(timeout_s=1, max_attempts=1)),
    ]
    ledger = MemoryLedger()
    dispatcher = PluginDispatcher(plugins, dead_letters=DeadLetters(), context=_context(), ledger=ledger)
    await dispatcher.start()
    event = make_event("c:user", 7, "angry")
    await dispatcher.submit(event, _record(0), lambda: None)
    await dispatcher.drain(2.0)
    await dispatcher.submit(event, _record(0), lambda: None)  # the same record again (replay)
    await dispatcher.drain(2.0)
    await dispatcher.stop()
    assert calls == [7]  # delivered once
    assert attempts["flaky"] == 2  # dead-lettered the first time (not marked), so tried again
