"""Evaluation figures of the PLB thesis (WAR, confusion matrix, classification report, benefit-cost
ratio, per-fold min / max / avg / std) plus UAR and macro-F1."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score


def weighted_average_recall(true: Sequence[int], predicted: Sequence[int]) -> float:
    """Equation 7: per-class recall weighted by class share = overall accuracy (WAR, a.k.a. WA)."""
    true_array, predicted_array = np.asarray(true), np.asarray(predicted)
    if true_array.size == 0:
        raise ValueError("no samples to score")
    return float(np.mean(true_array == predicted_array))


def unweighted_average_recall(true: Sequence[int], predicted: Sequence[int]) -> float:
    """Mean of per-class recalls over the classes present in `true` (UAR, a.k.a. UA)."""
    true_array, predicted_array = np.asarray(true), np.asarray(predicted)
    recalls = [np.mean(predicted_array[true_array == label] == label) for label in np.unique(true_array)]
    return float(np.mean(recalls))


def macro_f1(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> float:
    return float(f1_score(true, predicted, labels=list(range(num_classes)), average="macro", zero_division=0))


def benefit_cost_ratio(war_percent: float, parameter_count: int) -> float:
    """Tables 11-13 ("trade-off"): WAR (%) divided by the parameter count; the thesis prints it x 10^5
    (88.18 % with 95,288 parameters -> 92.541)."""
    return war_percent / parameter_count


def fold_summary(values: Sequence[float]) -> dict[str, float]:
    """Table 5's per-fold statistics: min, max, avg, std (population std, as numpy's default)."""
    array = np.asarray(values, dtype=float)
    return {"min": float(array.min()), "max": float(array.max()), "avg": float(array.mean()), "std": float(array.std())}


def score(true: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict[str, object]:
    """All figures for one evaluation: WAR, UAR, macro-F1, confusion matrix, per-class report."""
    label_ids = list(range(len(labels)))
    return {
        "samples": len(true),
        "war": weighted_average_recall(true, predicted),
        "uar": unweighted_average_recall(true, predicted),
        "macro_f1": macro_f1(true, predicted, len(labels)),
        "confusion_matrix": confusion_matrix(true, predicted, labels=label_ids).tolist(),
        "report": classification_report(
            true, predicted, labels=label_ids, target_names=list(labels), output_dict=True, zero_division=0
        ),
    }


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> None:
    """Save a confusion-matrix PNG: rows true labels, columns predictions, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    figure, axes = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.6 * len(labels)))
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = counts.max() / 2 if counts.size else 0
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            axes.text(column, row, str(counts[row, column]), ha="center", va="center",
                      color="white" if counts[row, column] > threshold else "black", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
