"""Transcribed speech corpora for the ASR-multitask model: what CTC pre-training and multitask
fine-tuning read (audio path, exact transcript, speaker, and the emotion label where there is one).

- `labels.csv` folders with a `transcript` column (as in ../shared/data: FSDD's digit words,
  RAVDESS's two sentences with their emotion labels): `load_transcribed_csv`, `load_fsdd`.
- LibriSpeech's release layout (`<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac` beside
  `<speaker>-<chapter>.trans.txt`): `load_librispeech`.
- Synthetic speech made with espeak-ng: model/synthetic_speech.py writes a `labels.csv` folder.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

AUDIO_SUFFIXES = (".flac", ".wav")
LAYOUTS = ("auto", "csv", "librispeech")


@dataclass(frozen=True)
class TranscribedClip:
    """One utterance of a transcribed corpus."""

    path: Path  # audio file (any rate; resampled to 16 kHz for features)
    transcript: str  # what is said, as the corpus writes it (normalised by model/tokenizer.py)
    speaker: str  # "" when the corpus does not say
    label: str = ""  # emotion label; "" in ASR-only corpora (FSDD's digit label is not an emotion)


class AsrCorpusError(ValueError):
    """A transcribed corpus folder, its label file or a transcript file is missing or malformed."""


def load_transcribed_csv(folder: Path, labels_csv: Path | None = None, *, emotion_column: str | None = "label"
                         ) -> list[TranscribedClip]:
    """A CSV with `path` and `transcript` columns (optional `speaker`, and `emotion_column` for the
    emotion label; None reads no label). Paths are relative to `folder`."""
    csv_path = labels_csv or folder / "labels.csv"
    if not csv_path.is_file():
        raise AsrCorpusError(f"{csv_path}: no label file; expected a CSV with columns path,transcript[,speaker]")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        required = {"path", "transcript"} | ({emotion_column} if emotion_column else set())
        missing = required - columns
        if missing:
            raise AsrCorpusError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        clips = []
        for line, row in enumerate(reader, start=2):
            transcript = (row["transcript"] or "").strip()
            if not transcript:
                raise AsrCorpusError(f"{csv_path}, line {line}: empty transcript for {row['path']}")
            clips.append(TranscribedClip(path=folder / row["path"], transcript=transcript,
                                         speaker=row.get("speaker", "") or "",
                                         label=(row[emotion_column] or "").strip() if emotion_column else ""))
    if not clips:
        raise AsrCorpusError(f"{csv_path}: no rows")
    return clips


def load_fsdd(folder: Path) -> list[TranscribedClip]:
    """The Free Spoken Digit Dataset as converted in ../shared/data/fsdd: transcripts are the digit
    words; its `label` column is the digit, not an emotion, so no label is read."""
    return load_transcribed_csv(folder, emotion_column=None)


def load_librispeech(folder: Path) -> list[TranscribedClip]:
    """LibriSpeech's layout under `folder` (a split such as train-clean-100, or a folder of splits):
    every `*.trans.txt` line `<utterance id> <TRANSCRIPT>` names `<utterance id>.flac` beside it."""
    clips: list[TranscribedClip] = []
    for transcripts in sorted(folder.rglob("*.trans.txt")):
        for number, line in enumerate(transcripts.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utterance, _, transcript = line.strip().partition(" ")
            if not transcript.strip():
                raise AsrCorpusError(f"{transcripts}, line {number}: no transcript after {utterance!r}")
            audio = next((transcripts.parent / (utterance + suffix) for suffix in AUDIO_SUFFIXES
                          if (transcripts.parent / (utterance + suffix)).is_file()), None)
            if audio is None:
                raise AsrCorpusError(f"{transcripts}, line {number}: no audio {utterance}.flac beside it")
            clips.append(TranscribedClip(path=audio, transcript=transcript.strip(),
                                         speaker=utterance.split("-", 1)[0]))
    if not clips:
        raise AsrCorpusError(f"{folder}: no <speaker>/<chapter>/*.trans.txt found (LibriSpeech layout)")
    return clips


def load_transcribed_corpus(folder: Path, layout: str = "auto", *, emotion_column: str | None = None
                            ) -> list[TranscribedClip]:
    """Any supported layout; `auto` picks labels.csv, then LibriSpeech's `*.trans.txt`.

    `emotion_column` names the CSV column with emotion labels (multitask fine-tuning: `label`);
    None for ASR-only corpora."""
    if layout not in LAYOUTS:
        raise AsrCorpusError(f"layout {layout!r} unknown; use {', '.join(LAYOUTS)}")
    if layout == "csv" or (layout == "auto" and (folder / "labels.csv").is_file()):
        return load_transcribed_csv(folder, emotion_column=emotion_column)
    return load_librispeech(folder)
