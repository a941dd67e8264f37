"""The cross-validation summary counts the parameters of the network the folds trained, and says which
folds of the protocol it covers."""

import numpy as np
import pytest
from emostream.model.crossval import summarise
from emostream.model.feature_table import FeatureTable
from emostream.model.plb import PLBConfig, PLBNet, count_parameters
from emostream.model.recipes import production_recipe


def _fold(fold: int, war: float, network: PLBConfig) -> dict[str, object]:
    return {"fold": fold, "war": war, "uar": war, "macro_f1": war, "confusion_matrix": np.eye(2, dtype=int).tolist(),
            "network": network.to_dict(), "call_prior": None, "final_train_accuracy": 0.9}


@pytest.mark.parametrize("frame_batchnorm", [True, False])
def test_the_summary_counts_the_folds_own_network(frame_batchnorm: bool) -> None:
    network = PLBConfig(num_classes=2, frame_batchnorm=frame_batchnorm)
    table = FeatureTable(features=np.zeros((4, 196, 39), np.float32), label_ids=np.array([0, 1, 0, 1]),
                         labels=["calm", "sad"], speakers=["01", "01", "02", "02"], paths=["a", "b", "c", "d"])
    summary = summarise([_fold(1, 0.75, network), _fold(0, 0.5, network)], table, "speaker", 5, production_recipe())
    assert summary["folds"] == 5 and summary["folds_run"] == [0, 1]  # the protocol's folds, and those run
    assert summary["war_percent"] == {"min": 50.0, "max": 75.0, "avg": 62.5, "std": 12.5}
    assert summary["parameters"] == count_parameters(PLBNet(network))
    per_frame = count_parameters(PLBNet(PLBConfig(num_classes=2)))
    assert (summary["parameters"] == per_frame) is frame_batchnorm  # per channel has fewer BatchNorm weights
