"""benchmarks/gain_robustness.py's pure parts: a clip put at a speech level, and one level's row."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests._benchmark_helpers import load_benchmark

SPEECH = Path(__file__).parent / "fixtures" / "speech.wav"
bench = load_benchmark("gain_robustness")


@pytest.mark.parametrize("level_dbfs", [-48.0, -26.0])
def test_a_clip_is_put_at_the_asked_speech_level(level_dbfs: float) -> None:
    speech, _ = sf.read(SPEECH, dtype="float32")
    scaled = bench.at_level(0.1 * speech, level_dbfs)
    assert bench.speech_level_dbfs(scaled) == pytest.approx(level_dbfs, abs=0.05)
    assert np.abs(scaled).max() <= 1.0  # loud levels clip at full scale, as a gateway would


def test_a_level_row_counts_the_top_label_and_the_changes_from_the_recording() -> None:
    labels = ["angry", "calm", "sad"]
    row = bench.level_row(truth=["angry", "calm", "sad", "sad"], predicted=["angry", "angry", "angry", "sad"],
                          as_recorded=["angry", "calm", "sad", "sad"], labels=labels)
    assert row["war_percent"] == 50.0
    assert row["uar_percent"] == pytest.approx(100 * (1 + 0 + 0.5) / 3, abs=0.01)
    assert (row["top_label"], row["top_label_share_percent"]) == ("angry", 75.0)
    assert row["changed_from_recorded_percent"] == 50.0
