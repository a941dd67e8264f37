"""Transcribed corpora of the ASR-multitask model: FSDD and RAVDESS as converted in ../shared/data,
LibriSpeech's layout (built in tmp_path from FSDD audio), and espeak-ng's synthetic speech."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from emostream.model.asr_corpus import (
    AsrCorpusError,
    load_fsdd,
    load_librispeech,
    load_transcribed_corpus,
)
from emostream.model.synthetic_speech import (
    PROSE_WORDS_RANGE,
    SYNTHETIC_SAMPLE_RATE_HZ,
    EspeakNotInstalledError,
    espeak_binary,
    random_sentences,
    stdlib_prose_sentences,
    synthesise_corpus,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FSDD = SHARED_DATA / "fsdd"
RAVDESS = SHARED_DATA / "ravdess"
needs_fsdd = pytest.mark.skipif(not (FSDD / "labels.csv").is_file(), reason=f"FSDD not found at {FSDD}")
DIGIT_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


@needs_fsdd
def test_fsdd_has_digit_word_transcripts_and_no_emotion_labels() -> None:
    clips = load_fsdd(FSDD)
    assert len(clips) == 3000 and {c.transcript for c in clips} == DIGIT_WORDS
    assert {c.label for c in clips} == {""} and len({c.speaker for c in clips}) == 6
    assert all(c.path.is_file() for c in clips[:20])


@pytest.mark.skipif(not (RAVDESS / "labels.csv").is_file(), reason=f"RAVDESS not found at {RAVDESS}")
def test_ravdess_has_transcripts_and_emotion_labels_for_fine_tuning() -> None:
    clips = load_transcribed_corpus(RAVDESS, emotion_column="label")
    assert {c.transcript for c in clips} == {"Kids are talking by the door", "Dogs are sitting by the door"}
    assert len({c.label for c in clips}) == 8


@needs_fsdd
def test_librispeech_layout_is_read_from_its_transcript_files(tmp_path: Path) -> None:
    digits = {c.transcript: c for c in load_fsdd(FSDD) if c.speaker == "george"}
    chapter = tmp_path / "train-clean-100" / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for n, word in enumerate(["three", "seven", "one"]):
        shutil.copy(digits[word].path, chapter / f"19-198-{n:04d}.flac")
        lines.append(f"19-198-{n:04d} {word.upper()} {word.upper()}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    clips = load_transcribed_corpus(tmp_path)  # auto: no labels.csv, so LibriSpeech's layout
    assert [c.transcript for c in clips] == ["THREE THREE", "SEVEN SEVEN", "ONE ONE"]
    assert {c.speaker for c in clips} == {"19"} and all(c.path.is_file() for c in clips)
    (chapter / "19-198-0001.flac").unlink()
    with pytest.raises(AsrCorpusError, match=r"19-198.trans.txt, line 2: no audio 19-198-0001.flac"):
        load_librispeech(tmp_path)
    with pytest.raises(AsrCorpusError, match="LibriSpeech layout"):
        load_librispeech(tmp_path / "train-clean-100" / "19" / "nothing-here")


def test_a_csv_without_transcripts_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label\na.wav,angry\n")
    with pytest.raises(AsrCorpusError, match=r"labels.csv: missing column\(s\) transcript"):
        load_transcribed_corpus(tmp_path)
    (tmp_path / "labels.csv").write_text("path,transcript\na.wav,\n")
    with pytest.raises(AsrCorpusError, match=r"labels.csv, line 2: empty transcript for a.wav"):
        load_transcribed_corpus(tmp_path)


@pytest.mark.parametrize("text", ["prose", "templates"])
def test_random_sentences_are_varied_and_reproducible(text: str) -> None:
    sentences = random_sentences(50, seed=3, text=text)
    assert sentences == random_sentences(50, seed=3, text=text) and sentences != random_sentences(50, seed=4, text=text)
    assert len(set(sentences)) >= 45 and all(s == s.lower() and s.replace(" ", "").isalpha() for s in sentences)


def test_prose_sentences_cover_a_large_vocabulary_without_repeats_until_used_up() -> None:
    prose = stdlib_prose_sentences()
    assert len(prose) > 2_000 and len({word for sentence in prose for word in sentence.split()}) > 2_000
    assert all(PROSE_WORDS_RANGE[0] <= len(sentence.split()) <= PROSE_WORDS_RANGE[1] for sentence in prose)
    drawn = random_sentences(len(prose) + 10, seed=0)
    assert sorted(drawn[: len(prose)]) == sorted(prose)  # every sentence once before any repeat
    assert set(drawn[len(prose):]) <= set(prose)
    with pytest.raises(ValueError, match="text source 'poems' unknown"):
        random_sentences(1, text="poems")


@pytest.mark.skipif(espeak_binary() is None, reason="espeak-ng not installed (apt-get install espeak-ng; "
                    ".ci/run does when it can)")
def test_synthetic_corpus_has_varied_voices_and_exact_transcripts(tmp_path: Path) -> None:
    labels = synthesise_corpus(tmp_path / "synthetic", utterances=6, seed=1)
    clips = load_transcribed_corpus(labels.parent)
    assert [c.transcript for c in clips] == random_sentences(6, seed=1)
    assert len({c.speaker for c in clips}) >= 3  # voice + variant drawn per sentence
    durations_s = []
    for clip in clips:
        audio, rate_hz = sf.read(str(clip.path), dtype="float32")
        assert rate_hz == SYNTHETIC_SAMPLE_RATE_HZ and np.abs(audio).max() > 0.05
        durations_s.append(len(audio) / rate_hz)
    assert all(0.8 < d < 15.0 for d in durations_s)  # a sentence of 4-20 words


def test_synthesis_without_espeak_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on this PATH
    with pytest.raises(EspeakNotInstalledError, match="apt-get install espeak-ng"):
        synthesise_corpus(tmp_path / "out", utterances=1)
