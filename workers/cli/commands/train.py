"""`emostream train` and `emostream crossval`: a PLB recipe (the thesis's or ours) on a labelled corpus."""

import argparse
import json
import sys
from pathlib import Path

from emostream.workers.cli.commands._corpus import (
    add_corpus_arguments,
    corpus_table,
    feature_settings,
    log_progress,
    report_skipped,
    reporting_errors,
    split_overrides,
)


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=["thesis", "production"], default="thesis",
                        help="thesis: the PLB thesis's optimiser and step schedule; production: ours (model card)")
    parser.add_argument("--epochs", type=int, help="default: 300 for thesis (the lr is x0.15 every 20 after 50; "
                        "below 110 the schedule is compressed), 60 for production; ~11 s an epoch of 1,200 "
                        "clips on 2 cores, compiled")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-normalisation", choices=["none", "per-coefficient"], default=None,
                        help="standardise each MFCC coefficient with training-set statistics (default: none "
                        "for thesis, per-coefficient for production)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one recipe or network field (ablations), e.g. mixup_alpha=0 or "
                        "routing_softmax=outputs; repeatable; fields: model/recipes.py, model/plb.py")
    parser.add_argument("--waveform-variants", type=lambda text: [] if text == "none" else text.split(","),
                        metavar="NAME,...", help="with --data: a feature bank of these waveform variants per clip "
                        "(model/waveform_augment.py: speed-0.9, speed-1.1, noise-20db, telephony, crop); one per "
                        "clip per epoch is trained on. Default: all five for production, none (or 'none') for "
                        "thesis. A --features table brings its own.")
    parser.add_argument("--feature-kind", choices=["mfcc", "logmel"], default="mfcc",
                        help="the network's input: the thesis's 39 MFCC coefficients, or 39 log-mel bands (dB) of "
                        "the same frames (default: %(default)s)")
    parser.add_argument("--pad-position", choices=["end", "centre"], default="end",
                        help="where a short clip's zeros go in its 100,000-sample window: after it, or half before "
                        "(TIM-Net's preprocessing; default: %(default)s)")
    parser.add_argument("--level-dbfs", type=float, help="features.level_dbfs: scale every utterance to this "
                        "active-speech level before features, in training and (through the card) serving")
    parser.add_argument("--call-normalisation", action="store_true",
                        help="standardise each speaker's clips with their own statistics and serve each call against "
                        "its own (model/call_statistics.py); trains without gain augmentation")
    parser.add_argument("--add-data", type=Path, action="append", default=[], metavar="DIR",
                        help="another labelled corpus whose clips are trained on too (in cross-validation: in every "
                        "fold, never held out); its speakers are kept apart by the folder's name; repeatable")
    parser.add_argument("--add-features", type=Path, action="append", default=[], metavar="FILE.npz",
                        help="as --add-data, from a feature table made earlier (same settings and variants)")
    parser.add_argument("--map-labels", type=_label_map, default={}, metavar="FROM=TO,...",
                        help="rename the added corpora's labels to the main corpus's, e.g. "
                        "anger=angry,happiness=happy,fear=fearful,sadness=sad (EMO-DB to RAVDESS); added clips "
                        "whose label is then not the main corpus's are left out (and counted)")
    parser.add_argument("--eager", action="store_true", help="do not torch.compile the training step")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _label_map(text: str) -> dict[str, str]:
    pairs = [pair.partition("=") for pair in text.split(",") if pair]
    if any(not separator or not source or not target for source, separator, target in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: expected FROM=TO[,FROM=TO...]")
    return {source: target for source, _, target in pairs}


def _training_table(args: argparse.Namespace):  # -> FeatureTable
    """The corpus's feature table with the added corpora's clips (training-only), skipped clips reported."""
    if args.map_labels and not (args.add_data or args.add_features):
        raise SystemExit("--map-labels renames the labels of --add-data / --add-features corpora; none was given")
    table, errors = corpus_table(args, variants=_waveform_variants(args))
    report_skipped(errors)
    added = [(folder.name, argparse.Namespace(**{**vars(args), "data": folder, "labels": None, "features": None}))
             for folder in args.add_data]
    added += [(path.stem, argparse.Namespace(**{**vars(args), "features": path})) for path in args.add_features]
    for corpus, corpus_args in added:
        other, errors = corpus_table(corpus_args, variants=table.variants)
        report_skipped(errors)
        table, left_out = table.with_training_corpus(other, corpus, args.map_labels)
        print(f"{corpus}: {len(other.label_ids) - sum(left_out.values())} clips added for training; left out by "
              f"label: {left_out or 'none'}", file=sys.stderr)
    return table


def _data_description(args: argparse.Namespace) -> str:
    """The card's training.data: as given, else the corpus and the corpora added to it."""
    if args.describe_data:
        return args.describe_data
    added = [*map(str, args.add_data), *map(str, args.add_features)]
    return str(args.data or args.features) + "".join(f" + {path} (labels mapped: {args.map_labels or 'none'})"
                                                     for path in added)


def _recipe(args: argparse.Namespace):  # -> TrainingRecipe
    from emostream.model.plb import PLBConfig
    from emostream.model.recipes import RECIPES, TrainingRecipe

    default_epochs = {"thesis": 300, "production": 60}[args.recipe]
    overrides, _ = split_overrides(args.set, TrainingRecipe, PLBConfig)
    if args.call_normalisation:  # a call's gain is what it removes
        if overrides.get("gain_min_db") or overrides.get("gain_max_db"):
            from emostream.model.call_statistics import GAIN_REFUSED

            raise SystemExit(f"--call-normalisation: {GAIN_REFUSED}")
        overrides = {**overrides, "gain_min_db": 0.0, "gain_max_db": 0.0}
    return RECIPES[args.recipe](args.epochs or default_epochs, **{"batch_size": args.batch_size, "seed": args.seed,
                                                                   "compile": not args.eager, **overrides})


def _waveform_variants(args: argparse.Namespace) -> list[str] | None:
    """The feature bank's variants: as given, else the recipe's (production trains on its bank)."""
    from emostream.model.waveform_augment import PRODUCTION_VARIANTS

    if args.waveform_variants is not None:
        return args.waveform_variants or None
    return list(PRODUCTION_VARIANTS) if args.recipe == "production" else None


def _network(args: argparse.Namespace, num_classes: int):  # -> PLBConfig
    from emostream.model.plb import PLBConfig
    from emostream.model.recipes import TrainingRecipe

    _, overrides = split_overrides(args.set, TrainingRecipe, PLBConfig)
    overrides.pop("num_classes", None)
    features = feature_settings(args)
    default = {"thesis": "none", "production": "per-coefficient"}[args.recipe]
    return PLBConfig(**{"num_classes": num_classes, "input_frames": features.input_frames,
                        "input_coefficients": features.n_coefficients,
                        "input_normalisation": args.input_normalisation or default,
                        **overrides})


def register(subcommands: argparse._SubParsersAction) -> None:
    train = subcommands.add_parser("train", help="train a PLB model on a corpus and write a checkpoint folder")
    add_corpus_arguments(train)
    _add_recipe_arguments(train)
    train.add_argument("--name", required=True, help="registry name, e.g. plb-ravdess8")
    train.add_argument("--version", default="1", help="model version (part of every result's idempotency key)")
    train.add_argument("--out", type=Path, required=True, help="checkpoint folder; training resumes from it")
    train.add_argument("--describe-data", default="", help="text for the card's training.data")
    train.add_argument("--serve-onset-lead-in-s", type=float, metavar="SECONDS",
                       help="the card's features.onset_lead_in_s: serve each utterance with its speech this far into "
                       "the window, where it sits in the training clips (RAVDESS: 1.0); training is unchanged")
    train.add_argument("--metrics-json", type=Path, help="cross-validation summaries (JSON object) for the card")
    train.set_defaults(handler=reporting_errors(run_train, _bad_input))

    crossval = subcommands.add_parser("crossval", help="k-fold cross-validation of the recipe (resumable)")
    add_corpus_arguments(crossval)
    _add_recipe_arguments(crossval)
    crossval.add_argument("--protocol", choices=["stratified", "speaker"], default="stratified",
                          help="stratified: the thesis's 10-fold, speakers shared; speaker: folds by speaker")
    crossval.add_argument("--folds", type=int, default=10)
    crossval.add_argument("--only-folds", type=int, nargs="*", help="run just these fold numbers (0-based)")
    crossval.add_argument("--out", type=Path, required=True, help="folder for per-fold JSON and summary.json")
    crossval.add_argument("--plot", type=Path, help="write the pooled confusion matrix as PNG")
    crossval.set_defaults(handler=reporting_errors(run_crossval, _bad_input))


def _bad_input() -> tuple[type[Exception], ...]:
    """A corpus, feature table or training state that does not fit."""
    from emostream.model.datasets import DatasetError
    from emostream.model.feature_table import FeatureTableError
    from emostream.model.training import TrainingStateError

    return DatasetError, FeatureTableError, TrainingStateError


def run_train(args: argparse.Namespace) -> int:
    import os

    import torch
    from emostream.model.release import train_release

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use (taskset, cgroups)
    log_progress(args)
    recipe = _recipe(args)  # checks every --set before the features are made
    table = _training_table(args)
    metrics = json.loads(args.metrics_json.read_text()) if args.metrics_json else None
    card = train_release(table, args.name, args.version, recipe, args.out, feature_settings(args),
                         _data_description(args), args.device, metrics,
                         progress=not args.quiet, config=_network(args, len(table.labels)),
                         call_normalisation=args.call_normalisation,
                         served_onset_lead_in_s=args.serve_onset_lead_in_s)
    print(json.dumps({"name": card.name, "version": card.version, "folder": str(args.out),
                      "parameters": card.parameter_count, "labels": card.labels}))
    return 0


def _saved_already(table, path: Path) -> bool:
    """A resumed crossval finds its joined table in its folder: it is read, not written again (hundreds of MB
    with a waveform bank). Anything else there (another table, an unreadable file) is replaced."""
    from emostream.model.feature_table import FeatureTable, FeatureTableError

    try:
        return path.exists() and FeatureTable.load(path).same_as(table)
    except FeatureTableError:
        return False


def run_crossval(args: argparse.Namespace) -> int:
    from emostream.model.crossval import run_crossval as crossval

    log_progress(args)
    recipe = _recipe(args)  # checks every --set before the features are made
    table = _training_table(args)
    table_path = args.features
    if table_path is None or table.training_only is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table_path = args.out / "features.npz"
        if not _saved_already(table, table_path):
            table.save(table_path)
    summary = crossval(table_path, args.out, args.protocol, args.folds, recipe, args.device, args.workers,
                       args.only_folds, progress=not args.quiet, config=_network(args, len(table.labels)),
                       call_normalisation=args.call_normalisation)
    if args.plot:
        from emostream.model.metrics import plot_confusion_matrix

        plot_confusion_matrix(summary["confusion_matrix_pooled"], summary["labels"], args.plot,
                              f"{args.protocol} {summary['folds']}-fold, WAR {summary['war_percent']['avg']}%")
    print(json.dumps({k: v for k, v in summary.items() if k != "confusion_matrix_pooled"}, indent=1))
    return 0
