"""Checkpoints: weights in safetensors (no pickled code) beside a JSON model card with their sha256."""

import hashlib
import json
from pathlib import Path

import torch
from emostream.model.plb import PLBConfig, PLBNet
from emostream.schemas.model_card import ModelCard
from safetensors.torch import load_file, save_file

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder is missing a file, or its weights do not match its card."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model: torch.nn.Module, card: ModelCard, folder: Path) -> ModelCard:
    """Write weights + card; the card's weights_file and weights_sha256 are filled in here."""
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / WEIGHTS_FILE
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(weights_path), metadata={"name": card.name, "version": card.version})
    final = card.model_copy(update={"weights_file": WEIGHTS_FILE, "weights_sha256": sha256_of(weights_path)})
    (folder / CARD_FILE).write_text(json.dumps(final.model_dump(mode="json"), indent=2) + "\n")
    return final


def read_card(folder: Path) -> ModelCard:
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"{folder}: no {CARD_FILE}")
    try:
        return ModelCard.model_validate_json(card_path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{card_path}: not a valid model card ({error})") from None


def verified_file(folder: Path, file_name: str, expected_sha256: str, what: str = "weights") -> Path:
    """`folder / file_name`, after checking it exists and its sha256 is the expected one."""
    path = folder / file_name
    if not path.is_file():
        raise CheckpointError(f"{folder}: {what} file {file_name} missing")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise CheckpointError(f"{path}: sha256 {actual[:12]}... does not match the card's "
                              f"{expected_sha256[:12]}...")
    return path


def load_weights(folder: Path, card: ModelCard) -> dict[str, torch.Tensor]:
    """The card's weights, verified against its sha256."""
    return load_file(str(verified_file(folder, card.weights_file, card.weights_sha256)))


def load_plb(folder: Path) -> tuple[PLBNet, ModelCard]:
    """Load a PLB checkpoint, verifying the weights' sha256 against the card."""
    card = read_card(folder)
    weights = load_weights(folder, card)
    options = {k: v for k, v in card.architecture_options.items() if k in PLBConfig.__dataclass_fields__}
    config = PLBConfig(**{**options, "num_classes": len(card.labels)})
    model = PLBNet(config)
    model.load_state_dict(weights)
    model.eval()
    return model, card


def torch_threads(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def update_card(folder: Path, **fields: object) -> ModelCard:
    """Rewrite a card's descriptive fields (metrics, notes, training); the weights stay as they are."""
    card = read_card(folder).model_copy(update=fields)
    ModelCard.model_validate(card.model_dump())  # re-validate the updated fields
    (folder / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return card
