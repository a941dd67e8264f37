"""`emostream analyze` on a real speech recording, and its handling of bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _model_helpers import FIXTURES, SPEECH_WAV, write_checkpoint

LABELS = ["angry", "calm", "happy", "sad"]


def emostream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emostream.workers.cli", *args], capture_output=True, text=True,
                          timeout=240, check=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "plb-test"
    write_checkpoint(folder, LABELS, name="plb-test")
    return folder


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    rate = 16_000
    speech, _ = sf.read(SPEECH_WAV, dtype="float32")
    files = {
        "corrupt": folder / "corrupt.wav",
        "rate": folder / "rate.wav",
        "stereo": folder / "stereo.wav",
        "silence": folder / "silence.wav",
        "short": folder / "short.wav",
        "nan": folder / "nan.wav",
        "folder": folder / "recordings",
    }
    files["folder"].mkdir()
    files["corrupt"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + bytes(range(256)))
    sf.write(files["rate"], speech[:12_345], 12_345)
    sf.write(files["stereo"], np.stack([speech, speech], axis=1), rate)
    sf.write(files["silence"], np.zeros(rate * 2, np.float32), rate)
    sf.write(files["short"], speech[8_000:11_200], rate)  # 0.2 s
    with_nan = speech.copy()
    with_nan[1000] = np.nan
    sf.write(files["nan"], with_nan, rate, subtype="FLOAT")
    return files


def test_json_gives_one_entry_per_utterance_where_the_speech_is(checkpoint: Path) -> None:
    result = emostream("analyze", str(SPEECH_WAV), "--model", str(checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    spans = json.loads((FIXTURES / "speech.json").read_text())["utterances"]
    assert len(entries) == len(spans)
    for entry, span in zip(entries, spans, strict=True):
        assert set(entry) == {"start_s", "end_s", "label", "scores"}
        assert abs(entry["start_s"] - span["start_ms"] / 1000) < 0.3
        assert abs(entry["end_s"] - span["end_ms"] / 1000) < 0.35
        assert entry["label"] in LABELS
        assert sum(entry["scores"].values()) == pytest.approx(1.0, abs=1e-3)


def test_table_and_plot(checkpoint: Path, tmp_path: Path) -> None:
    plot = tmp_path / "timeline.png"
    result = emostream("analyze", str(SPEECH_WAV), "--model", str(checkpoint), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert "3 utterance(s)" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BAD_INPUT_MESSAGES = {
    "corrupt": "unreadable or corrupt",
    "rate": "sample rate 12345 Hz not supported",
    "stereo": "2 channels; only mono",
    "silence": "silence only",
    "short": "0.200 s long; at least 0.3 s",
    "nan": "NaN or infinite",
    "folder": "a folder, not an audio file",
}


def test_a_batch_names_each_bad_file_and_carries_on(checkpoint: Path, bad_files: dict[str, Path],
                                                     tmp_path: Path) -> None:
    import librosa

    speech, rate = sf.read(SPEECH_WAV, dtype="float32")
    telephone = tmp_path / "speech-8k.flac"  # any common rate is accepted
    sf.write(telephone, librosa.resample(speech, orig_sr=rate, target_sr=8_000), 8_000)
    files = [str(bad_files["corrupt"]), str(telephone), *(str(bad_files[k]) for k in BAD_INPUT_MESSAGES if k != "corrupt")]
    result = emostream("analyze", *files, "--model", str(checkpoint), "--json")
    assert result.returncode == 2
    payload = json.loads(result.stdout)
    assert list(payload) == [str(telephone)] and len(payload[str(telephone)]) == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(BAD_INPUT_MESSAGES)
    for kind, message in BAD_INPUT_MESSAGES.items():
        assert any(str(bad_files[kind]) in line and message in line for line in errors), (kind, errors)


def test_only_bad_input_fails(checkpoint: Path, bad_files: dict[str, Path]) -> None:
    result = emostream("analyze", str(bad_files["silence"]), "--model", str(checkpoint))
    assert result.returncode == 1 and "silence only" in result.stderr


def test_a_model_that_cannot_be_loaded_is_one_error_line(checkpoint: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "plb-truncated"
    truncated.mkdir()
    for part in checkpoint.iterdir():
        (truncated / part.name).write_bytes(part.read_bytes())
    weights = truncated / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy that stopped part-way
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "labels.csv").write_text("path,label\nspeech.wav,angry\n")
    (corpus / "speech.wav").write_bytes(SPEECH_WAV.read_bytes())
    for command, model, message in [
        ("analyze", "no-such-model", "error: model 'no-such-model' not found; available: "),
        ("analyze", str(truncated), f"error: {weights}: sha256 "),
        ("evaluate", "no-such-model", "error: model 'no-such-model' not found; available: "),
    ]:
        arguments = [str(SPEECH_WAV)] if command == "analyze" else ["--data", str(corpus)]
        result = emostream(command, *arguments, "--model", model)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(message), result.stderr
    missing = emostream("evaluate", "--data", str(tmp_path / "nowhere"), "--model", str(checkpoint))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert str(tmp_path / "nowhere") in missing.stderr


def test_models_lists_the_readable_cards_and_names_a_broken_one(checkpoint: Path, tmp_path: Path) -> None:
    import os

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text('{"name": "broken"')  # a card cut off part-way
    env = {**os.environ, "EMOSTREAM_MODEL_PATH": os.pathsep.join([str(tmp_path), str(checkpoint.parent)])}
    result = subprocess.run([sys.executable, "-m", "emostream.workers.cli", "models", "--json"], capture_output=True,
                            text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert {row["name"] for row in json.loads(result.stdout)} >= {"plb-test", "plb-ravdess8-call"}
    assert result.stderr.startswith(f"skipped: {tmp_path / 'broken' / 'card.json'}: not a valid model card")


def test_stereo_can_be_mixed_down_on_request(checkpoint: Path, bad_files: dict[str, Path]) -> None:
    from emostream.model.analysis import analyze_file
    from emostream.model.registry import load_model
    from emostream.model.vad import EndpointerParams

    results = analyze_file(bad_files["stereo"], load_model(str(checkpoint)), EndpointerParams(), allow_stereo=True)
    assert len(results) == 3


def test_models_lists_cards(checkpoint: Path) -> None:
    import os

    env = {**os.environ, "EMOSTREAM_MODEL_PATH": str(checkpoint.parent)}
    result = subprocess.run([sys.executable, "-m", "emostream.workers.cli", "models", "--json"], capture_output=True,
                            text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["plb-test"]["labels"] == LABELS
    assert rows["plb-test"]["parameters"] == 94_127
    assert rows["plb-test"]["sample_rate_hz"] == 22_050
