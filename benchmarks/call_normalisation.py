"""Per-speaker (per-call) standardisation of the MFCC input, for the recipe ablation: does removing a
speaker's own average voice help on speakers never seen, and how many utterances of a call does it need?

`table`: a feature table with every coefficient standardised per speaker (or per utterance). Per
speaker, each coefficient's mean and standard deviation are taken over that speaker's speech frames
(frames above the -80 dB floor that padding and digital silence sit at), one waveform variant at a time
(a call's own channel gives its own statistics: a telephone call is normalised by telephone audio),
and every frame of the speaker's clips is standardised with them; padding frames keep their place far
below speech. `--per utterance`: the same with each clip's own frames; `--per speaker-level` moves only
MFCC 0 (the level) by the speaker's mean, what a call's running speech level alone could give back.
Train on the table without gain augmentation: a constant gain is exactly what the standardisation
removes (and the table's shift per dB no longer holds).

`utterances`: fold models trained on such a table, scored on their held-out speakers' clips with each
clip standardised by statistics of only k of its speaker's clips (itself and k - 1 others drawn at
random), as a call's first k utterances would give them, through the served code
(model/call_statistics.py). `--prior-frames N` blends those with the training speakers' pooled
statistics counted as N frames of the call, at the call's own level (the prior dominates the first
utterance and fades as the call goes on); `--gain-db G` plays every held-out clip G dB louder (a
constant shift of its MFCC, model/features.input_shift_per_db), as a telephone gateway's level would.

    python benchmarks/call_normalisation.py table --features .devdata/ravdess-bank.npz --per speaker \
        --out .devdata/ravdess-bank-spknorm.npz
    emostream crossval --features .devdata/ravdess-bank-spknorm.npz --protocol speaker --folds 5 \
        --recipe production --set gain_min_db=0 --set gain_max_db=0 --only-folds 0 --workers 1 \
        --out .devdata/cv-spk-spknorm
    python benchmarks/call_normalisation.py utterances --cv-dir .devdata/cv-spk-spknorm \
        --features .devdata/ravdess-bank.npz --folds 0 --utterances 1,2,3,5,10 --prior-frames 400 --gain-db 12
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from emostream.model.call_statistics import (
    CallPrior,
    CallStatistics,
    per_speaker_statistics,
    standardise_per_speaker,
)


def level_per_speaker(bank: np.ndarray, groups: list[str]) -> np.ndarray:
    """MFCC 0 minus each group's mean over its speech frames (each variant apart); the rest as it is."""
    result = bank.astype(np.float32).copy()
    for _, rows, variant, statistics in per_speaker_statistics(bank, groups):
        result[rows, variant, :, 0] -= np.float32(statistics.total[0] / statistics.frames)
    return result


def make_table(args: argparse.Namespace) -> None:
    from emostream.model.feature_table import FeatureTable

    table = FeatureTable.load(args.features)
    bank = table.features if table.variants is not None else table.features[:, None]
    groups = table.speakers if args.per.startswith("speaker") else [str(i) for i in range(len(table.speakers))]
    if args.per == "speaker-level":
        normalised = level_per_speaker(bank, groups)
    else:
        normalised = standardise_per_speaker(bank, groups)
    features = normalised if table.variants is not None else normalised[:, 0]
    dataclasses.replace(table, features=features).save(args.out)
    print(f"{args.out}: {features.shape}, standardised per {args.per} ({len(set(groups))} groups)")


def score_utterances(args: argparse.Namespace) -> None:
    import torch
    from emostream.model.crossval import load_fold_network
    from emostream.model.feature_table import FeatureTable
    from emostream.model.metrics import score
    from emostream.model.training import predict_logits

    torch.set_num_threads(1)
    table = FeatureTable.load(args.features)
    clips = table.original_features()
    shift = table.input_shift_per_db()
    speakers = np.array(table.speakers)
    for fold in args.folds:
        network, result = load_fold_network(args.cv_dir, fold)
        test = np.array(result["test_indices"])
        train = np.setdiff1d(np.arange(len(clips)), test)
        prior = CallPrior.of(clips[train], args.prior_frames) if args.prior_frames > 0 else None
        heard = clips.copy()
        heard[test] += np.float32(args.gain_db) * shift.astype(np.float32)
        generator = np.random.default_rng(args.seed)
        for k in args.utterances:
            inputs = []
            for index in test:
                others = np.flatnonzero((speakers == speakers[index]) & (np.arange(len(clips)) != index))
                statistics = CallStatistics()  # the call's k - 1 earlier utterances, then this one
                statistics.add(heard[generator.choice(others, size=min(k - 1, len(others)), replace=False)])
                statistics.add(heard[index][None])
                inputs.append(statistics.standardise(heard[index], prior))
            predicted = predict_logits(network, np.stack(inputs), torch.device("cpu")).argmax(axis=1)
            scores = score(table.label_ids[test].tolist(), predicted.tolist(), table.labels)
            print(json.dumps({"fold": fold, "utterances": k, "prior_frames": args.prior_frames,
                              "gain_db": args.gain_db, "war_percent": round(100 * scores["war"], 2),
                              "uar_percent": round(100 * scores["uar"], 2),
                              "macro_f1": round(scores["macro_f1"], 4)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="write a standardised feature table")
    table.add_argument("--features", type=Path, required=True, help="a feature table (a bank or clips only)")
    table.add_argument("--per", choices=["speaker", "speaker-level", "utterance"], default="speaker")
    table.add_argument("--out", type=Path, required=True)
    table.set_defaults(run=make_table)
    utterances = commands.add_parser("utterances", help="score fold models with statistics of k utterances")
    utterances.add_argument("--cv-dir", type=Path, required=True, help="crossval folder of a per-speaker table")
    utterances.add_argument("--features", type=Path, required=True, help="the raw table that one was made from")
    utterances.add_argument("--folds", type=int, nargs="+", required=True)
    utterances.add_argument("--utterances", type=lambda text: [int(v) for v in text.split(",")],
                            default=[1, 2, 3, 5, 10, 60])
    utterances.add_argument("--prior-frames", type=float, default=0.0)
    utterances.add_argument("--gain-db", type=float, default=0.0)
    utterances.add_argument("--seed", type=int, default=0)
    utterances.set_defaults(run=score_utterances)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
