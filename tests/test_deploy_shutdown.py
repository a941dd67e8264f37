"""Graceful shutdown as Kubernetes does it: SIGTERM, then SIGKILL after terminationGracePeriodSeconds.

A VAD worker and then an inference worker get SIGTERM in the middle of streams (real broker, real
Redis). Each must exit by itself (exit code 0, not the SIGKILL that follows the grace period of its
Deployment in deploy/k8s/base) and lose nothing: after replacements take over, Redis holds exactly
one result per utterance of the offline reference segmentation, nothing missing, nothing extra.
Waits are event waits with deadlines; no wall-clock bound is asserted.
"""

import threading
import time

import numpy as np
import pytest
import soundfile as sf
import yaml
from emostream.schemas.event import EmotionEvent
from emostream.schemas.redis_keys import result_key

from tests._deploy_helpers import DEPLOY
from tests._workers_helpers import reference_segments, require_model, send_interleaved, wait_for

STREAMS = 3
REPEATS = 2  # each stream: the fixture's 3 utterances twice (~16 s of audio, 6 segments)
CHUNK_MS = 20
SEND_SPEEDUP = 4.0
LEAD_STEP_MS = 410


def grace_period_s(stage: str) -> int:
    """terminationGracePeriodSeconds of the stage's Deployment (every overlay keeps the base's)."""
    deployment = yaml.safe_load((DEPLOY / "k8s" / "base" / f"{stage}.yaml").read_text())
    return int(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def _sigterm(worker, stage: str) -> int | None:
    """SIGTERM; SIGKILL only if the worker outlives its Deployment's grace period. The exit code."""
    began = time.monotonic()
    code = worker.stop(grace_s=float(grace_period_s(stage)))
    print(f"\n{worker.name}: SIGTERM to exit {time.monotonic() - began:.1f} s (code {code})")
    return code


def _spawn(spawn_worker, stage: str, settings, name: str):
    """A worker, once /healthz answers 200; prints the start-up time (deploy/README.md quotes it)."""
    began = time.monotonic()
    worker = spawn_worker(stage, settings, name=name)
    print(f"\n{name}: process start to /healthz 200 in {time.monotonic() - began:.1f} s")
    return worker


@pytest.mark.slow
def test_sigterm_mid_stream_loses_nothing_and_exits_within_the_grace_period(
    make_stack_settings, spawn_worker, read_topic, speech_wav
):
    settings = make_stack_settings(topics={"partitions": 2}, vad={"quiet_boundary_ms": 2_000})
    require_model(settings)
    speech, _ = sf.read(speech_wav, dtype="int16")
    stream_ids = [f"call-{i}:customer" for i in range(STREAMS)]
    audio = {
        s: np.concatenate([np.zeros(i * LEAD_STEP_MS * 16, np.int16)] + [speech] * REPEATS)
        for i, s in enumerate(stream_ids)
    }
    references = {s: reference_segments(a, settings, chunk_ms=CHUNK_MS) for s, a in audio.items()}
    assert all(len(r) == 3 * REPEATS for r in references.values())
    total = sum(len(r) for r in references.values())

    vad = _spawn(spawn_worker, "vad", settings, "vad-1")
    inference = _spawn(spawn_worker, "inference", settings, "inference-1")
    done = threading.Event()
    sender = threading.Thread(target=send_interleaved, args=(settings, audio, done),
                              kwargs={"chunk_ms": CHUNK_MS, "speedup": SEND_SPEEDUP}, daemon=True)
    sender.start()

    # SIGTERM the VAD worker once segments flow and other utterances are open
    wait_for(
        lambda: (
            len(read_topic(settings, settings.topics.segments, min_records=STREAMS, timeout_s=1))
            >= STREAMS
        ),
        timeout_s=60,
        what="first segments",
    )
    assert _sigterm(vad, "vad") == 0, (
        f"VAD worker did not exit cleanly on SIGTERM:\n{vad.log_tail()}"
    )
    _spawn(spawn_worker, "vad", settings, "vad-2")

    # SIGTERM the inference worker while results are flowing
    wait_for(
        lambda: (
            len(read_topic(settings, settings.topics.emotions, min_records=STREAMS, timeout_s=1))
            >= STREAMS
        ),
        timeout_s=90,
        what="results before the inference shutdown",
    )
    assert _sigterm(inference, "inference") == 0, (
        f"inference worker did not exit cleanly on SIGTERM:\n{inference.log_tail()}"
    )
    _spawn(spawn_worker, "inference", settings, "inference-2")
    sender.join(timeout=90)
    assert done.is_set()
    for worker in (vad, inference):
        assert "Traceback" not in worker.log_tail(200_000), worker.log_tail()

    import redis

    client = redis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix

    def missing() -> list[str]:
        return [
            f"{s}/{seg.index}"
            for s in stream_ids
            for seg in references[s]
            if not client.exists(result_key(prefix, s, seg.index))
        ]

    try:
        wait_for(lambda: not missing(), timeout_s=120, what="every result in Redis")
    except AssertionError as error:
        raise AssertionError(f"{error}: missing {missing()}") from None
    for stream_id in stream_ids:
        assert len(client.keys(f"{prefix}:{{{stream_id}}}:seg:*")) == len(references[stream_id])
        for segment in references[stream_id]:
            event = EmotionEvent.model_validate_json(
                client.get(result_key(prefix, stream_id, segment.index))
            )
            assert (event.start_ms, event.end_ms) == (segment.start_ms, segment.end_ms)
    emotions = read_topic(settings, settings.topics.emotions, min_records=total, timeout_s=10)
    keys = {
        EmotionEvent.model_validate_json(r.value).idempotency_key.rsplit("/", 1)[0]
        for r in emotions
    }
    assert keys == {f"{s}/{seg.index}" for s in stream_ids for seg in references[s]}
