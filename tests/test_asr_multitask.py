"""The ASR-multitask transformer (seed 001): sizes, equation 8, the emotion-token path, CTC transfer."""

import math

import pytest
import torch
from emostream.model.asr_multitask import (
    SMALL,
    AsrMultitaskConfig,
    AsrMultitaskTransformer,
    CnnBlstmSa,
    CnnBlstmSaConfig,
    greedy_ctc_decode,
    load_ctc_encoder,
    multitask_loss,
    subsampled_frames,
)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_configuration_is_constructible_and_counted() -> None:
    model = AsrMultitaskTransformer(AsrMultitaskConfig())
    block = 4 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 2 * 2 * 512  # attention, FFN, two norms
    subsampling = (9 * 512 + 512) + (25 * 512 * 512 + 512) + (512 * 12 * 512 + 512)  # F' = 12 of 80
    heads = (512 * 5001 + 5001) + 512 + (512 * 4 + 4)
    assert count(model) == 18 * block + subsampling + heads == 69_016_461


def test_subsampling_is_one_sixth_in_time() -> None:
    frames = torch.tensor([100, 301, 450])
    model = AsrMultitaskTransformer(SMALL).eval()
    log_probs, lengths, emotion = model(torch.randn(3, 450, 80), frames)
    assert lengths.tolist() == subsampled_frames(frames).tolist()
    assert [n // 6 for n in frames.tolist()] == pytest.approx(lengths.tolist(), abs=2)  # valid convs: edges
    assert log_probs.shape == (int(lengths.max()), 3, SMALL.vocabulary + 1) and emotion.shape == (3, 8)


def test_emotion_token_output_depends_on_the_whole_utterance_and_ignores_padding() -> None:
    torch.manual_seed(0)
    model = AsrMultitaskTransformer(SMALL).eval()
    speech = torch.randn(1, 200, 80)
    padded = torch.cat([speech, torch.randn(1, 100, 80) * 5], dim=1)
    with torch.no_grad():
        _, _, alone = model(speech, torch.tensor([200]))
        _, _, with_padding = model(padded, torch.tensor([200]))
        changed = speech.clone()
        changed[:, 150:] += 1.0
        _, _, other = model(changed, torch.tensor([200]))
    torch.testing.assert_close(with_padding, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(other, alone)


def test_loss_is_equation_8_on_a_toy_batch() -> None:
    # Emotion: logits [0, ln 3] for label 1 -> CE = -ln(3/4). CTC: 2 frames, 1 target "a" (id 1) with
    # log-probs such that the 3 alignments (a, a), (a, blank), (blank, a) have p = 0.5*0.5 each:
    # CTC = -ln(0.75), divided by the target length 1.
    emotion = torch.tensor([[0.0, math.log(3.0)]])
    half = math.log(0.5)
    log_probs = torch.tensor([[[half, half]], [[half, half]]])  # (T=2, B=1, V=2): blank and "a"
    total, cross_entropy, ctc = multitask_loss(emotion, torch.tensor([1]), log_probs, torch.tensor([2]),
                                               torch.tensor([[1]]), torch.tensor([1]), alpha=0.6)
    assert float(cross_entropy) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(ctc) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(total) == pytest.approx(-math.log(0.75) * 1.6, abs=1e-6)


def test_greedy_decoding_merges_repeats_and_drops_blanks() -> None:
    best = [0, 3, 3, 0, 3, 5, 5, 0]  # blank, c, c, blank, c, e, e, blank (outputs = piece id + 1)
    log_probs = torch.full((len(best), 1, 6), -10.0)
    for t, output in enumerate(best):
        log_probs[t, 0, output] = 0.0
    assert greedy_ctc_decode(log_probs, torch.tensor([8])) == [[2, 2, 4]]
    assert greedy_ctc_decode(log_probs, torch.tensor([3])) == [[2]]


def test_ctc_checkpoint_transfers_its_encoder_and_adds_the_emotion_parts() -> None:
    torch.manual_seed(1)
    ctc_only = AsrMultitaskTransformer(AsrMultitaskConfig(**{**SMALL.to_dict(), "emotion_token": False}))
    multitask = AsrMultitaskTransformer(SMALL)
    fresh = load_ctc_encoder(multitask, ctc_only.state_dict())
    assert fresh == ["emotion_embedding", "emotion_head.bias", "emotion_head.weight"]
    for name, tensor in ctc_only.state_dict().items():
        torch.testing.assert_close(multitask.state_dict()[name], tensor, msg=name)
    with pytest.raises(ValueError, match="lacks encoder weights"):
        load_ctc_encoder(multitask, {k: v for k, v in ctc_only.state_dict().items() if "encoder.layers.0." not in k})


def test_baseline_shapes() -> None:
    model = CnnBlstmSa(CnnBlstmSaConfig(num_classes=8)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 300, 80), torch.tensor([300, 120]))
    assert logits.shape == (2, 8)
