"""Accuracy as the stream sees it: calls composed from each fold's held-out speakers, cut by the
pipeline's own end-pointer, against the whole-clip accuracy of the same fold model.

For every held-out speaker of a fold, the clips are shuffled (seeded), trimmed of their leading and
trailing silence, and joined with pauses of 0.6-1.5 s of a noise floor 40 dB below the speaker's
median speech level (RAVDESS clips are quiet, about -47 dBFS; a fixed -60 dBFS floor made webrtcvad
hear the pauses as speech); a truth list keeps
each utterance's start, end and label. `emostream analyze`'s path (webrtcvad end-pointer, then the
served model on each segment) runs on the call at 16 kHz and, with --telephony, on the same call as
8 kHz G.711 mu-law. Segments are matched to utterances one to one: an utterance is found when exactly
one segment overlaps it and that segment overlaps no other utterance.

    python benchmarks/streamed_calls.py --cv-dir .devdata/cv-ravdess-speaker-production \
        --features .devdata/ravdess.npz --telephony [--write-calls DIR]
"""

import argparse
import json
import tempfile
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from emostream.model.analysis import analyze_waveform
from emostream.model.audio_io import read_audio
from emostream.model.call_statistics import CallStatistics
from emostream.model.crossval import serve_fold
from emostream.model.feature_table import FeatureTable
from emostream.model.features import resample
from emostream.model.g711 import mulaw_decode, mulaw_encode
from emostream.model.vad import VAD_SAMPLE_RATE_HZ, EndpointerParams
from emostream.schemas.model_card import FeatureSettings

PAUSE_S = (0.6, 1.5)
NOISE_BELOW_SPEECH_DB = 40.0
TRIM_TOP_DB = 40.0  # RAVDESS clips have ~1 s of room tone around the sentence


def telephony(audio_16k: np.ndarray) -> np.ndarray:
    """The call as an 8 kHz mu-law gateway would send it, decoded back to float at 8 kHz."""
    narrow = resample(audio_16k, VAD_SAMPLE_RATE_HZ, 8_000)
    codes = mulaw_encode(np.clip(np.round(narrow * 32767), -32768, 32767).astype(np.int16))
    return mulaw_decode(codes).astype(np.float32) / 32768.0


def compose_call(clips: list[np.ndarray], labels: list[str], generator: np.random.Generator,
                 speech_level_dbfs: float | None = None) -> tuple[np.ndarray, list[dict[str, object]]]:
    speeches = [librosa.effects.trim(audio, top_db=TRIM_TOP_DB)[0] for audio in clips]
    speech_rms = float(np.median([np.sqrt(np.mean(np.square(s))) for s in speeches]))
    if speech_level_dbfs is not None:  # one gain for the whole call, as a gateway's AGC would set it
        speeches = [s * (10 ** (speech_level_dbfs / 20) / speech_rms) for s in speeches]
        speech_rms = 10 ** (speech_level_dbfs / 20)
    noise_rms = speech_rms * 10 ** (-NOISE_BELOW_SPEECH_DB / 20)
    pieces, truth, cursor = [], [], 0
    for speech, label in zip(speeches, labels, strict=True):
        pause = generator.uniform(*PAUSE_S)
        noise = generator.standard_normal(int(pause * VAD_SAMPLE_RATE_HZ)) * noise_rms
        pieces += [noise.astype(np.float32), speech]
        start = cursor + len(noise)
        truth.append({"start_s": start / VAD_SAMPLE_RATE_HZ, "end_s": (start + len(speech)) / VAD_SAMPLE_RATE_HZ,
                      "label": label})
        cursor = start + len(speech)
    tail = generator.standard_normal(VAD_SAMPLE_RATE_HZ) * noise_rms
    return np.concatenate([*pieces, tail.astype(np.float32)]), truth


def match(truth: list[dict[str, object]], segments: list) -> dict[str, object]:
    """One-to-one matching by overlap; returns found utterances with their segment, and the leftovers."""
    def overlaps(segment, utterance) -> bool:
        return segment.start_s < utterance["end_s"] and segment.end_s > utterance["start_s"]

    found, claimed = [], set()
    for u, utterance in enumerate(truth):
        hits = [s for s, segment in enumerate(segments) if overlaps(segment, utterance)]
        if len(hits) == 1 and sum(overlaps(segments[hits[0]], other) for other in truth) == 1:
            found.append((u, hits[0]))
            claimed.add(hits[0])
    return {"found": found, "unmatched_segments": len(segments) - len(claimed)}


def evaluate_call(model, call: np.ndarray, rate_hz: int, truth: list[dict[str, object]]) -> dict[str, object]:
    results = analyze_waveform(call, rate_hz, model, EndpointerParams())
    matched = match(truth, results)
    starts = [abs(results[s].start_s - truth[u]["start_s"]) * 1000 for u, s in matched["found"]]
    ends = [abs(results[s].end_s - truth[u]["end_s"]) * 1000 for u, s in matched["found"]]
    right = [results[s].label == truth[u]["label"] for u, s in matched["found"]]
    return {"utterances": len(truth), "segments": len(results), "found": len(matched["found"]),
            "unmatched_segments": matched["unmatched_segments"], "start_error_ms": starts, "end_error_ms": ends,
            "right": right}


def summarise(parts: list[dict[str, object]]) -> dict[str, object]:
    starts = np.concatenate([p["start_error_ms"] for p in parts]) if parts else np.array([])
    ends = np.concatenate([p["end_error_ms"] for p in parts]) if parts else np.array([])
    right = np.concatenate([p["right"] for p in parts]).astype(bool)
    utterances = sum(p["utterances"] for p in parts)
    return {"utterances": utterances, "found": int(sum(p["found"] for p in parts)),
            "found_percent": round(100 * sum(p["found"] for p in parts) / max(1, utterances), 2),
            "unmatched_segments": int(sum(p["unmatched_segments"] for p in parts)),
            "start_error_ms_median_p90": [round(float(np.median(starts)), 1), round(float(np.percentile(starts, 90)), 1)],
            "end_error_ms_median_p90": [round(float(np.median(ends)), 1), round(float(np.percentile(ends, 90)), 1)],
            "accuracy_on_found_percent": round(100 * float(right.mean()), 2) if right.size else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-dir", type=Path, required=True, help="a speaker-independent crossval folder")
    parser.add_argument("--features", type=Path, required=True, help="the feature table the folds were made from")
    parser.add_argument("--folds", type=int, nargs="*", help="default: every finished fold")
    parser.add_argument("--telephony", action="store_true", help="also the same calls as 8 kHz mu-law")
    parser.add_argument("--onset-lead-in-s", type=float, default=None,
                        help="serve segments with onset normalisation (a card's features.onset_lead_in_s)")
    parser.add_argument("--speech-level-dbfs", type=float, default=None,
                        help="scale each call so its median speech RMS is this level (RAVDESS: about -47 dBFS; "
                        "telephone calls sit near -26)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-calls", type=Path, help="keep each call's WAV and truth JSON here")
    parser.add_argument("--out", type=Path, help="also write the whole report (per fold and pooled) here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    table = FeatureTable.load(args.features)
    folds = args.folds if args.folds is not None else sorted(
        int(p.stem.split("-")[1]) for p in args.cv_dir.glob("fold-*.json"))
    generator = np.random.default_rng(args.seed)
    report: dict[str, object] = {"cv_dir": str(args.cv_dir), "seed": args.seed, "pause_s": PAUSE_S,
                                 "onset_lead_in_s": args.onset_lead_in_s, "speech_level_dbfs": args.speech_level_dbfs,
                                 "noise_below_speech_db": NOISE_BELOW_SPEECH_DB, "folds": {}}
    pooled: dict[str, list] = {"16k": [], "mulaw8k": []}
    whole_right: list[bool] = []
    with tempfile.TemporaryDirectory() as scratch:
        for fold in folds:
            model, result = serve_fold(args.cv_dir, fold, table.labels, Path(scratch) / f"fold-{fold}",
                                       FeatureSettings(onset_lead_in_s=args.onset_lead_in_s))
            by_speaker: dict[str, list[int]] = {}
            for index in result["test_indices"]:
                by_speaker.setdefault(table.speakers[index], []).append(index)
            fold_parts: dict[str, list] = {"16k": [], "mulaw8k": []}
            fold_whole: list[bool] = []
            for speaker, indices in sorted(by_speaker.items()):
                order = generator.permutation(indices)
                clips = [resample(*read_audio(Path(table.paths[i])), VAD_SAMPLE_RATE_HZ) for i in order]
                labels = [table.labels[table.label_ids[i]] for i in order]
                whole_call = [CallStatistics()] * len(clips)  # the clips in the call's order, as one call
                fold_whole += [p.label == label for p, label in
                               zip(model.predict(clips, VAD_SAMPLE_RATE_HZ, whole_call), labels, strict=True)]
                call, truth = compose_call(clips, labels, generator, args.speech_level_dbfs)
                if args.write_calls:
                    args.write_calls.mkdir(parents=True, exist_ok=True)
                    sf.write(args.write_calls / f"fold{fold}-speaker{speaker}.wav", call, VAD_SAMPLE_RATE_HZ)
                    (args.write_calls / f"fold{fold}-speaker{speaker}.json").write_text(json.dumps(truth, indent=1))
                fold_parts["16k"].append(evaluate_call(model, call, VAD_SAMPLE_RATE_HZ, truth))
                if args.telephony:
                    fold_parts["mulaw8k"].append(evaluate_call(model, telephony(call), 8_000, truth))
            whole_right += fold_whole
            report["folds"][fold] = {"whole_clip_accuracy_percent": round(100 * float(np.mean(fold_whole)), 2),
                                     **{name: summarise(parts) for name, parts in fold_parts.items() if parts}}
            for name, parts in fold_parts.items():
                pooled[name] += parts
            print(json.dumps({"fold": fold, **report["folds"][fold]}), flush=True)
    report["pooled"] = {"whole_clip_accuracy_percent": round(100 * float(np.mean(whole_right)), 2),
                        **{name: summarise(parts) for name, parts in pooled.items() if parts}}
    print(json.dumps({k: v for k, v in report.items() if k != "folds"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
