"""Labelled speech corpora as tables of (path, label, speaker): the layouts users have on disk.

- `labels.csv` folders (as in ../shared/data: RAVDESS, EMO-DB, FSDD): columns `path,label`, optional
  `speaker`; paths relative to the folder.
- IEMOCAP release layout (Session1..5/dialog/EmoEvaluation/*.txt + sentences/wav): 4 classes, excited
  merged into happy, as the PLB thesis and most of the literature.
- CREMA-D layout (AudioWAV/1001_DFA_ANG_XX.wav): 6 classes from the file name.
"""

import csv
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    label: str
    speaker: str  # "" when the corpus does not say


class DatasetError(ValueError):
    """A corpus folder or its label file is missing or malformed."""


def load_labels_csv(folder: Path, labels_csv: Path | None = None) -> list[LabelledClip]:
    """Read `labels.csv` (or the given CSV) with at least `path` and `label` columns."""
    csv_path = labels_csv or folder / "labels.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no label file; expected a CSV with columns path,label[,speaker]")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        clips = [
            LabelledClip(path=folder / row["path"], label=row["label"].strip(), speaker=row.get("speaker", "") or "")
            for row in reader
        ]
    if not clips:
        raise DatasetError(f"{csv_path}: no rows")
    return clips


IEMOCAP_LABELS = {"neu": "neutral", "ang": "angry", "sad": "sad", "hap": "happy", "exc": "happy"}
_IEMOCAP_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(?P<turn>Ses\w+)\t(?P<code>\w+)\t")


def load_iemocap(folder: Path) -> list[LabelledClip]:
    """IEMOCAP's released layout; speaker = session + gender of the turn (e.g. Ses01F)."""
    clips: list[LabelledClip] = []
    for evaluation in sorted(folder.glob("Session*/dialog/EmoEvaluation/*.txt")):
        session_dir = evaluation.parents[2]
        for line in evaluation.read_text(encoding="utf-8", errors="replace").splitlines():
            match = _IEMOCAP_LINE.match(line)
            if not match or match["code"] not in IEMOCAP_LABELS:
                continue
            turn = match["turn"]
            dialog = turn.rsplit("_", 1)[0]
            wav = session_dir / "sentences" / "wav" / dialog / f"{turn}.wav"
            speaker = turn[:5] + turn.rsplit("_", 1)[1][0]
            clips.append(LabelledClip(path=wav, label=IEMOCAP_LABELS[match["code"]], speaker=speaker))
    if not clips:
        raise DatasetError(f"{folder}: no Session*/dialog/EmoEvaluation/*.txt found (IEMOCAP layout)")
    return clips


CREMA_D_LABELS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}


def load_crema_d(folder: Path) -> list[LabelledClip]:
    """CREMA-D's AudioWAV folder; speaker = actor id."""
    audio_dir = folder / "AudioWAV" if (folder / "AudioWAV").is_dir() else folder
    clips = []
    for wav in sorted(audio_dir.glob("*.wav")):
        parts = wav.stem.split("_")
        if len(parts) >= 3 and parts[2] in CREMA_D_LABELS:
            clips.append(LabelledClip(path=wav, label=CREMA_D_LABELS[parts[2]], speaker=parts[0]))
    if not clips:
        raise DatasetError(f"{folder}: no CREMA-D files like AudioWAV/1001_DFA_ANG_XX.wav")
    return clips


def load_corpus(folder: Path, labels_csv: Path | None = None, layout: str = "auto") -> list[LabelledClip]:
    """Load any supported layout; `auto` picks labels.csv, then IEMOCAP, then CREMA-D."""
    if layout == "csv" or labels_csv is not None or (layout == "auto" and (folder / "labels.csv").is_file()):
        return load_labels_csv(folder, labels_csv)
    if layout == "iemocap" or (layout == "auto" and any(folder.glob("Session*/dialog"))):
        return load_iemocap(folder)
    if layout in ("auto", "crema-d"):
        return load_crema_d(folder)
    raise DatasetError(f"layout {layout!r} unknown; use auto, csv, iemocap or crema-d")
