"""Scores that mean something: temperature scaling, expected calibration error, and accuracy against
coverage when results under a confidence threshold are labelled `uncertain`."""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax


def negative_log_likelihood(logits: np.ndarray, label_ids: np.ndarray, temperature: float) -> float:
    return float(-np.mean(log_softmax(logits / temperature, axis=1)[np.arange(len(label_ids)), label_ids]))


def fit_temperature(logits: np.ndarray, label_ids: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on held-out (logits, labels)."""
    if len(label_ids) == 0:
        raise ValueError("no held-out predictions to fit a temperature on")
    found = minimize_scalar(lambda log_t: negative_log_likelihood(logits, label_ids, float(np.exp(log_t))),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def expected_calibration_error(probabilities: np.ndarray, label_ids: np.ndarray, bins: int = 15) -> float:
    """Sum over equal-width confidence bins (lo, hi] of |accuracy - mean confidence| x share of samples."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == label_ids
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.mean()
    return float(error)


@dataclass(frozen=True)
class CoveragePoint:
    threshold: float
    coverage: float  # share of results at or above the threshold (the rest are `uncertain`)
    accuracy: float | None  # accuracy of those results; None when none is left

    def to_dict(self) -> dict[str, float | None]:
        return {"threshold": self.threshold, "coverage": round(self.coverage, 4),
                "accuracy": None if self.accuracy is None else round(self.accuracy, 4)}


def accuracy_against_coverage(probabilities: np.ndarray, label_ids: np.ndarray,
                              thresholds: Sequence[float]) -> list[CoveragePoint]:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == label_ids
    points = []
    for threshold in thresholds:
        kept = confidence >= threshold
        points.append(CoveragePoint(float(threshold), float(kept.mean()),
                                    float(correct[kept].mean()) if kept.any() else None))
    return points


def cross_fitted_calibration(fold_logits: Sequence[np.ndarray], fold_labels: Sequence[np.ndarray]
                             ) -> dict[str, object]:
    """Each fold's temperature is fitted on the other folds' held-out logits and judged on its own, so
    the ECE after scaling is itself a held-out figure; the temperature to ship is fitted on all folds."""
    before, after, temperatures = [], [], []
    for k, (logits, labels) in enumerate(zip(fold_logits, fold_labels, strict=True)):
        rest_logits = np.concatenate([x for i, x in enumerate(fold_logits) if i != k])
        rest_labels = np.concatenate([y for i, y in enumerate(fold_labels) if i != k])
        temperature = fit_temperature(rest_logits, rest_labels)
        temperatures.append(temperature)
        before.append(softmax(logits, axis=1))
        after.append(softmax(logits / temperature, axis=1))
    labels = np.concatenate(fold_labels)
    return {
        "temperature": fit_temperature(np.concatenate(fold_logits), labels),
        "fold_temperatures": [round(t, 4) for t in temperatures],
        "ece_before": expected_calibration_error(np.concatenate(before), labels),
        "ece_after": expected_calibration_error(np.concatenate(after), labels),
        "probabilities_after": np.concatenate(after),
        "labels": labels,
    }


def plot_coverage(points: Sequence[CoveragePoint], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [p for p in points if p.accuracy is not None]
    figure, axes = plt.subplots(figsize=(5.5, 4))
    axes.plot([p.coverage for p in usable], [p.accuracy for p in usable], marker="o")
    for point in usable[:: max(1, len(usable) // 8)]:
        axes.annotate(f"{point.threshold:.2f}", (point.coverage, point.accuracy), textcoords="offset points",
                      xytext=(4, 4), fontsize=7)
    axes.set_xlabel("coverage (share of results labelled, the rest `uncertain`)")
    axes.set_ylabel("accuracy of labelled results")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
