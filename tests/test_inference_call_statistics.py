"""The inference stage's per-stream statistics for call-normalised models (workers/stages/inference.py)."""

import numpy as np
from emostream.workers.stages.inference import CallStatisticsCache


def frames(level: float) -> np.ndarray:
    """One utterance's window: 100 speech frames at `level` over 96 frames of floor."""
    window = np.full((1, 196, 39), -500.0, np.float32)
    window[0, :100] = level + np.linspace(0, 1, 100, dtype=np.float32)[:, None]
    return window


def test_a_batch_shares_one_copy_per_stream_and_keeps_it_only_when_told() -> None:
    cache = CallStatisticsCache(max_streams=10)
    calls = cache.for_segments(["a", "b", "a"])
    assert calls[0] is calls[2] and calls[0] is not calls[1]
    for call in calls:
        call.add(frames(1.0))
    again = cache.for_segments(["a"])  # nothing kept yet: a failed batch counted nothing
    assert again[0].frames == 0
    cache.keep(["a", "b", "a"], calls)
    kept = cache.for_segments(["a", "b"])
    assert (kept[0].frames, kept[1].frames) == (200, 100)
    kept[0].add(frames(2.0))  # a copy: the kept statistics move only with keep()
    assert cache.for_segments(["a"])[0].frames == 200


def test_the_least_recently_used_stream_is_dropped_past_the_bound() -> None:
    cache = CallStatisticsCache(max_streams=2)
    for stream_id in ("a", "b", "a", "c"):
        (call,) = cache.for_segments([stream_id])
        call.add(frames(1.0))
        cache.keep([stream_id], [call])
    assert len(cache) == 2
    assert cache.for_segments(["b"])[0].frames == 0  # dropped: starts again from the prior
    assert cache.for_segments(["a"])[0].frames == 200
