"""Checkpoints of the ASR-multitask model: the CTC pre-trained encoder, and the servable emotion model.

- A pre-trained encoder folder (`save_pretrained`): `ctc.safetensors` (the network without the
  emotion embedding), `tokenizer.model` (its BPE units) and `ctc.json` (config, sha256 of both files,
  what it was trained on). It has no emotion labels, so it is not a model card and the registry does
  not list it; fine-tuning reads it (`load_pretrained`).
- A fine-tuned model is a registry checkpoint (model/checkpoint.py): card.json with architecture
  `asr-multitask` (or `cnn-blstm-sa` for the baseline), weights.safetensors, and for a model that
  transcribes, `tokenizer.model` named with its sha256 in the card's architecture_options.
"""

import datetime
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from emostream.model.asr_multitask import AsrMultitaskConfig, AsrMultitaskTransformer, CnnBlstmSa, CnnBlstmSaConfig
from emostream.model.checkpoint import (
    CheckpointError,
    load_weights,
    read_card,
    save_checkpoint,
    sha256_of,
    verified_file,
)
from emostream.model.logmel import LOGMEL_SETTINGS
from emostream.model.tokenizer import TOKENIZER_FILE, BpeTokenizer
from emostream.schemas.model_card import FeatureSettings, ModelCard
from safetensors.torch import load_file, save_file
from torch import nn

PRETRAINED_DESCRIPTION_FILE = "ctc.json"
PRETRAINED_WEIGHTS_FILE = "ctc.safetensors"
PRETRAINED_FORMAT = 1
ASR_MULTITASK_ARCHITECTURE = "asr-multitask"
BASELINE_ARCHITECTURE = "cnn-blstm-sa"


@dataclass
class PretrainedEncoder:
    """A CTC pre-trained network (no emotion embedding) and its BPE units."""

    config: AsrMultitaskConfig
    state: dict[str, torch.Tensor]
    tokenizer: BpeTokenizer
    training: dict[str, Any]

    def as_tuple(self) -> tuple[AsrMultitaskConfig, dict[str, torch.Tensor], BpeTokenizer]:
        """What model/asr_training.py `finetune(pretrained=...)` takes."""
        return self.config, self.state, self.tokenizer


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}


def save_pretrained(folder: Path, model: AsrMultitaskTransformer, tokenizer: BpeTokenizer,
                    training: dict[str, Any]) -> Path:
    """Write a pre-trained encoder folder; returns its description file."""
    if model.config.emotion_token:
        raise ValueError("save_pretrained writes CTC-only networks (emotion_token=False)")
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / PRETRAINED_WEIGHTS_FILE
    save_file(_tensors(model), str(weights))
    tokenizer_path = tokenizer.save(folder / TOKENIZER_FILE)
    description = {
        "format": PRETRAINED_FORMAT,
        "config": model.config.to_dict(),
        "features": LOGMEL_SETTINGS.model_dump(mode="json"),
        "weights_file": weights.name,
        "weights_sha256": sha256_of(weights),
        "tokenizer_file": tokenizer_path.name,
        "tokenizer_sha256": sha256_of(tokenizer_path),
        "training": training,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path = folder / PRETRAINED_DESCRIPTION_FILE
    path.write_text(json.dumps(description, indent=2) + "\n")
    return path


def _config(cls: type, options: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in known})


def load_pretrained(folder: Path) -> PretrainedEncoder:
    """Read a pre-trained encoder folder, verifying both files' sha256."""
    path = folder / PRETRAINED_DESCRIPTION_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {PRETRAINED_DESCRIPTION_FILE}; not a CTC pre-trained encoder "
                              "(emostream asr-pretrain writes one)")
    try:
        description = json.loads(path.read_text())
        config = _config(AsrMultitaskConfig, description["config"])
        weights = verified_file(folder, description["weights_file"], description["weights_sha256"])
        tokenizer_path = verified_file(folder, description["tokenizer_file"], description["tokenizer_sha256"],
                                       what="tokenizer")
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a valid pre-trained encoder description ({error})") from None
    if description.get("format") != PRETRAINED_FORMAT:
        raise CheckpointError(f"{path}: format {description.get('format')!r}, expected {PRETRAINED_FORMAT}")
    return PretrainedEncoder(config, load_file(str(weights)), BpeTokenizer.load(tokenizer_path),
                             description.get("training", {}))


def save_emotion_model(folder: Path, model: nn.Module, *, name: str, version: str, labels: list[str],
                       tokenizer: BpeTokenizer | None, training: dict[str, Any],
                       metrics: dict[str, Any] | None = None, features: FeatureSettings = LOGMEL_SETTINGS
                       ) -> ModelCard:
    """Write a servable checkpoint of a fine-tuned transformer (transcripts when `tokenizer` is given)
    or of the baseline."""
    folder.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = model.config.to_dict()  # type: ignore[operator]
    if isinstance(model, CnnBlstmSa):
        architecture = BASELINE_ARCHITECTURE
    else:
        architecture = ASR_MULTITASK_ARCHITECTURE
        options["transcribes"] = tokenizer is not None
        if tokenizer is not None:
            tokenizer_path = tokenizer.save(folder / TOKENIZER_FILE)
            options.update(tokenizer_file=tokenizer_path.name, tokenizer_sha256=sha256_of(tokenizer_path))
    card = ModelCard(name=name, version=version, architecture=architecture, labels=labels, features=features,
                     architecture_options=options,
                     parameter_count=sum(p.numel() for p in model.parameters() if p.requires_grad),
                     weights_file="", weights_sha256="", training=training, metrics=metrics or {},
                     created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    model.cpu()
    return save_checkpoint(model, card, folder)


def load_emotion_network(folder: Path) -> tuple[nn.Module, BpeTokenizer | None, ModelCard]:
    """The network of an `asr-multitask` or `cnn-blstm-sa` checkpoint (eval mode), its tokenizer
    where it transcribes, and its card; both files verified against the card's sha256."""
    card = read_card(folder)
    options = card.architecture_options
    model: nn.Module
    if card.architecture == BASELINE_ARCHITECTURE:
        model = CnnBlstmSa(_config(CnnBlstmSaConfig, {**options, "num_classes": len(card.labels)}))
    elif card.architecture == ASR_MULTITASK_ARCHITECTURE:
        model = AsrMultitaskTransformer(_config(AsrMultitaskConfig, {**options, "num_classes": len(card.labels),
                                                                     "emotion_token": True}))
    else:
        raise CheckpointError(f"{folder}: architecture {card.architecture!r} is not an ASR-multitask checkpoint")
    model.load_state_dict(load_weights(folder, card))
    model.eval()
    tokenizer = None
    if options.get("transcribes"):
        tokenizer = BpeTokenizer.load(verified_file(folder, options["tokenizer_file"], options["tokenizer_sha256"],
                                                    what="tokenizer"))
    return model, tokenizer, card
