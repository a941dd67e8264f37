"""`emostream asr-pretrain` / `asr-finetune`: a transcribed corpus folder in, an encoder folder and
then a servable checkpoint out; bad input is one line naming the problem."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from emostream.model.asr_corpus import load_fsdd
from emostream.workers.cli import main

REPO = Path(__file__).resolve().parents[1]
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
pytestmark = pytest.mark.skipif(not (FSDD / "labels.csv").is_file(), reason=f"FSDD not found at {FSDD}")
RUN_SMALL = ["--eager", "--quiet", "--device", "cpu", "--threads", "1"]
TINY = ["--set", "blocks=1", "--set", "d_model=32", "--set", "heads=2", "--set", "ffn_dim=64",
        "--set", "subsampling_channels=8", *RUN_SMALL]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _corpus(folder: Path, speakers: tuple[str, ...] = ("george", "lucas"), label: str = "speaker") -> Path:
    """Four FSDD clips per speaker (digits one and two, takes 0 and 1; absolute paths), the clip's
    `label` column ("speaker" or "transcript") as its 'emotion' label."""
    clips = [c for c in load_fsdd(FSDD) if c.speaker in speakers and c.transcript in ("one", "two")
             and c.path.stem.rsplit("_", 1)[1] in ("0", "1")]
    folder.mkdir()
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "transcript", "speaker", "label"])
        writer.writerows([str(c.path), c.transcript, c.speaker, getattr(c, label)] for c in clips)
    return folder


def test_pretrain_then_finetune_writes_a_servable_transcribing_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path / "corpus")
    encoder = tmp_path / "encoder"
    assert main(["asr-pretrain", "--data", str(corpus), "--out", str(encoder), "--vocabulary", "12",
                 "--epochs", "2", "--batch-size", "4", *TINY]) == 0
    pretrained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pretrained["utterances"] == 8 and pretrained["vocabulary"] == 12
    assert {p.name for p in encoder.iterdir()} == {"ctc.json", "ctc.safetensors", "tokenizer.model"}

    model = tmp_path / "model"
    assert main(["asr-finetune", "--data", str(corpus), "--pretrained", str(encoder), "--out", str(model),
                 "--name", "asr-tiny", "--epochs", "2", "--batch-size", "4", *TINY]) == 0
    tuned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tuned["architecture"] == "asr-multitask" and tuned["labels"] == ["george", "lucas"] and tuned["transcribes"]
    card = json.loads((model / "card.json").read_text())
    assert card["training"]["mode"] == "tl+mtl" and card["training"]["ctc_weight"] == 0.6
    assert card["features"]["kind"] == "logmel-utterance-mean" and not (model / "training-state.pt").exists()


def test_a_transfer_mode_without_an_encoder_is_one_error_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path / "corpus")
    assert main(["asr-finetune", "--data", str(corpus), "--mode", "tl", "--out", str(tmp_path / "m"),
                 "--name", "x", "--epochs", "1", *TINY]) == 2
    assert "error: fine-tuning mode tl: needs a pre-trained CTC encoder" in capsys.readouterr().err


def test_a_corpus_whose_audio_is_missing_names_the_first_missing_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "labels.csv").write_text("path,transcript,speaker\nrecordings/1_x_0.flac,one,x\n"
                                       "recordings/2_x_0.flac,two,x\n")
    assert main(["asr-pretrain", "--data", str(corpus), "--out", str(tmp_path / "e"), "--epochs", "1", *TINY]) == 2
    error = capsys.readouterr().err
    assert "none of the 2 clips could be read" in error and "1_x_0.flac" in error


def test_speaker_folds_hold_out_each_speaker_once_and_report_cer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path / "corpus", ("george", "jackson", "lucas"), label="transcript")  # 12 clips
    extra = _corpus(tmp_path / "extra")
    encoder = tmp_path / "encoder"
    assert main(["asr-pretrain", "--data", str(corpus), "--data", str(extra), "--exclude-speakers", "lucas",
                 "--out", str(encoder), "--vocabulary", "8", "--epochs", "1", "--batch-size", "4", *TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["utterances"] == 8 + 4  # lucas's 8 left out
    assert "without speakers lucas" in json.loads((encoder / "ctc.json").read_text())["training"]["data"]

    out = tmp_path / "cv"
    arguments = ["asr-crossval", "--data", str(corpus), "--pretrained", str(encoder), "--folds", "3",
                 "--out", str(out), "--epochs", "1", "--batch-size", "4", *TINY]
    assert main(arguments) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["folds_run"] == [0, 1, 2] and summary["mode"] == "tl+mtl" and summary["labels"] == ["one", "two"]
    folds = [json.loads((out / f"fold-{n:02d}.json").read_text()) for n in range(3)]
    assert sorted(s for fold in folds for s in fold["test_speakers"]) == ["george", "jackson", "lucas"]
    assert all(fold["test_clips"] == 4 and fold["train_clips"] == 8 for fold in folds)
    assert all(0.0 <= fold["held_out_transcripts"]["cer"] for fold in folds)  # tl+mtl transcribes
    assert summary["cer_per_fold"] == [fold["held_out_transcripts"]["cer"] for fold in folds]
    for fold in folds:  # the held-out logits and labels, for calibration fitted on the other folds
        assert np.asarray(fold["test_logits"]).shape == (4, 2) and len(fold["test_label_ids"]) == 4
        predicted = np.asarray(fold["test_logits"]).argmax(axis=1)
        assert fold["war"] == pytest.approx(float(np.mean(predicted == np.asarray(fold["test_label_ids"]))))
    report = subprocess.run([sys.executable, str(REPO / "benchmarks" / "calibration_report.py"), "--cv-dir", str(out)],
                            capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["folds"] == 3 and json.loads(report.stdout)["temperature"] > 0
    baseline_arguments = ["asr-crossval", "--data", str(corpus), "--mode", "baseline", "--folds", "3", "--only-folds",
                          "1", "--out", str(tmp_path / "base"), "--epochs", "1", "--batch-size", "4", "--set",
                          "channels=8", "--set", "hidden=8", "--set", "heads=2", *RUN_SMALL]
    assert main(baseline_arguments) == 0
    baseline = json.loads(capsys.readouterr().out)
    assert baseline["folds_run"] == [1] and baseline["cer_per_fold"] == [None]  # no CTC head
    (out / "fold-00.json").write_text(json.dumps({**folds[0], "war": 0.123}))
    assert main(arguments) == 0  # finished folds are kept, not retrained
    assert json.loads(capsys.readouterr().out)["war_percent_per_fold"][0] == 12.3
