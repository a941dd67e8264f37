"""The model registry: every servable model by name, each described by its checkpoint card.

Shipped checkpoints live in `model/checkpoints/<name>/` (card.json + weights). More folders can be
added with EMOSTREAM_MODEL_PATH (os.pathsep-separated directories holding `<name>/card.json`).
Architectures map to loader classes in LOADERS: a new model (ASR-multitask, GLAM, fusion) adds an
EmotionModel subclass and one entry here.
"""

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from emostream.model.base import EmotionModel
from emostream.model.checkpoint import CheckpointError, read_card
from emostream.schemas.model_card import ModelCard
from emostream.schemas.settings import DEFAULT_MODEL

SHIPPED_CHECKPOINTS = Path(__file__).parent / "checkpoints"


def _load_plb(folder: Path) -> EmotionModel:
    from emostream.model.plb_model import PLBEmotionModel

    return PLBEmotionModel(folder)


def _load_asr_multitask(folder: Path) -> EmotionModel:
    from emostream.model.asr_model import AsrMultitaskEmotionModel

    return AsrMultitaskEmotionModel(folder)


# the baseline is served by the same class (log-mel in, emotion scores out, no transcript)
LOADERS: dict[str, Callable[[Path], EmotionModel]] = {"plb": _load_plb, "asr-multitask": _load_asr_multitask,
                                                      "cnn-blstm-sa": _load_asr_multitask}


class UnknownModelError(LookupError):
    pass


# What `load_model` raises for a model that cannot be served: a name the registry does not know, or a
# checkpoint folder whose card or weights do not verify.
LOAD_ERRORS: tuple[type[Exception], ...] = (UnknownModelError, CheckpointError)


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("EMOSTREAM_MODEL_PATH", "").split(os.pathsep) if p]
    return [*extra, SHIPPED_CHECKPOINTS]


def model_folders() -> dict[str, Path]:
    """Name -> checkpoint folder; earlier search-path entries win."""
    found: dict[str, Path] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        for card_path in sorted(root.glob("*/card.json")):
            found.setdefault(card_path.parent.name, card_path.parent)
    return found


def list_cards() -> tuple[list[ModelCard], list[str]]:
    """The cards of every model on the search path, and one message per card that cannot be read (the
    others are still listed)."""
    cards, errors = [], []
    for folder in model_folders().values():
        try:
            cards.append(read_card(folder))
        except CheckpointError as error:
            errors.append(str(error))
    return cards, errors


def resolve(name_or_path: str) -> Path:
    """A registry name, or a path to a checkpoint folder."""
    path = Path(name_or_path)
    if (path / "card.json").is_file():
        return path
    folders = model_folders()
    if name_or_path not in folders:
        known = ", ".join(sorted(folders)) or "none"
        raise UnknownModelError(f"model {name_or_path!r} not found; available: {known}")
    return folders[name_or_path]


@lru_cache(maxsize=8)
def load_model(name_or_path: str = DEFAULT_MODEL) -> EmotionModel:
    """Load (once per process) the model with this registry name or checkpoint folder."""
    folder = resolve(name_or_path)
    card = read_card(folder)
    if card.architecture not in LOADERS:
        raise CheckpointError(f"{folder}: architecture {card.architecture!r} has no loader; "
                              f"known: {', '.join(LOADERS)}")
    return LOADERS[card.architecture](folder)
