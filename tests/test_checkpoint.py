"""Checkpoints: safetensors + card round trip, integrity check, registry."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _model_helpers import write_checkpoint
from emostream.model.checkpoint import CheckpointError, load_plb, sha256_of
from emostream.model.registry import UnknownModelError, load_model, model_folders
from safetensors.torch import load_file


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    card = write_checkpoint(tmp_path / "ckpt", ["angry", "calm", "happy"], seed=3)
    model, loaded_card = load_plb(tmp_path / "ckpt")
    assert loaded_card == card
    torch.manual_seed(3)
    from emostream.model.plb import PLBConfig, PLBNet

    original = PLBNet(PLBConfig(num_classes=3)).eval()
    x = torch.randn(2, 1, 196, 39)
    torch.testing.assert_close(model(x), original(x))


def test_weights_are_plain_tensors_loadable_without_code(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ckpt", ["a", "b"])
    tensors = load_file(str(tmp_path / "ckpt" / "weights.safetensors"))
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    assert card["labels"] == ["a", "b"]
    assert card["weights_sha256"] == sha256_of(tmp_path / "ckpt" / "weights.safetensors")


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ckpt", ["a", "b"])
    weights = tmp_path / "ckpt" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_plb(tmp_path / "ckpt")


def test_registry_finds_models_on_the_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path / "extra-model", ["x", "y"], name="extra-model")
    monkeypatch.setenv("EMOSTREAM_MODEL_PATH", str(tmp_path))
    assert model_folders()["extra-model"] == tmp_path / "extra-model"
    model = load_model(str(tmp_path / "extra-model"))
    assert model.labels == ("x", "y")
    prediction = model.predict([np.sin(np.linspace(0, 800, 16_000)).astype(np.float32) * 0.3], 16_000)[0]
    assert prediction.label in ("x", "y")
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UnknownModelError, match="available"):
        load_model("no-such-model")


def test_shipped_default_model_is_listed() -> None:
    folders = model_folders()
    assert "plb-ravdess8" in folders
    model = load_model("plb-ravdess8")
    assert model.labels == ("angry", "calm", "disgust", "fearful", "happy", "neutral", "sad", "surprised")
    assert model.card.parameter_count_with_bn_statistics == 95_353
    assert model.card.metrics, "the shipped card carries measured figures"
