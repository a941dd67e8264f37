"""The plugin API: options validation, registration (entry points + JSON config), sync adapter,
decision helpers, and delivery with timeouts / retries."""

import asyncio
import json
import threading
import time
from typing import ClassVar

import pytest
from emostream.plugins import (
    UNCERTAIN_LABEL,
    CallbackPlugin,
    DecisionOptions,
    DeliveryPolicy,
    EmotionEvent,
    Plugin,
    PluginConfigError,
    PluginContext,
    PluginDeliveryError,
    PluginOptions,
    SyncPlugin,
    deliver_with_retries,
)
from emostream.plugins.registry import (
    BUILTIN_PLUGIN_PATHS,
    available_plugin_types,
    build_plugins,
    load_plugin_class,
    parse_plugin_config,
)
from emostream.plugins.testing import make_event, run_plugin
from emostream.schemas.settings import PluginSettings

STREAM = "call-7:customer"


class GreeterOptions(PluginOptions):
    greeting: str
    repeat: int = 1


class Greeter(Plugin[GreeterOptions]):
    Options: ClassVar[type[PluginOptions]] = GreeterOptions
    kind: ClassVar[str] = "greeter"
    seen: ClassVar[list[str]] = []

    async def on_emotion(self, event: EmotionEvent) -> None:
        Greeter.seen.append(f"{self.options.greeting}:{event.label}")


# -- options and configuration -------------------------------------------------------------------
def test_bad_option_names_plugin_and_option() -> None:
    with pytest.raises(PluginConfigError) as error:
        Greeter.from_options({"greeting": "hi", "repeat": "often"}, name="front-desk")
    message = str(error.value)
    assert "front-desk" in message and "'repeat'" in message and "integer" in message


def test_missing_and_unknown_options_are_errors() -> None:
    with pytest.raises(PluginConfigError, match=r"'greeting': Field required"):
        Greeter.from_options({}, name="g")
    with pytest.raises(PluginConfigError, match=r"'greting': Extra inputs are not permitted"):
        Greeter.from_options({"greeting": "hi", "greting": "typo"}, name="g")


def test_config_builds_plugins_with_env_secret_and_policy(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TEST_HOOK_SECRET", "s3cret-s3cret-s3cret")
    config = {
        "plugins": [
            {"type": f"{__name__}:Greeter", "name": "hello", "options": {"greeting": "hello"}},
            {
                "type": "webhook",
                "name": "crm",
                "options": {"url": "http://127.0.0.1:9/hook", "secret": "${TEST_HOOK_SECRET}"},
                "timeout_s": 1.5,
                "max_attempts": 5,
            },
            {"type": "rasa", "enabled": False, "options": {}},
        ]
    }
    path = tmp_path / "plugins.json"
    path.write_text(json.dumps(config))
    built = build_plugins(PluginSettings(config_path=str(path), max_attempts=2))
    assert [item.name for item in built] == ["hello", "crm"]
    assert built[0].policy.max_attempts == 2  # the settings default
    assert (built[1].policy.timeout_s, built[1].policy.max_attempts) == (1.5, 5)
    assert built[1].plugin.options.secret.get_secret_value() == "s3cret-s3cret-s3cret"


def test_config_errors_name_the_plugin(monkeypatch) -> None:
    monkeypatch.delenv("NOPE_UNSET", raising=False)
    settings = PluginSettings(
        config_json=json.dumps([{"type": "webhook", "name": "crm", "options": {"url": "http://x/", "secret": "${NOPE_UNSET}"}}])
    )
    with pytest.raises(PluginConfigError, match=r"plugin 'crm': option 'secret' refers to environment variable NOPE_UNSET"):
        build_plugins(settings)
    with pytest.raises(PluginConfigError, match=r"plugin 'x': unknown type 'no-such'"):
        build_plugins(PluginSettings(config_json='[{"type": "no-such", "name": "x"}]'))
    with pytest.raises(PluginConfigError, match=r"plugin 'crm' \(WebhookPlugin\): option 'secret'.*at least 16"):
        build_plugins(PluginSettings(config_json='[{"type": "webhook", "name": "crm", "options": {"url": "http://x/", "secret": "short"}}]'))
    with pytest.raises(PluginConfigError, match=r"used twice"):
        parse_plugin_config('[{"type": "callback"}, {"type": "callback"}]', source="test")
    with pytest.raises(PluginConfigError, match=r"not valid JSON"):
        parse_plugin_config("{plugins: }", source="test")


def test_builtins_are_declared_as_entry_points() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["emostream.plugins"]
    assert declared == BUILTIN_PLUGIN_PATHS
    for type_name in declared:
        assert issubclass(load_plugin_class(type_name), Plugin)
    assert set(declared) <= set(available_plugin_types())


# -- sync adapter and callback ------------------------------------------------------------------
class BlockingPlugin(SyncPlugin[PluginOptions]):
    kind: ClassVar[str] = "blocking"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[str] = []

    def on_emotion_sync(self, event: EmotionEvent) -> None:
        time.sleep(0.2)  # blocking I/O stand-in
        self.threads.append(threading.current_thread().name)


async def test_sync_plugin_runs_off_the_event_loop() -> None:
    plugin = BlockingPlugin()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await run_plugin(plugin, [make_event(STREAM, 0, "happy")])
    task.cancel()
    assert plugin.threads and plugin.threads[0] != threading.main_thread().name
    assert ticks >= 10  # the loop kept running while the plugin blocked for 0.2 s


async def test_callback_accepts_sync_and_async_functions_and_config_target() -> None:
    received: list[tuple[str, int]] = []

    def sync_handler(event: EmotionEvent) -> None:
        received.append(("sync", event.segment_index))

    async def async_handler(event: EmotionEvent) -> None:
        received.append(("async", event.segment_index))

    await run_plugin(CallbackPlugin.wrap(sync_handler), [make_event(STREAM, 0, "sad")])
    await run_plugin(CallbackPlugin.wrap(async_handler), [make_event(STREAM, 1, "sad")])
    Greeter.seen.clear()
    configured = CallbackPlugin.from_options({"target": f"{__name__}:record_target"}, name="cb")
    await run_plugin(configured, [make_event(STREAM, 2, "calm")])
    assert received == [("sync", 0), ("async", 1)]
    assert TARGET_CALLS == [2]
    with pytest.raises(PluginConfigError, match=r"plugin 'cb2': option 'target'"):
        CallbackPlugin.from_options({"target": f"{__name__}:nothing_here"}, name="cb2")
    with pytest.raises(PluginConfigError, match=r"option 'target' is required"):
        CallbackPlugin.from_options({}, name="cb3")


TARGET_CALLS: list[int] = []


def record_target(event: EmotionEvent) -> None:
    TARGET_CALLS.append(event.segment_index)


# -- decision helpers -----------------------------------------------------------------------------
async def _decide(options: DecisionOptions, events: list[EmotionEvent]) -> list[str]:
    labels: list[str] = []

    async def keep(event: EmotionEvent) -> None:
        labels.append(event.label)

    await run_plugin(CallbackPlugin.wrap(keep, decision=options), events)
    return labels


async def test_confidence_threshold_gives_uncertain() -> None:
    events = [make_event(STREAM, 0, "angry", confidence=0.9), make_event(STREAM, 1, "angry", confidence=0.3)]
    assert await _decide(DecisionOptions(confidence_threshold=0.5), events) == ["angry", UNCERTAIN_LABEL]


async def test_hysteresis_ignores_one_odd_segment() -> None:
    raw = ["neutral", "neutral", "angry", "neutral", "angry", "angry", "angry", "neutral"]
    events = [make_event(STREAM, index, label) for index, label in enumerate(raw)]
    decided = await _decide(DecisionOptions(hysteresis_segments=2), events)
    assert decided == ["neutral", "neutral", "neutral", "neutral", "neutral", "angry", "angry", "angry"]
    changes_only = await _decide(DecisionOptions(hysteresis_segments=2, only_on_change=True), events)
    assert changes_only == ["neutral", "angry"]


async def test_smoothing_averages_scores_and_replays_get_the_same_label() -> None:
    happy_strong = make_event(STREAM, 0, "happy", confidence=0.9)
    sad_weak = make_event(STREAM, 1, "sad", confidence=0.5)  # happy avg 0.9/2+0.5/14.. stays on top
    decided = await _decide(DecisionOptions(smoothing_window_segments=2), [happy_strong, sad_weak, sad_weak])
    assert decided == ["happy", "happy", "happy"]  # the replay of segment 1 is answered as the first time
    plain = await _decide(DecisionOptions(), [happy_strong, sad_weak])
    assert plain == ["happy", "sad"]


# -- delivery: timeouts, retries, non-retryable errors --------------------------------------------
class Flaky(Plugin[PluginOptions]):
    kind: ClassVar[str] = "flaky"

    def __init__(self, failures: list[BaseException | float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.attempt_times_s: list[float] = []

    async def on_emotion(self, event: EmotionEvent) -> None:
        self.attempt_times_s.append(time.monotonic())
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, float):
                await asyncio.sleep(failure)
            else:
                raise failure


async def test_retries_with_backoff_then_success() -> None:
    plugin = Flaky([RuntimeError("boom"), 1.0])  # an error, then a timeout
    policy = DeliveryPolicy(timeout_s=0.2, max_attempts=3, backoff_initial_s=0.1, backoff_max_s=1.0)
    outcome = await deliver_with_retries(plugin, make_event(STREAM, 0, "calm"), policy)
    assert outcome.ok and outcome.attempts == 3
    gaps = [b - a for a, b in zip(plugin.attempt_times_s, plugin.attempt_times_s[1:])]
    # lower bounds only (a loaded machine makes every wait longer, never shorter)
    assert gaps[0] >= 0.09  # backoff 0.1 s
    assert gaps[1] >= 0.39  # timeout 0.2 s + backoff 0.2 s (doubled)


async def test_gives_up_naming_plugin_and_event_and_skips_retry_when_not_retryable() -> None:
    event = make_event(STREAM, 4, "calm")
    policy = DeliveryPolicy(timeout_s=0.5, max_attempts=3, backoff_initial_s=0.01)
    outcome = await deliver_with_retries(Flaky([RuntimeError("a"), RuntimeError("b"), RuntimeError("c")], name="crm"), event, policy)
    assert not outcome.ok and outcome.attempts == 3
    assert "plugin 'crm'" in outcome.error and event.idempotency_key in outcome.error and "RuntimeError: c" in outcome.error
    permanent = Flaky([PluginDeliveryError("HTTP 400", retryable=False)])
    outcome = await deliver_with_retries(permanent, event, policy)
    assert not outcome.ok and outcome.attempts == 1 and len(permanent.attempt_times_s) == 1


async def test_plugin_context_defaults() -> None:
    context = PluginContext()
    assert context.settings.topics.alerts and context.redis is None


async def test_a_tie_after_smoothing_keeps_the_reported_label() -> None:
    events = [make_event(STREAM, 0, "neutral", confidence=0.9), make_event(STREAM, 1, "angry", confidence=0.9)]
    assert await _decide(DecisionOptions(smoothing_window_segments=2), events) == ["neutral", "neutral"]


def test_effective_role_falls_back_to_the_stream_suffix() -> None:
    from emostream.plugins import effective_role
    from emostream.schemas.audio import ChannelRole

    assert effective_role(make_event("call-1:customer", 0, "sad", role=ChannelRole.UNKNOWN)) is ChannelRole.CUSTOMER
    assert effective_role(make_event("call-1:customer", 0, "sad", role=ChannelRole.AGENT)) is ChannelRole.AGENT
    assert effective_role(make_event("call-1:left", 0, "sad", role=ChannelRole.UNKNOWN)) is ChannelRole.UNKNOWN


def test_a_third_party_entry_point_is_found_and_built(tmp_path, monkeypatch) -> None:
    """A package declaring [project.entry-points."emostream.plugins"] (here: its installed metadata)."""
    dist_info = tmp_path / "acme_emotion_plugins-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-emotion-plugins\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[emostream.plugins]\ngreeter = {__name__}:Greeter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available_plugin_types()["greeter"] == f"{__name__}:Greeter"
    [configured] = build_plugins(PluginSettings(config_json='[{"type": "greeter", "options": {"greeting": "hey"}}]'))
    assert isinstance(configured.plugin, Greeter) and configured.name == "greeter"
