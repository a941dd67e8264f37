"""Shared argument handling of the commands that read a labelled corpus (train, crossval, evaluate)."""

import argparse
from pathlib import Path

from emostream.schemas.model_card import FeatureSettings


def add_corpus_arguments(parser: argparse.ArgumentParser, features_option: bool = True) -> None:
    parser.add_argument("--data", type=Path, help="corpus folder (labels.csv, IEMOCAP or CREMA-D layout)")
    parser.add_argument("--labels", type=Path, help="label CSV with path,label[,speaker] columns (paths relative to --data)")
    parser.add_argument("--layout", default="auto", choices=["auto", "csv", "iemocap", "crema-d"])
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/features"),
                        help="where computed features are cached (default: %(default)s)")
    if features_option:
        parser.add_argument("--features", type=Path, help="a feature table .npz made earlier (instead of --data)")
    parser.add_argument("--workers", type=int, default=2, help="processes for features / folds (default: %(default)s)")


def feature_settings(args: argparse.Namespace) -> FeatureSettings:
    """The feature settings a command trains or evaluates with: the defaults, or a --level-dbfs."""
    level = getattr(args, "level_dbfs", None)
    return FeatureSettings(level_dbfs=level) if level is not None else FeatureSettings()


def corpus_table(args: argparse.Namespace, labels: list[str] | None = None,
                 variants: list[str] | None = None):  # -> FeatureTable
    """The corpus's feature table (cached) and the messages of clips that could not be used."""
    from emostream.model.feature_table import FeatureTable

    if getattr(args, "features", None):
        table = FeatureTable.load(args.features)
        table.check_matches(feature_settings(args), args.features)
        return table, []
    if args.data is None:
        raise SystemExit("give --data DIR (a labelled corpus) or --features FILE.npz")
    from emostream.model.datasets import load_corpus
    from emostream.model.feature_cache import cached_features

    clips = load_corpus(args.data, args.labels, args.layout)
    return cached_features(clips, feature_settings(args), args.cache_dir, labels=labels, workers=args.workers,
                           variants=variants)
