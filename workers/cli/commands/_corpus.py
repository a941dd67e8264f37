"""Shared handling of the commands that read a labelled corpus (train, crossval, evaluate, asr-*):
corpus arguments, --set overrides, progress logging and bad-input reporting."""

import argparse
import json
import logging
import sys
from collections.abc import Callable
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
    """The feature settings a command trains or evaluates with: the defaults, a --feature-kind, a --level-dbfs,
    a --pad-position."""
    return FeatureSettings(kind=getattr(args, "feature_kind", "mfcc"), level_dbfs=getattr(args, "level_dbfs", None),
                           pad_position=getattr(args, "pad_position", "end"))


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


def split_overrides(pairs: list[str], *dataclasses: type) -> list[dict[str, object]]:
    """The --set FIELD=VALUE pairs split by the dataclass whose field they name (a field of several goes
    to each); values are JSON where they parse, checked against the field's type before any work starts."""
    from typing import get_type_hints

    from pydantic import TypeAdapter, ValidationError

    known = [set(cls.__dataclass_fields__) for cls in dataclasses]
    types = [get_type_hints(cls) for cls in dataclasses]
    chosen: list[dict[str, object]] = [{} for _ in dataclasses]
    for pair in pairs:
        name, separator, text = pair.partition("=")
        owners = [i for i, fields in enumerate(known) if name in fields]
        if not separator or not owners:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a field of "
                             f"{', '.join(sorted(set().union(*known)))}")
        try:
            value: object = json.loads(text)
        except json.JSONDecodeError:
            value = text
        for i in owners:
            expected = types[i][name]
            try:
                chosen[i][name] = text if expected is str else TypeAdapter(expected).validate_python(value)
            except ValidationError as error:
                kind = {int: "an integer", float: "a number", bool: "true or false"}.get(expected, str(expected))
                raise SystemExit(f"--set {pair!r}: {name} must be {kind} ({error.errors()[0]['msg']})") from None
    return chosen


def log_progress(args: argparse.Namespace) -> None:
    """With --quiet, one log line per epoch (what a detached job's log file needs)."""
    if args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def report_skipped(errors: list[str]) -> None:
    for message in errors:
        print(f"skipped: {message}", file=sys.stderr)


def model_errors() -> tuple[type[Exception], ...]:
    """A model that cannot be served (`model.registry.LOAD_ERRORS`, imported only when a command runs)."""
    from emostream.model.registry import LOAD_ERRORS

    return LOAD_ERRORS


def reporting_errors(handler: Callable[[argparse.Namespace], int],
                     bad_input: Callable[[], tuple[type[Exception], ...]]) -> Callable[[argparse.Namespace], int]:
    """Bad input (the errors `bad_input()` names: imported only when a command runs) is one line
    naming the file and the problem, exit status 2; not a traceback."""
    def run(args: argparse.Namespace) -> int:
        errors = bad_input()
        try:
            return handler(args)
        except errors as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return run
