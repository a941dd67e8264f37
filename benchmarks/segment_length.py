"""Accuracy against segment length, on clips a cross-validation fold's model never saw.

Streaming segments last 0.3-10 s, the network takes 4.535 s. For each held-out clip this runs the
same webrtcvad end-pointer as the pipeline, then scores the speech cut to the first 0.5 / 1 / 2 / 3 s,
the whole VAD segment, the whole clip (the thesis's input), and 2- and 3-clip concatenations of
same-label clips (7-11 s, served as averaged overlapping windows).

    python benchmarks/segment_length.py --fold-dir .devdata/cv-ravdess-stratified --fold 0 \
        --features .devdata/ravdess.npz
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from emostream.model.analysis import utterances
from emostream.model.audio_io import read_audio
from emostream.model.crossval import serve_fold
from emostream.model.feature_table import FeatureTable
from emostream.model.features import resample
from emostream.model.metrics import weighted_average_recall
from emostream.model.vad import VAD_SAMPLE_RATE_HZ, EndpointerParams
from emostream.schemas.model_card import FeatureSettings

CROPS_S = (0.5, 1.0, 2.0, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold-dir", type=Path, required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--features", type=Path, required=True, help="the feature table the folds were made from")
    parser.add_argument("--onset-lead-in-s", type=float, default=None,
                        help="serve with onset normalisation (the shipped card's features.onset_lead_in_s)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    table = FeatureTable.load(args.features)
    fold = json.loads((args.fold_dir / f"fold-{args.fold:02d}.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        model, _ = serve_fold(args.fold_dir, args.fold, table.labels, Path(scratch) / "model",
                              FeatureSettings(onset_lead_in_s=args.onset_lead_in_s))
        truth: list[int] = []
        inputs: dict[str, list[np.ndarray]] = {name: [] for name in
                                               ["whole clip", "VAD segment", *(f"first {c} s" for c in CROPS_S)]}
        segments_by_label: dict[int, list[np.ndarray]] = {}
        for index in fold["test_indices"]:
            audio, rate_hz = read_audio(Path(table.paths[index]))
            audio_16k = resample(audio, rate_hz, VAD_SAMPLE_RATE_HZ)
            found = utterances(audio_16k, EndpointerParams())
            speech = max(found, key=lambda u: len(u[2]))[2] if found else audio_16k
            truth.append(int(table.label_ids[index]))
            inputs["whole clip"].append(audio_16k)
            inputs["VAD segment"].append(speech)
            for crop_s in CROPS_S:
                inputs[f"first {crop_s} s"].append(speech[: int(crop_s * VAD_SAMPLE_RATE_HZ)])
            segments_by_label.setdefault(truth[-1], []).append(speech)
        results = {}
        for name, waveforms in inputs.items():
            predicted = [model.labels.index(p.label) for p in model.predict(waveforms, VAD_SAMPLE_RATE_HZ)]
            lengths = [len(w) / VAD_SAMPLE_RATE_HZ for w in waveforms]
            results[name] = {"war_percent": round(100 * weighted_average_recall(truth, predicted), 2),
                             "clips": len(truth), "mean_length_s": round(float(np.mean(lengths)), 2)}
        for joined in (2, 3):
            long_truth, long_audio = [], []
            for label, segments in segments_by_label.items():
                for start in range(0, len(segments) - joined + 1, joined):
                    long_truth.append(label)
                    long_audio.append(np.concatenate(segments[start : start + joined]))
            predicted = [model.labels.index(p.label) for p in model.predict(long_audio, VAD_SAMPLE_RATE_HZ)]
            results[f"{joined} VAD segments joined"] = {
                "war_percent": round(100 * weighted_average_recall(long_truth, predicted), 2), "clips": len(long_truth),
                "mean_length_s": round(float(np.mean([len(a) / VAD_SAMPLE_RATE_HZ for a in long_audio])), 2)}
    print(json.dumps({"fold": args.fold, "fold_dir": str(args.fold_dir), "onset_lead_in_s": args.onset_lead_in_s,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
