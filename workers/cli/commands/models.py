"""`emostream models`: the models the registry can serve, from their cards."""

import argparse
import json
import sys


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("models", help="list available models (name, version, labels, metrics)")
    parser.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from emostream.model.registry import list_cards

    cards, errors = list_cards()
    for message in errors:
        print(f"skipped: {message}", file=sys.stderr)
    rows = [
        {
            "name": card.name,
            "version": card.version,
            "architecture": card.architecture,
            "labels": card.labels,
            "sample_rate_hz": card.sample_rate_hz,
            "parameters": card.parameter_count,
            "parameters_with_bn_statistics": card.parameter_count_with_bn_statistics,
            "metrics": card.metrics,
        }
        for card in cards
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no models found (see EMOSTREAM_MODEL_PATH)")
        return 1
    for row in rows:
        print(f"{row['name']:<20} v{row['version']:<4} {row['architecture']:<6} {row['parameters']:>8,} params  "
              f"{row['sample_rate_hz']} Hz  labels: {', '.join(row['labels'])}")
    return 0
