"""The served fast path (torch MFCC + ONNX Runtime network) against the reference path (librosa MFCC +
the eager PLBNet), on real speech: max |score difference| <= 1e-3 and the same labels."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _model_helpers import FIXTURES, SPEECH_WAV
from emostream.model.checkpoint import CARD_FILE, load_plb, read_card, save_checkpoint
from emostream.model.fast_features import MfccTransform
from emostream.model.fast_network import FastPLBNet
from emostream.model.features import mfcc_frames, resample
from emostream.model.onnx_network import OnnxNetwork
from emostream.model.plb import PLBConfig, PLBNet, count_parameters
from emostream.model.plb_model import PLBEmotionModel
from emostream.model.registry import SHIPPED_CHECKPOINTS
from emostream.schemas.model_card import FeatureSettings, ModelCard

SCORE_TOLERANCE = 1e-3
SHIPPED = SHIPPED_CHECKPOINTS / "plb-ravdess8"
RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
RAVDESS_CLIPS = 24  # one clip in every ~50 of the 1,200, spread over actors and emotions


def speech_utterances() -> list[tuple[str, np.ndarray, int]]:
    """The fixture's three utterances, the whole 7.9 s file (two windows), each at 16 and 8 kHz."""
    audio, rate_hz = sf.read(SPEECH_WAV, dtype="float32")
    spans = json.loads((FIXTURES / "speech.json").read_text())["utterances"]
    pieces = [(f"utterance {i}", audio[s["start_ms"] * rate_hz // 1000 : s["end_ms"] * rate_hz // 1000])
              for i, s in enumerate(spans)] + [("whole file", audio)]
    return [(name, piece, rate_hz) for name, piece in pieces] + [
        (f"{name} at 8 kHz", resample(piece, rate_hz, 8_000), 8_000) for name, piece in pieces
    ]


def ravdess_clips() -> list[tuple[str, np.ndarray, int]]:
    labels = RAVDESS / "labels.csv"
    if not labels.is_file():
        return []
    paths = [line.split(",")[0] for line in labels.read_text().splitlines()[1:] if line]
    chosen = paths[:: max(1, len(paths) // RAVDESS_CLIPS)][:RAVDESS_CLIPS]
    clips = []
    for path in chosen:
        audio, rate_hz = sf.read(RAVDESS / path, dtype="float32")
        clips.append((path, audio if audio.ndim == 1 else audio.mean(axis=1), rate_hz))
    return clips


def assert_same_answers(reference: PLBEmotionModel, fast: PLBEmotionModel,
                        clips: list[tuple[str, np.ndarray, int]]) -> float:
    worst = 0.0
    for name, audio, rate_hz in clips:
        (expected,) = reference.predict([audio], rate_hz)
        (actual,) = fast.predict([audio], rate_hz)
        difference = max(abs(expected.scores[k] - actual.scores[k]) for k in expected.scores)
        assert difference <= SCORE_TOLERANCE, f"{name}: scores differ by {difference:.2e}"
        assert actual.label == expected.label, f"{name}: {actual.label} != {expected.label}"
        worst = max(worst, difference)
    return worst


@pytest.fixture(scope="module")
def shipped_models() -> Iterator[tuple[PLBEmotionModel, PLBEmotionModel]]:
    torch.set_num_threads(1)
    yield PLBEmotionModel(SHIPPED, fast=False), PLBEmotionModel(SHIPPED, fast=True)


def test_fast_path_gives_the_shipped_models_answers_on_speech(
    shipped_models: tuple[PLBEmotionModel, PLBEmotionModel],
) -> None:
    worst = assert_same_answers(*shipped_models, speech_utterances())
    print(f"speech fixture: max |score difference| {worst:.2e}")


@pytest.mark.skipif(not (RAVDESS / "labels.csv").is_file(), reason=f"no RAVDESS clips at {RAVDESS}")
def test_fast_path_gives_the_shipped_models_answers_on_ravdess(
    shipped_models: tuple[PLBEmotionModel, PLBEmotionModel],
) -> None:
    worst = assert_same_answers(*shipped_models, ravdess_clips())
    print(f"RAVDESS ({RAVDESS_CLIPS} clips): max |score difference| {worst:.2e}")


def test_batched_predict_equals_one_at_a_time(
    shipped_models: tuple[PLBEmotionModel, PLBEmotionModel],
) -> None:
    _, fast = shipped_models
    clips = speech_utterances()[:4]
    together = fast.predict([audio for _, audio, _ in clips], clips[0][2])
    for (_, audio, rate_hz), batched in zip(clips, together, strict=True):
        (alone,) = fast.predict([audio], rate_hz)
        assert alone.label == batched.label
        assert max(abs(alone.scores[k] - batched.scores[k]) for k in alone.scores) <= 1e-5


def normalised_checkpoint(folder: Path) -> Path:
    """A network with per-coefficient input statistics, a logit scale and a score temperature."""
    config = PLBConfig(num_classes=4, input_normalisation="per-coefficient", logit_scale=2.5)
    torch.manual_seed(3)
    network = PLBNet(config)
    features = torch.from_numpy(np.stack([
        mfcc_frames(resample(audio, rate_hz, 22_050), FeatureSettings()) for _, audio, rate_hz in speech_utterances()
    ]))
    network.fit_input_normalisation(features)
    network.eval()
    card = ModelCard(name="test-normalised", version="0", architecture="plb", labels=["a", "b", "c", "d"],
                     features=FeatureSettings(onset_lead_in_s=1.0), architecture_options=config.to_dict(),
                     parameter_count=count_parameters(network), score_temperature=1.7, weights_file="",
                     weights_sha256="")
    save_checkpoint(network, card, folder)
    return folder


def test_input_normalisation_logit_scale_and_temperature_survive_the_fast_path(tmp_path: Path) -> None:
    folder = normalised_checkpoint(tmp_path / "normalised")
    assert read_card(folder).score_temperature == 1.7
    assert "input_normalisation" in (folder / CARD_FILE).read_text()
    reference, fast = PLBEmotionModel(folder, fast=False), PLBEmotionModel(folder, fast=True)
    assert_same_answers(reference, fast, speech_utterances())


def test_a_call_normalised_model_gives_the_same_answers_on_both_paths(tmp_path: Path) -> None:
    """Each utterance measured against the call so far (model/call_statistics.py), fast and reference."""
    from emostream.model.call_statistics import CallPrior, CallStatistics

    folder = normalised_checkpoint(tmp_path / "call")
    raw = np.stack([mfcc_frames(resample(audio, rate_hz, 22_050), FeatureSettings())
                    for _, audio, rate_hz in speech_utterances()])
    prior = CallPrior.of(raw + 3.0, frames=400.0)
    card = read_card(folder)
    card.features = card.features.with_call_prior(prior.mean.tolist(), prior.std.tolist())
    (folder / CARD_FILE).write_text(card.model_dump_json(indent=2))
    reference, fast = PLBEmotionModel(folder, fast=False), PLBEmotionModel(folder, fast=True)
    assert reference.uses_call_statistics and fast.uses_call_statistics
    utterances = speech_utterances()
    calls = {"reference": CallStatistics(), "fast": CallStatistics()}
    for name, audio, rate_hz in utterances:  # one call, utterance after utterance
        (expected,) = reference.predict([audio], rate_hz, [calls["reference"]])
        (actual,) = fast.predict([audio], rate_hz, [calls["fast"]])
        difference = max(abs(expected.scores[k] - actual.scores[k]) for k in expected.scores)
        assert difference <= SCORE_TOLERANCE, f"{name}: scores differ by {difference:.2e}"
        assert expected.label == actual.label, name
    assert abs(calls["reference"].frames - calls["fast"].frames) <= len(utterances)  # floor frames may differ at 1e-4 dB
    batched = fast.predict([audio for _, audio, _ in utterances[:3]], utterances[0][2], [CallStatistics()] * 3)
    one_by_one_call = CallStatistics()
    for (_, audio, rate_hz), together in zip(utterances[:3], batched, strict=True):
        (alone,) = fast.predict([audio], rate_hz, [one_by_one_call])
        assert max(abs(alone.scores[k] - together.scores[k]) for k in alone.scores) <= 1e-5


def test_onnx_network_matches_the_eager_network() -> None:
    network, _ = load_plb(SHIPPED)
    rng = np.random.default_rng(0)
    inputs = (20 * rng.standard_normal((3, 1, 196, 39))).astype(np.float32)
    with torch.inference_mode():
        expected = network(torch.from_numpy(inputs)).numpy()
        rewritten = FastPLBNet(network).eval()(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(rewritten, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(OnnxNetwork(network)(inputs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kind", "coefficients"), [("mfcc", 39), ("logmel", 40)])
def test_torch_features_match_librosa_on_speech(kind: str, coefficients: int) -> None:
    settings = FeatureSettings(kind=kind, n_coefficients=coefficients)
    transform = MfccTransform(settings)
    for name, audio, rate_hz in speech_utterances():
        window = resample(audio, rate_hz, settings.sample_rate_hz)[: settings.input_samples]
        window = np.pad(window, (0, settings.input_samples - len(window)))
        expected = mfcc_frames(window, settings)
        actual = transform(window)
        assert actual.shape == expected.shape == (196, coefficients)
        # MFCC c0 reaches ~-1,100 in silence; 1e-2 there is float32 rounding of the FFT and log.
        np.testing.assert_allclose(actual, expected, atol=1e-2, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("options", [
    {"routing_softmax": "outputs"},
    {"routing_iterations": 1},
    {"pool_before_capsules": False, "num_classes": 4},
    {"input_normalisation": "per-coefficient", "logit_scale": 0.5},
    {"frame_batchnorm": False},
    {"shared_cbam": False},
    {"cross_attention_residual": False},
])
def test_rewritten_network_matches_plbnet_for_other_configs(options: dict[str, object]) -> None:
    torch.manual_seed(1)
    network = PLBNet(PLBConfig(**options)).eval()
    with torch.no_grad():  # statistics and affine parameters as training leaves them, not the identity
        for norm in (m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.running_mean.normal_(0.0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
    inputs = 20 * torch.randn(2, 1, 196, 39)
    with torch.inference_mode():
        expected = network(inputs)
        torch.testing.assert_close(FastPLBNet(network).eval()(inputs), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(OnnxNetwork(network)(inputs.numpy()), expected.numpy(), atol=1e-4, rtol=0)


def test_a_failed_export_falls_back_to_the_eager_network(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from emostream.model import plb_model

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("no exporter")

    monkeypatch.setattr(plb_model, "OnnxNetwork", broken)
    model = PLBEmotionModel(SHIPPED, fast=True)
    assert model.onnx_network is None and "ONNX export failed" in caplog.text
    (reference,) = PLBEmotionModel(SHIPPED, fast=False).predict([speech_utterances()[0][1]], 16_000)
    (served,) = model.predict([speech_utterances()[0][1]], 16_000)
    assert served.label == reference.label
