"""`emostream train` and `emostream crossval`: the PLB thesis's recipe on a labelled corpus."""

import argparse
import json
import sys
from pathlib import Path

from emostream.workers.cli.commands._corpus import add_corpus_arguments, corpus_table


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=300, help="default: the thesis's 300; lower it on CPU "
                        "(about 30 s an epoch for 1,200 clips on 2 cores); the lr is x0.15 every 20 after 50")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _recipe(args: argparse.Namespace):  # -> TrainingRecipe
    from emostream.model.training import TrainingRecipe

    return TrainingRecipe.for_epochs(args.epochs, batch_size=args.batch_size, seed=args.seed)


def register(subcommands: argparse._SubParsersAction) -> None:
    train = subcommands.add_parser("train", help="train a PLB model on a corpus and write a checkpoint folder")
    add_corpus_arguments(train)
    _add_recipe_arguments(train)
    train.add_argument("--name", required=True, help="registry name, e.g. plb-ravdess8")
    train.add_argument("--version", default="1", help="model version (part of every result's idempotency key)")
    train.add_argument("--out", type=Path, required=True, help="checkpoint folder; training resumes from it")
    train.add_argument("--describe-data", default="", help="text for the card's training.data")
    train.add_argument("--metrics-json", type=Path, help="cross-validation summaries (JSON object) for the card")
    train.set_defaults(handler=run_train)

    crossval = subcommands.add_parser("crossval", help="k-fold cross-validation of the recipe (resumable)")
    add_corpus_arguments(crossval)
    _add_recipe_arguments(crossval)
    crossval.add_argument("--protocol", choices=["stratified", "speaker"], default="stratified",
                          help="stratified: the thesis's 10-fold, speakers shared; speaker: folds by speaker")
    crossval.add_argument("--folds", type=int, default=10)
    crossval.add_argument("--only-folds", type=int, nargs="*", help="run just these fold numbers (0-based)")
    crossval.add_argument("--out", type=Path, required=True, help="folder for per-fold JSON and summary.json")
    crossval.add_argument("--plot", type=Path, help="write the pooled confusion matrix as PNG")
    crossval.set_defaults(handler=run_crossval)


def _report_skipped(errors: list[str]) -> None:
    for message in errors:
        print(f"skipped: {message}", file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    from emostream.model.release import train_release
    from emostream.schemas.model_card import FeatureSettings

    table, errors = corpus_table(args)
    _report_skipped(errors)
    metrics = json.loads(args.metrics_json.read_text()) if args.metrics_json else None
    card = train_release(table, args.name, args.version, _recipe(args), args.out, FeatureSettings(),
                         args.describe_data or str(args.data or args.features), args.device, metrics,
                         progress=not args.quiet)
    print(json.dumps({"name": card.name, "version": card.version, "folder": str(args.out),
                      "parameters": card.parameter_count, "labels": card.labels}))
    return 0


def run_crossval(args: argparse.Namespace) -> int:
    from emostream.model.crossval import run_crossval as crossval

    table, errors = corpus_table(args)
    _report_skipped(errors)
    table_path = args.features
    if table_path is None:
        args.out.mkdir(parents=True, exist_ok=True)
        table_path = args.out / "features.npz"
        table.save(table_path)
    summary = crossval(table_path, args.out, args.protocol, args.folds, _recipe(args), args.device, args.workers,
                       args.only_folds, progress=not args.quiet)
    if args.plot:
        from emostream.model.metrics import plot_confusion_matrix

        plot_confusion_matrix(summary["confusion_matrix_pooled"], summary["labels"], args.plot,
                              f"{args.protocol} {summary['folds']}-fold, WAR {summary['war_percent']['avg']}%")
    print(json.dumps({k: v for k, v in summary.items() if k != "confusion_matrix_pooled"}, indent=1))
    return 0
