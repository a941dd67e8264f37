"""A corpus as model inputs: features, labels and speakers of every clip, saved as one .npz."""

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emostream.model.call_statistics import GAIN_REFUSED, CallPrior, standardise_partial_calls, standardise_per_speaker
from emostream.model.features import input_shift_per_db
from emostream.model.recipes import TrainingRecipe
from emostream.schemas.model_card import FeatureSettings


# Settings that act after a window's features (how long audio is windowed, per-call standardisation):
# a table's raw features serve them all.
SERVING_ONLY_SETTINGS = {"long_input", "window_hop_samples", "call_normalisation", "call_prior_frames",
                         "call_prior_mean", "call_prior_std"}


class FeatureTableError(ValueError):
    """A feature table is unreadable, or was made with other feature settings than the model needs."""


@dataclass
class FeatureTable:
    """Features of labelled clips: one fixed-size input window per clip (the thesis's pad / trim)."""

    features: np.ndarray  # float32 (clips, frames, coefficients), or (clips, variants, frames, coefficients)
    label_ids: np.ndarray  # int64 (clips,), indices into `labels`
    labels: list[str]
    speakers: list[str]
    paths: list[str]
    settings: FeatureSettings | None = None  # how the features were made; None in tables from before 0.2
    variants: list[str] | None = None  # waveform variants of a 4-D table (model/waveform_augment.py), first = original
    # True for clips of an added training corpus (`with_training_corpus`): trained on in every fold, never held out
    training_only: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.training_only is not None and self.training_only.shape != self.label_ids.shape:
            raise FeatureTableError(f"training_only marks {self.training_only.shape[0]} clips of {len(self.label_ids)}")
        if (self.features.ndim == 4) != (self.variants is not None):
            raise FeatureTableError("a feature table has a variant axis exactly when it names its variants")
        if self.variants is not None and (self.variants[0] != "original" or len(self.variants) != self.features.shape[1]):
            raise FeatureTableError(f"variants {self.variants} must start with 'original' and match the "
                                    f"variant axis ({self.features.shape[1]})")

    def original_features(self) -> np.ndarray:
        """(clips, frames, coefficients): the clips as they are (what evaluation scores)."""
        return self.features[:, 0] if self.variants is not None else self.features

    def training_inputs(self, call_normalisation: bool, prior_rows: np.ndarray, prior_frames: float,
                        recipe: TrainingRecipe, source: Path | str
                        ) -> tuple[np.ndarray, np.ndarray | None, CallPrior | None]:
        """What `recipe` trains on: the features and their shift per dB of gain, and no prior; or, with
        call normalisation (model/call_statistics.py), the features standardised with each speaker's own
        statistics (or, with the recipe's partial_call_statistics, the waveform variants with a partial
        call's), no shift (a call's gain is what that removes) and the prior of the clips `prior_rows`
        as recorded. Refuses call normalisation with gain augmentation, or clips without a speaker."""
        if not call_normalisation:
            if recipe.partial_call_statistics:
                raise FeatureTableError(f"{source}: the recipe's partial_call_statistics needs call normalisation")
            return self.features, self.input_shift_per_db(), None
        if recipe.gain_augmentation:
            raise FeatureTableError(f"{source}: {GAIN_REFUSED}")
        unknown = sum(1 for speaker in self.speakers if not speaker)
        if unknown:
            raise FeatureTableError(f"{source}: {unknown} clips have no speaker; call normalisation trains "
                                    "per speaker (give labels.csv a speaker column)")
        prior = CallPrior.of(self.original_features()[prior_rows], prior_frames)
        if not recipe.partial_call_statistics:
            return standardise_per_speaker(self.features, self.speakers), None, prior
        try:
            inputs = standardise_partial_calls(self.features, self.speakers, prior, np.random.default_rng(recipe.seed))
        except ValueError as error:
            raise FeatureTableError(f"{source}: {error}") from None
        return inputs, None, prior

    def training_only_mask(self) -> np.ndarray:
        """Per clip, whether it is of an added training corpus (all False without one)."""
        return self.training_only if self.training_only is not None else np.zeros(len(self.label_ids), dtype=bool)

    def held_out_rows(self) -> np.ndarray:
        """The clips folds may hold out: all but those of an added training corpus."""
        return np.flatnonzero(~self.training_only_mask())

    def with_training_corpus(self, other: "FeatureTable", corpus: str, label_map: dict[str, str] | None = None
                             ) -> tuple["FeatureTable", dict[str, int]]:
        """This table with `other`'s clips added as training-only clips (cross-validation trains on them in
        every fold and never holds them out), and the number of clips left out per label of `other`.

        `other`'s labels are renamed by `label_map` (e.g. EMO-DB's "anger" -> "angry"); clips whose label is
        then not one of this table's are left out. Speakers are prefixed with `corpus` ("emodb:03") so that
        no speaker of one corpus is taken for another's. Both tables must have the same feature settings,
        input shape and waveform variants."""
        label_map = label_map or {}
        unknown_targets = sorted(set(label_map.values()) - set(self.labels))
        if unknown_targets:
            raise FeatureTableError(f"{corpus}: label map targets {unknown_targets} are not labels of the main corpus "
                                    f"({', '.join(self.labels)})")
        if other.settings is not None and self.settings is not None:
            other.check_matches(self.settings, corpus)
        if other.features.shape[1:] != self.features.shape[1:] or other.variants != self.variants:
            raise FeatureTableError(f"{corpus}: clips of shape {other.features.shape[1:]} with variants "
                                    f"{other.variants}, the main corpus has {self.features.shape[1:]} with "
                                    f"{self.variants}; make both with the same settings and variants")
        mapped = [label_map.get(label, label) for label in other.labels]
        kept = np.array([mapped[i] in self.labels for i in other.label_ids], dtype=bool)
        if not kept.any():
            raise FeatureTableError(f"{corpus}: none of its labels ({', '.join(other.labels)}) is a label of the main "
                                    f"corpus ({', '.join(self.labels)}); give a label map")
        left_out = dict(Counter(other.labels[i] for i in other.label_ids[~kept]))
        rows = np.flatnonzero(kept)
        joined = FeatureTable(
            features=np.concatenate([self.features, other.features[rows]]),
            label_ids=np.concatenate([self.label_ids,
                                      np.array([self.labels.index(mapped[i]) for i in other.label_ids[rows]],
                                               dtype=np.int64)]),
            labels=self.labels,
            speakers=self.speakers + [f"{corpus}:{other.speakers[i]}" if other.speakers[i] else "" for i in rows],
            paths=self.paths + [other.paths[i] for i in rows],
            settings=self.settings,
            variants=self.variants,
            training_only=np.concatenate([self.training_only_mask(), np.ones(len(rows), dtype=bool)]),
        )
        return joined, left_out

    def input_shift_per_db(self) -> np.ndarray | None:
        """What 1 dB of gain adds to each coefficient (for gain augmentation); None without settings."""
        return None if self.settings is None else input_shift_per_db(self.settings)

    def same_as(self, other: "FeatureTable") -> bool:
        """Every field equal, features included (a copy on disk that need not be written again)."""
        def same(a: object, b: object) -> bool:
            return np.array_equal(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b

        return all(same(getattr(self, name), getattr(other, name)) for name in self.__dataclass_fields__)

    def save(self, path: Path) -> None:
        settings = json.dumps(self.settings.model_dump(mode="json")) if self.settings else ""
        np.savez(path, features=self.features, label_ids=self.label_ids, labels=np.array(self.labels),
                 speakers=np.array(self.speakers), paths=np.array(self.paths), settings=np.array(settings),
                 variants=np.array(self.variants or []),
                 training_only=self.training_only if self.training_only is not None else np.zeros(0, dtype=bool))

    @classmethod
    def load(cls, path: Path) -> "FeatureTable":
        try:
            with np.load(path, allow_pickle=False) as data:
                settings = str(data["settings"]) if "settings" in data else ""
                variants = data["variants"].tolist() if "variants" in data else []
                training_only = data["training_only"] if "training_only" in data else np.zeros(0, dtype=bool)
                return cls(features=data["features"], label_ids=data["label_ids"], labels=data["labels"].tolist(),
                           speakers=data["speakers"].tolist(), paths=data["paths"].tolist(),
                           settings=FeatureSettings.model_validate_json(settings) if settings else None,
                           variants=variants or None, training_only=training_only if len(training_only) else None)
        except (OSError, ValueError, KeyError) as error:
            raise FeatureTableError(f"{path}: not a readable feature table ({error})") from None

    def check_matches(self, settings: FeatureSettings, source: Path | str) -> None:
        """Refuse a table made with other feature settings (or of another input shape) than `settings`."""
        if self.settings is not None and self.settings.model_dump(exclude=SERVING_ONLY_SETTINGS) != \
                settings.model_dump(exclude=SERVING_ONLY_SETTINGS):
            differing = sorted(k for k, v in settings.model_dump().items() if getattr(self.settings, k) != v)
            raise FeatureTableError(f"{source}: features made with other settings ({', '.join(differing)} differ "
                                    "from the model's); recompute them with --data")
        expected = (settings.input_frames, settings.n_coefficients)
        if tuple(self.features.shape[-2:]) != expected:
            raise FeatureTableError(f"{source}: features of shape {tuple(self.features.shape[-2:])} per clip, the "
                                    f"model's settings need {expected} (frames, coefficients); recompute them")
