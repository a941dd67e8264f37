"""Calibration against hand-computed examples."""

import numpy as np
import pytest
from emostream.model.calibration import (
    accuracy_against_coverage,
    cross_fitted_calibration,
    expected_calibration_error,
    fit_temperature,
)


def test_temperature_matches_the_closed_form() -> None:
    # Two classes, every logit difference 2, three right and one wrong: the NLL is least where
    # sigmoid(2 / T) = 3/4, i.e. T = 2 / ln 3.
    logits = np.array([[1.0, -1.0]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert fit_temperature(logits, labels) == pytest.approx(2 / np.log(3), rel=1e-4)


def test_expected_calibration_error_by_hand() -> None:
    # Confidences 0.9, 0.9 (one right) and 0.6, 0.6 (both right), 10 bins:
    # |0.5 - 0.9| x 2/4 + |1.0 - 0.6| x 2/4 = 0.4.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(0.4)


def test_accuracy_against_coverage_by_hand() -> None:
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    low, high, none = accuracy_against_coverage(probabilities, labels, [0.5, 0.8, 0.95])
    assert (low.coverage, low.accuracy) == (1.0, 0.75)
    assert (high.coverage, high.accuracy) == (0.5, 0.5)
    assert (none.coverage, none.accuracy) == (0.0, None)


def test_cross_fitting_lowers_the_error_of_overconfident_scores() -> None:
    generator = np.random.default_rng(0)
    folds_logits, folds_labels = [], []
    for _ in range(4):  # 60 % right, but logits that claim ~99 %
        labels = generator.integers(0, 3, 200)
        predicted = np.where(generator.random(200) < 0.6, labels, (labels + 1) % 3)
        folds_logits.append(np.eye(3)[predicted] * 6.0)
        folds_labels.append(labels)
    result = cross_fitted_calibration(folds_logits, folds_labels)
    assert result["temperature"] > 2
    assert result["ece_after"] < 0.05
    assert result["ece_before"] > 0.3
