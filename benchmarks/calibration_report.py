"""Calibration of a recipe's scores from its cross-validation folds' held-out logits.

Temperature scaling is fitted per fold on the other folds (so the ECE after scaling is a held-out
figure) and once on all folds (the temperature to ship in the card's `score_temperature`). Prints
the ECE before and after and accuracy against coverage when results under a confidence threshold
are labelled `uncertain`; --png draws that curve.

    python benchmarks/calibration_report.py --cv-dir .devdata/cv-ravdess-speaker-production \
        --png model/checkpoints/plb-ravdess8/coverage.png
"""

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
from emostream.model.calibration import (
    accuracy_against_coverage,
    cross_fitted_calibration,
    plot_coverage,
)
from emostream.model.card_markdown import render
from emostream.model.checkpoint import read_card, update_card
from emostream.model.feature_table import FeatureTable
from scipy.special import softmax

THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-dir", type=Path, required=True)
    parser.add_argument("--features", type=Path,
                        help="the feature table the folds were made from (PLB's crossval; emostream asr-crossval's "
                        "folds carry their held-out labels)")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--write-card", type=Path, metavar="CHECKPOINT",
                        help="set this checkpoint's score_temperature and calibration figures (weights unchanged)")
    args = parser.parse_args()
    folds = [json.loads(p.read_text()) for p in sorted(args.cv_dir.glob("fold-*.json"))]
    if len(folds) < 2:
        raise SystemExit(f"{args.cv_dir}: {len(folds)} finished fold(s); cross-fitting needs two or more")
    without_logits = [f["fold"] for f in folds if "test_logits" not in f]
    if without_logits:
        raise SystemExit(f"{args.cv_dir}: folds {without_logits} were written without their held-out logits")
    logits = [np.asarray(f["test_logits"], dtype=np.float64) for f in folds]
    if all("test_label_ids" in f for f in folds):  # emostream asr-crossval's folds
        labels = [np.asarray(f["test_label_ids"]) for f in folds]
    else:
        if args.features is None:
            raise SystemExit(f"{args.cv_dir}: its folds name their held-out clips by row; give --features, the table "
                             "they were made from")
        table = FeatureTable.load(args.features)
        labels = [table.label_ids[np.asarray(f["test_indices"])] for f in folds]
    result = cross_fitted_calibration(logits, labels)
    before = accuracy_against_coverage(softmax(np.concatenate(logits), axis=1), result["labels"], THRESHOLDS)
    after = accuracy_against_coverage(result["probabilities_after"], result["labels"], THRESHOLDS)
    if args.png:
        plot_coverage(after, args.png, f"{args.cv_dir.name}: {len(folds)} folds, temperature-scaled")
    report = {
        "cv_dir": str(args.cv_dir), "folds": len(folds), "clips": len(result["labels"]),
        "temperature": round(result["temperature"], 4), "fold_temperatures": result["fold_temperatures"],
        "ece_before": round(result["ece_before"], 4), "ece_after_held_out": round(result["ece_after"], 4),
        "coverage_before": [p.to_dict() for p in before], "coverage_after": [p.to_dict() for p in after],
    }
    if args.write_card:
        card = read_card(args.write_card)
        features = f" --features {args.features}" if args.features else ""
        command = f"python benchmarks/calibration_report.py --cv-dir {args.cv_dir}{features} --write-card {args.write_card}"
        update_card(args.write_card, score_temperature=report["temperature"], metrics={**card.metrics, "calibration": {
            "command": command, "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
            "measured_with": f"fold models of the recipe ({args.cv_dir.name}, {len(folds)} folds); the shipped "
                             "temperature is fitted on their pooled held-out logits",
            "figures": report}})
        (args.write_card / "MODEL_CARD.md").write_text(render(args.write_card))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
