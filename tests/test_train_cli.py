"""`emostream train` and `emostream crossval` on a tiny real subset, end to end, and their bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _model_helpers import FIXTURES, SPEECH_WAV
from emostream.model.checkpoint import load_plb
from emostream.model.feature_table import FeatureTable
from emostream.schemas.model_card import FeatureSettings


def emostream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emostream.workers.cli", *args], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's three spoken utterances, twice each with gain changes, as a labels.csv corpus."""
    folder = tmp_path_factory.mktemp("corpus")
    audio, rate_hz = sf.read(SPEECH_WAV, dtype="float32")
    spans = json.loads((FIXTURES / "speech.json").read_text())["utterances"]
    rows = ["path,label,speaker"]
    for n, span in enumerate(spans):
        piece = audio[int(span["start_ms"] * rate_hz / 1000) : int(span["end_ms"] * rate_hz / 1000)]
        for copy, gain in enumerate((1.0, 0.5)):
            sf.write(folder / f"u{n}-{copy}.wav", piece * gain, rate_hz)
            rows.append(f"u{n}-{copy}.wav,{['calm', 'angry', 'sad'][n]},s{copy}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_train_writes_a_loadable_checkpoint_with_its_card(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    done = emostream("train", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--recipe", "production",
                     "--epochs", "3", "--batch-size", "3", "--eager", "--quiet", "--workers", "1",
                     "--name", "tiny", "--version", "7", "--serve-onset-lead-in-s", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["labels"] == ["angry", "calm", "sad"]
    assert "tiny epoch 3/3 eager" in done.stderr  # one progress line per epoch under --quiet
    network, card = load_plb(out)
    assert card.version == "7" and card.training["recipe"]["name"] == "production"
    assert card.features.onset_lead_in_s == 0.5  # served with onset normalisation
    assert card.architecture_options["input_normalisation"] == "per-coefficient"
    assert len(card.training["learning_curve"]) == 3
    assert float(network.input_std.min()) > 0  # statistics fitted on the corpus, saved with the weights
    assert not (out / "training-state.pt").exists()


def test_crossval_reports_every_fold_and_resumes_nothing_twice(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    arguments = ("crossval", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--protocol", "speaker",
                 "--folds", "2", "--epochs", "2", "--batch-size", "2", "--eager", "--quiet", "--workers", "1",
                 "--out", str(out), "--plot", str(tmp_path / "cm.png"))
    done = emostream(*arguments)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["folds"] == 2 and len(summary["war_percent_per_fold"]) == 2
    fold = json.loads((out / "fold-00.json").read_text())
    assert len(fold["test_logits"]) == fold["test_clips"] == 3 and len(fold["learning_curve"]) == 2
    assert (tmp_path / "cm.png").stat().st_size > 0
    again = emostream(*arguments)  # finished folds are kept, not retrained
    assert again.returncode == 0 and "epoch" not in again.stderr


def test_a_feature_table_of_other_settings_is_refused_by_name(tmp_path: Path) -> None:
    table = FeatureTable(np.zeros((4, 196, 20), np.float32), np.array([0, 1, 0, 1]), ["a", "b"], ["1"] * 4,
                         ["x"] * 4, FeatureSettings(n_coefficients=20))
    path = tmp_path / "other.npz"
    table.save(path)
    done = emostream("train", "--features", str(path), "--epochs", "1", "--name", "x", "--out", str(tmp_path / "m"))
    assert done.returncode == 2
    assert f"error: {path}: features made with other settings (n_coefficients differ" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_resume_from_another_recipe_is_refused_by_name(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    state = out / "training-state.pt"
    torch.save({"format": 2, "identity": {"recipe": "0123", "data": "x", "model": "y"}, "model": {}, "optimizer": {},
                "next_epoch": 1, "generators": {}, "torch_rng": torch.get_rng_state()}, state)
    done = emostream("train", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--epochs", "2",
                     "--eager", "--quiet", "--workers", "1", "--name", "x", "--out", str(out))
    assert done.returncode == 2
    assert f"error: {state}: written for another recipe ('0123'" in done.stderr


@pytest.mark.parametrize(("arguments", "expected"), [
    (["--recipe", "production"], ["speed-0.9", "speed-1.1", "noise-20db", "telephony", "crop"]),
    (["--recipe", "production", "--waveform-variants", "none"], None),
    (["--recipe", "production", "--waveform-variants", "telephony"], ["telephony"]),
    (["--recipe", "thesis"], None),
])
def test_the_production_recipe_trains_on_its_waveform_bank_unless_told_otherwise(
        arguments: list[str], expected: list[str] | None) -> None:
    from emostream.workers.cli import build_parser
    from emostream.workers.cli.commands.train import _waveform_variants

    args = build_parser().parse_args(["train", "--data", "corpus", "--name", "m", "--out", "out", *arguments])
    assert _waveform_variants(args) == expected


def test_a_call_normalised_model_is_trained_per_speaker_and_hears_a_call_at_any_gain(
        corpus: Path, tmp_path: Path) -> None:
    from emostream.model.call_statistics import CallStatistics
    from emostream.model.plb_model import PLBEmotionModel

    out = tmp_path / "model"
    done = emostream("train", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--recipe", "production",
                     "--call-normalisation", "--waveform-variants", "none", "--epochs", "3", "--batch-size", "3",
                     "--eager", "--quiet", "--workers", "1", "--name", "tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr
    _, card = load_plb(out)
    assert card.features.call_normalisation and len(card.features.call_prior_std or []) == 39
    assert (card.training["recipe"]["gain_min_db"], card.training["recipe"]["gain_max_db"]) == (0.0, 0.0)
    audio, rate_hz = sf.read(SPEECH_WAV, dtype="float32")
    spans = json.loads((FIXTURES / "speech.json").read_text())["utterances"]
    utterances = [audio[int(s["start_ms"] * rate_hz / 1000) : int(s["end_ms"] * rate_hz / 1000)] for s in spans]
    model = PLBEmotionModel(out)
    assert model.uses_call_statistics
    heard = []
    for gain in (1.0, 0.25):  # the same call 12 dB quieter: the same input, the same scores
        call = CallStatistics()
        heard.append([p.scores for p in model.predict([u * gain for u in utterances], rate_hz, [call] * 3)])
        assert call.frames > 0
    for loud, quiet in zip(*heard, strict=True):
        assert max(abs(loud[k] - quiet[k]) for k in loud) < 1e-3
    alone = model.predict(utterances[1:2], rate_hz)[0].scores  # no call: measured against itself and the prior
    assert max(abs(alone[k] - heard[0][1][k]) for k in alone) > 1e-4
    for calls in ("clip", "speaker"):
        evaluated = emostream("evaluate", "--model", str(out), "--data", str(corpus), "--calls", calls, "--json")
        assert evaluated.returncode == 0, evaluated.stderr
        figures = json.loads(evaluated.stdout)
        assert (figures["calls"], figures["samples"]) == (calls, 6)


def test_call_normalisation_refuses_gain_augmentation_and_crossval_keeps_each_folds_prior(
        corpus: Path, tmp_path: Path) -> None:
    refused = emostream("train", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--recipe",
                        "production", "--call-normalisation", "--set", "gain_min_db=-5", "--name", "x",
                        "--out", str(tmp_path / "m"))
    assert refused.returncode != 0 and "train with gain_min_db = gain_max_db = 0" in refused.stderr
    out = tmp_path / "cv"
    done = emostream("crossval", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--protocol",
                     "speaker", "--folds", "2", "--recipe", "production", "--call-normalisation", "--waveform-variants",
                     "none", "--epochs", "1", "--batch-size", "2", "--eager", "--quiet", "--workers", "1",
                     "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["call_normalisation"] is True
    from emostream.model.crossval import serve_fold

    model, result = serve_fold(out, 0, ["angry", "calm", "sad"], tmp_path / "served", FeatureSettings())
    assert model.uses_call_statistics and len(result["call_prior"]["mean"]) == 39


@pytest.fixture(scope="module")
def second_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's utterances under another corpus's label names (one with no counterpart)."""
    folder = tmp_path_factory.mktemp("second") / "emodb"
    folder.mkdir()
    audio, rate_hz = sf.read(SPEECH_WAV, dtype="float32")
    spans = json.loads((FIXTURES / "speech.json").read_text())["utterances"]
    rows = ["path,label,speaker"]
    for n, (span, label) in enumerate(zip(spans, ["boredom", "anger", "sadness"], strict=True)):
        piece = audio[int(span["start_ms"] * rate_hz / 1000) : int(span["end_ms"] * rate_hz / 1000)]
        sf.write(folder / f"e{n}.wav", piece * 0.7, rate_hz)
        rows.append(f"e{n}.wav,{label},s0")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_crossval_trains_every_fold_on_the_added_corpus_and_holds_out_only_its_own(
        corpus: Path, second_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    done = emostream("crossval", "--data", str(corpus), "--add-data", str(second_corpus),
                     "--map-labels", "anger=angry,sadness=sad", "--cache-dir", str(tmp_path / "cache"),
                     "--protocol", "speaker", "--folds", "2", "--epochs", "1", "--batch-size", "2", "--eager",
                     "--quiet", "--workers", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "emodb: 2 clips added for training; left out by label: {'boredom': 1}" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["clips"] == 6 and summary["training_only_clips"] == 2
    for fold in (0, 1):
        result = json.loads((out / f"fold-{fold:02d}.json").read_text())
        assert result["test_clips"] == 3 and result["train_clips"] == 5 and result["training_only_clips"] == 2
        assert all(not speaker.startswith("emodb:") for speaker in result["test_speakers"])
    # resumed, it finds its joined table as it left it and reads it rather than writing it again
    written = (out / "features.npz").stat().st_mtime_ns
    again = emostream("crossval", "--data", str(corpus), "--add-data", str(second_corpus),
                      "--map-labels", "anger=angry,sadness=sad", "--cache-dir", str(tmp_path / "cache"),
                      "--protocol", "speaker", "--folds", "2", "--epochs", "1", "--batch-size", "2", "--eager",
                      "--quiet", "--workers", "1", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert (out / "features.npz").stat().st_mtime_ns == written
    assert json.loads(again.stdout)["war_percent"] == summary["war_percent"]


def test_a_set_value_of_the_wrong_type_is_refused_before_any_work(tmp_path: Path) -> None:
    for command in ("train", "crossval"):
        extra = ["--name", "x"] if command == "train" else []
        done = emostream(command, "--data", str(tmp_path / "not-read"), "--set", "dropout=abc", "--set", "epochs=2",
                         *extra, "--out", str(tmp_path / "m"))
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert "--set 'dropout=abc': dropout must be a number" in done.stderr  # not the missing folder
    done = emostream("train", "--data", str(tmp_path), "--set", "epochs=1.5", "--name", "x", "--out", str(tmp_path / "m"))
    assert "--set 'epochs=1.5': epochs must be an integer" in done.stderr


def test_a_label_map_without_an_added_corpus_is_refused(corpus: Path, tmp_path: Path) -> None:
    done = emostream("train", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--map-labels",
                     "anger=angry", "--epochs", "1", "--name", "x", "--out", str(tmp_path / "m"))
    assert done.returncode != 0
    assert "--map-labels renames the labels of --add-data / --add-features corpora; none was given" in done.stderr
