"""Accuracy against the level a call arrives at: fold models on their held-out speakers' clips,
each clip played as recorded and then scaled so its speech sits at each of `--levels-dbfs`.

RAVDESS speech sits near -38 dBFS (RMS of the clip trimmed of its room tone); telephone gateways
deliver speech near -26 dBFS and loud callers or hot microphones near -16. A model that learnt the
corpus's absolute loudness as an emotion cue labels every loud call "angry"; this prints, per level,
WAR, UAR, the most frequent predicted label and its share, and the share of labels that differ from
the clip as recorded. Clips are served the way the pipeline serves a segment (the fold network as a
checkpoint, `PLBEmotionModel`, the card's feature settings), at 16 kHz; samples past full scale are
clipped, as a real gateway would.

    python benchmarks/gain_robustness.py --cv-dir .devdata/cv-spk-prod-norm-bank \
        --features .devdata/ravdess-bank.npz --folds 0 --onset-lead-in-s 1.0
"""

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import torch
from emostream.model.audio_io import read_audio
from emostream.model.crossval import serve_fold
from emostream.model.feature_table import FeatureTable
from emostream.model.features import resample
from emostream.model.metrics import score
from emostream.model.vad import VAD_SAMPLE_RATE_HZ

TRIM_TOP_DB = 40.0  # what counts as the clip's speech for its level (streamed_calls.py's too)
DEFAULT_LEVELS_DBFS = (-48.0, -38.0, -26.0, -16.0)


def speech_level_dbfs(audio: np.ndarray) -> float:
    speech, _ = librosa.effects.trim(audio, top_db=TRIM_TOP_DB)
    return float(20 * np.log10(np.sqrt(np.mean(np.square(speech))) + 1e-12))


def at_level(audio: np.ndarray, level_dbfs: float) -> np.ndarray:
    gain = 10 ** ((level_dbfs - speech_level_dbfs(audio)) / 20)
    return np.clip(audio * gain, -1.0, 1.0).astype(np.float32)


def level_row(truth: list[str], predicted: list[str], as_recorded: list[str], labels: list[str]) -> dict[str, object]:
    scores = score([labels.index(t) for t in truth], [labels.index(p) for p in predicted], labels)
    top_label, top_count = Counter(predicted).most_common(1)[0]
    return {"war_percent": round(100 * scores["war"], 2), "uar_percent": round(100 * scores["uar"], 2),
            "top_label": top_label, "top_label_share_percent": round(100 * top_count / len(predicted), 1),
            "changed_from_recorded_percent": round(100 * float(np.mean(
                [a != b for a, b in zip(predicted, as_recorded, strict=True)])), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-dir", type=Path, required=True, help="a speaker-independent crossval folder")
    parser.add_argument("--features", type=Path, required=True, help="the feature table the folds were made from")
    parser.add_argument("--folds", type=int, nargs="*", help="default: every finished fold")
    parser.add_argument("--levels-dbfs", type=lambda text: [float(v) for v in text.split(",")],
                        default=list(DEFAULT_LEVELS_DBFS), help="speech levels to play every clip at")
    parser.add_argument("--onset-lead-in-s", type=float, default=None,
                        help="serve with onset normalisation (a card's features.onset_lead_in_s)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    table = FeatureTable.load(args.features)
    settings = table.settings.model_copy(update={"onset_lead_in_s": args.onset_lead_in_s})
    folds = args.folds if args.folds is not None else sorted(
        int(p.stem.split("-")[1]) for p in args.cv_dir.glob("fold-*.json"))
    truth: list[str] = []
    predicted: dict[str, list[str]] = {"as recorded": [], **{f"{level:g} dBFS": [] for level in args.levels_dbfs}}
    recorded_levels: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        for fold in folds:
            model, result = serve_fold(args.cv_dir, fold, table.labels, Path(scratch) / f"fold-{fold}", settings)
            clips = [resample(*read_audio(Path(table.paths[i])), VAD_SAMPLE_RATE_HZ) for i in result["test_indices"]]
            truth += [table.labels[table.label_ids[i]] for i in result["test_indices"]]
            recorded_levels += [speech_level_dbfs(clip) for clip in clips]
            predicted["as recorded"] += [p.label for p in model.predict(clips, VAD_SAMPLE_RATE_HZ)]
            for level in args.levels_dbfs:
                scaled = [at_level(clip, level) for clip in clips]
                predicted[f"{level:g} dBFS"] += [p.label for p in model.predict(scaled, VAD_SAMPLE_RATE_HZ)]
    report = {"cv_dir": str(args.cv_dir), "folds": folds, "clips": len(truth),
              "onset_lead_in_s": args.onset_lead_in_s,
              "recorded_speech_level_dbfs_median_p10_p90": [round(float(np.percentile(recorded_levels, q)), 1)
                                                            for q in (50, 10, 90)],
              "levels": {name: level_row(truth, labels, predicted["as recorded"], table.labels)
                         for name, labels in predicted.items()}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
