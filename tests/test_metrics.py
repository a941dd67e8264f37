"""Metric functions against values computed by hand."""

import pytest
from emostream.model.metrics import (
    benefit_cost_ratio,
    fold_summary,
    macro_f1,
    score,
    unweighted_average_recall,
    weighted_average_recall,
)

# 3 classes; class 0: 4 clips (3 right), class 1: 2 clips (1 right), class 2: 1 clip (right)
TRUE = [0, 0, 0, 0, 1, 1, 2]
PREDICTED = [0, 0, 0, 1, 1, 0, 2]


def test_war_is_class_share_weighted_recall() -> None:
    # equation 7: 4/7 * 3/4 + 2/7 * 1/2 + 1/7 * 1 = 5/7
    assert weighted_average_recall(TRUE, PREDICTED) == pytest.approx(5 / 7)


def test_uar_is_mean_per_class_recall() -> None:
    assert unweighted_average_recall(TRUE, PREDICTED) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)


def test_macro_f1() -> None:
    # class 0: P 3/4 R 3/4 F 3/4; class 1: P 1/2 R 1/2 F 1/2; class 2: F 1
    assert macro_f1(TRUE, PREDICTED, 3) == pytest.approx((0.75 + 0.5 + 1) / 3)


def test_confusion_matrix_and_report() -> None:
    figures = score(TRUE, PREDICTED, ["a", "b", "c"])
    assert figures["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert figures["report"]["a"]["recall"] == pytest.approx(0.75)
    assert figures["samples"] == 7


def test_fold_summary_as_table_5() -> None:
    assert fold_summary([80.0, 90.0, 85.0, 85.0]) == pytest.approx(
        {"min": 80.0, "max": 90.0, "avg": 85.0, "std": (12.5) ** 0.5})


def test_benefit_cost_ratio_as_table_11() -> None:
    # Table 11's "trade-off": 88.18 % WAR with 95,288 parameters is printed as 92.541 (x 10^5)
    assert 1e5 * benefit_cost_ratio(88.18, 95_288) == pytest.approx(92.541, abs=1e-3)


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        weighted_average_recall([], [])
