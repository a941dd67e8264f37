"""A corpus as model inputs: features, labels and speakers of every clip, saved as one .npz."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FeatureTable:
    """Features of labelled clips: one fixed-size input window per clip (the thesis's pad / trim)."""

    features: np.ndarray  # float32 (clips, frames, coefficients)
    label_ids: np.ndarray  # int64 (clips,), indices into `labels`
    labels: list[str]
    speakers: list[str]
    paths: list[str]

    def save(self, path: Path) -> None:
        np.savez(path, features=self.features, label_ids=self.label_ids, labels=np.array(self.labels),
                 speakers=np.array(self.speakers), paths=np.array(self.paths))

    @classmethod
    def load(cls, path: Path) -> "FeatureTable":
        with np.load(path, allow_pickle=False) as data:
            return cls(features=data["features"], label_ids=data["label_ids"], labels=data["labels"].tolist(),
                       speakers=data["speakers"].tolist(), paths=data["paths"].tolist())
