"""Put one measured figure (a JSON file a benchmark or `emostream crossval` printed) into a checkpoint's
card, with the command that produced it, when, and which model produced it; re-render MODEL_CARD.md.

    python benchmarks/record_figure.py --card model/checkpoints/plb-ravdess8 --name speaker_independent \
        --json .devdata/cv-ravdess-speaker-production/summary.json \
        --command "emostream crossval ..." --measured-with "fold models of the production recipe"
"""

import argparse
import datetime
import json
from pathlib import Path

from emostream.model.card_markdown import render
from emostream.model.checkpoint import read_card, update_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--name", required=True, help="key under the card's metrics")
    parser.add_argument("--json", type=Path, required=True, help="the figures, as the command printed them")
    parser.add_argument("--command", required=True, help="the command that produced them")
    parser.add_argument("--measured-with", required=True,
                        help="which model: fold models of a recipe, or the shipped weights")
    parser.add_argument("--measured-at", help="when (UTC, ISO 8601); default: the JSON file's modification time")
    parser.add_argument("--drop", nargs="*", default=["confusion_matrix_pooled"], help="keys left out of the card")
    args = parser.parse_args()
    figures = json.loads(args.json.read_text())
    if isinstance(figures, dict):
        figures = {k: v for k, v in figures.items() if k not in args.drop}
    when = args.measured_at or datetime.datetime.fromtimestamp(args.json.stat().st_mtime, datetime.UTC).isoformat(
        timespec="minutes")
    card = read_card(args.card)
    update_card(args.card, metrics={**card.metrics, args.name: {
        "command": args.command, "measured_at": when, "measured_with": args.measured_with, "figures": figures}})
    (args.card / "MODEL_CARD.md").write_text(render(args.card))
    print(f"{args.card}: metrics.{args.name} recorded")


if __name__ == "__main__":
    main()
