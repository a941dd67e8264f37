"""Small real checkpoints made inside the test run (no shipped weights needed)."""

from pathlib import Path

import torch
from emostream.model.checkpoint import save_checkpoint
from emostream.model.plb import PLBConfig, PLBNet, count_parameters
from emostream.schemas.model_card import FeatureSettings, ModelCard

FIXTURES = Path(__file__).parent / "fixtures"
SPEECH_WAV = FIXTURES / "speech.wav"


def write_checkpoint(folder: Path, labels: list[str], seed: int = 0, name: str = "test-plb") -> ModelCard:
    torch.manual_seed(seed)
    model = PLBNet(PLBConfig(num_classes=len(labels))).eval()
    card = ModelCard(name=name, version="0", architecture="plb", labels=labels, features=FeatureSettings(),
                     architecture_options=PLBConfig(num_classes=len(labels)).to_dict(),
                     parameter_count=count_parameters(model), weights_file="", weights_sha256="")
    return save_checkpoint(model, card, folder)
