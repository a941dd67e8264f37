"""`emostream evaluate`: a trained model's figures on a labelled folder."""

import argparse
import json
import sys
from pathlib import Path

from emostream.schemas.settings import DEFAULT_MODEL
from emostream.workers.cli.commands._corpus import add_corpus_arguments, model_errors, reporting_errors


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("evaluate", help="WAR, UAR, macro-F1, per-class report of a model on a folder")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name or checkpoint folder (default: %(default)s)")
    add_corpus_arguments(parser, features_option=False)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--plot", type=Path, help="write the confusion matrix as PNG")
    parser.add_argument("--label-map", default="", help="map corpus labels to model labels, e.g. "
                        "'anger=angry,happiness=happy' (clips whose label is not in the model are skipped)")
    parser.add_argument("--calls", choices=["clip", "speaker"], default="clip",
                        help="for a call-normalised model: each clip a call of its own (its first utterance), or "
                        "each speaker's clips one call in corpus order (default: %(default)s)")
    parser.set_defaults(handler=reporting_errors(run, _bad_input))


def _bad_input() -> tuple[type[Exception], ...]:
    """An unknown or unverifiable model, or a corpus folder that cannot be read."""
    from emostream.model.datasets import DatasetError

    return (*model_errors(), DatasetError)


def run(args: argparse.Namespace) -> int:
    from emostream.model.audio_io import AudioInputError, read_audio
    from emostream.model.call_statistics import CallStatistics
    from emostream.model.datasets import load_corpus
    from emostream.model.metrics import plot_confusion_matrix, score
    from emostream.model.registry import load_model

    if args.data is None:
        raise SystemExit("give --data DIR: a folder with labels.csv (path,label columns), or IEMOCAP / CREMA-D")
    model = load_model(args.model)
    label_map = dict(pair.split("=", 1) for pair in args.label_map.split(",") if "=" in pair)
    true_ids, predicted_ids, skipped = [], [], []
    calls: dict[str, CallStatistics] = {}
    for clip in load_corpus(args.data, args.labels, args.layout):
        label = label_map.get(clip.label, clip.label)
        if label not in model.labels:
            skipped.append(f"{clip.path}: label {clip.label!r} is not one of the model's {list(model.labels)}")
            continue
        try:
            audio, sample_rate_hz = read_audio(clip.path)
        except AudioInputError as error:
            skipped.append(str(error))
            continue
        if args.calls == "speaker" and not clip.speaker:
            raise SystemExit(f"--calls speaker: {clip.path} has no speaker in the label file")
        call = calls.setdefault(clip.speaker, CallStatistics()) if args.calls == "speaker" else CallStatistics()
        prediction = model.predict([audio], sample_rate_hz, [call])[0]
        true_ids.append(model.labels.index(label))
        predicted_ids.append(model.labels.index(prediction.label))
    for message in skipped:
        print(f"skipped: {message}", file=sys.stderr)
    if not true_ids:
        print("no clip could be evaluated", file=sys.stderr)
        return 1
    figures = {"model": model.name, "version": model.version, "data": str(args.data), "skipped": len(skipped),
               "calls": args.calls if model.uses_call_statistics else None,
               **score(true_ids, predicted_ids, model.labels)}
    if args.plot:
        plot_confusion_matrix(figures["confusion_matrix"], model.labels, args.plot,
                              f"{model.name} on {args.data.name}: WAR {100 * figures['war']:.1f}%")
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print(f"{model.name} v{model.version} on {args.data}: {figures['samples']} clips, "
              f"WAR {100 * figures['war']:.2f}%  UAR {100 * figures['uar']:.2f}%  macro-F1 {figures['macro_f1']:.4f}")
        for label in model.labels:
            row = figures["report"][label]
            print(f"  {label:<12} precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                  f"f1 {row['f1-score']:.3f}  n={int(row['support'])}")
    return 0
