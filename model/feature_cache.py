"""MFCC features of a whole corpus, computed once (in parallel) and cached as one .npz file."""

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from emostream.model.audio_io import AudioInputError, read_audio
from emostream.model.datasets import LabelledClip
from emostream.model.feature_table import FeatureTable
from emostream.model.features import utterance_windows
from emostream.model.waveform_augment import variant
from emostream.schemas.model_card import FeatureSettings


def _clip_features(args: tuple[str, dict[str, object], list[str] | None, int]) -> np.ndarray | str:
    path, settings_dict, variants, seed = args
    settings = FeatureSettings.model_validate(settings_dict)
    try:
        audio, sample_rate_hz = read_audio(Path(path))
    except AudioInputError as error:
        return str(error)
    # Training uses one window per clip, as the thesis: the first `input_samples`, zero-padded.
    trimmed = settings.model_copy(update={"long_input": "trim"})
    if variants is None:
        return utterance_windows(audio, sample_rate_hz, trimmed)[0]
    clip_seed = int.from_bytes(hashlib.sha256(f"{seed}|{path}".encode()).digest()[:4], "little")
    return np.stack([utterance_windows(variant(audio, sample_rate_hz, name, clip_seed), sample_rate_hz, trimmed)[0]
                     for name in variants])


def cache_key(clips: list[LabelledClip], settings: FeatureSettings, variants: list[str] | None = None,
              seed: int = 0) -> str:
    digest = hashlib.sha256(json.dumps([settings.model_dump(), variants, seed], sort_keys=True).encode())
    for clip in clips:
        digest.update(f"{clip.path}|{clip.label}|{clip.speaker}\n".encode())
    return digest.hexdigest()[:16]


def extract_features(
    clips: list[LabelledClip], settings: FeatureSettings, labels: list[str] | None = None, workers: int = 2,
    variants: list[str] | None = None, seed: int = 0,
) -> tuple[FeatureTable, list[str]]:
    """Features of every readable clip, and one error message per clip that could not be used.

    With `variants` (names of model/waveform_augment.py, the first "original"), every clip gets one
    input window per variant: a (clips, variants, frames, coefficients) table, the feature bank.
    """
    if variants is not None and (not variants or variants[0] != "original"):
        variants = ["original", *[name for name in variants if name != "original"]]
    label_set = labels or sorted({clip.label for clip in clips})
    unknown = sorted({clip.label for clip in clips} - set(label_set))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the model's label set {label_set}")
    settings_dict = settings.model_dump()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        outputs = list(pool.map(_clip_features, [(str(clip.path), settings_dict, variants, seed) for clip in clips],
                                chunksize=16))
    kept = [(clip, output) for clip, output in zip(clips, outputs, strict=True) if isinstance(output, np.ndarray)]
    errors = [output for output in outputs if isinstance(output, str)]
    if not kept:
        raise ValueError(f"no usable clip among {len(clips)}; first error: {errors[0] if errors else 'none'}")
    table = FeatureTable(
        features=np.stack([output for _, output in kept]).astype(np.float32),
        label_ids=np.array([label_set.index(clip.label) for clip, _ in kept], dtype=np.int64),
        labels=list(label_set),
        speakers=[clip.speaker for clip, _ in kept],
        paths=[str(clip.path) for clip, _ in kept],
        settings=settings,
        variants=variants,
    )
    return table, errors


def cached_features(
    clips: list[LabelledClip], settings: FeatureSettings, cache_dir: Path, labels: list[str] | None = None,
    workers: int = 2, variants: list[str] | None = None,
) -> tuple[FeatureTable, list[str]]:
    """`extract_features`, reusing `cache_dir/<key>.npz` when the clips and settings are unchanged."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"features-{cache_key(clips, settings, variants)}.npz"
    errors_path = path.with_suffix(".errors.json")
    if path.is_file() and labels is None:
        return FeatureTable.load(path), json.loads(errors_path.read_text()) if errors_path.is_file() else []
    table, errors = extract_features(clips, settings, labels, workers, variants)
    table.save(path)
    errors_path.write_text(json.dumps(errors))
    return table, errors
