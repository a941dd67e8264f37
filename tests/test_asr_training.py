"""Training the ASR-multitask model through the one engine, on real speech: CTC pre-training learns
FSDD's spoken digits (loss falls, greedy decoding recovers the transcripts), the pre-trained encoder
moves into the multitask model through its checkpoint folder, each fine-tuning mode of Table 1
trains, an interrupted run resumes to the same weights, and the result serves through the registry
with its transcript. The pre-trained network and the served checkpoint are conftest's session
fixtures (tests/_asr_helpers.py), shared with tests/test_asr_workers_e2e.py."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from emostream.model.asr_checkpoint import load_pretrained, save_emotion_model, save_pretrained
from emostream.model.asr_training import (
    FineTuningMode,
    UtteranceSet,
    finetune,
    transcribe,
)
from emostream.model.recipes import asr_finetuning_recipe
from emostream.model.tokenizer import normalise_transcript

from tests._asr_helpers import (
    CPU,
    FSDD_MISSING,
    SPEAKERS,
    TINY,
    TINY_BASELINE,
    Pretrained,
    ServedCheckpoint,
    digit_clips,
    fsdd_available,
    read_clip,
    single_thread,
)

pytestmark = pytest.mark.skipif(not fsdd_available(), reason=FSDD_MISSING)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: intra-op threads only add synchronisation (30x the CPU time on a loaded 2-core machine)."""
    with single_thread():
        yield


def test_ctc_pretraining_learns_the_spoken_digits(asr_digits: UtteranceSet, asr_pretrained: Pretrained) -> None:
    model, tokenizer, history = asr_pretrained
    assert not model.config.emotion_token and tokenizer.vocabulary == TINY.vocabulary
    assert history[-1].loss < 0.2 * history[0].loss and history[-1].train_accuracy is None
    recovered = transcribe(model, tokenizer, asr_digits.features, CPU)
    exact = sum(got == normalise_transcript(want) for got, want in zip(recovered, asr_digits.transcripts, strict=True))
    assert exact >= 10, list(zip(recovered, asr_digits.transcripts, strict=True))


def test_pretrained_encoder_moves_into_the_multitask_model_through_its_folder(
        tmp_path: Path, asr_digits: UtteranceSet, asr_pretrained: Pretrained) -> None:
    model, tokenizer, _ = asr_pretrained
    save_pretrained(tmp_path / "ctc", model, tokenizer, {"data": "fsdd subset"})
    encoder = load_pretrained(tmp_path / "ctc")
    assert encoder.tokenizer.model_proto == tokenizer.model_proto and encoder.config == model.config
    recipe = asr_finetuning_recipe(epochs=1, batch_size=4, learning_rate=0.0, compile=False)  # lr 0: weights stay
    tuned = finetune(asr_digits, ["george", "jackson"], FineTuningMode.TL_MTL, recipe, CPU,
                     pretrained=encoder.as_tuple(), progress=False)
    assert tuned.initialised == ["emotion_embedding", "emotion_head.bias", "emotion_head.weight"]
    assert tuned.ctc_weight == pytest.approx(0.6) and set(tuned.history[0].losses) == {"cross_entropy", "ctc"}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tuned.model.state_dict()[name], tensor, msg=name)
    assert tuned.model.emotion_head.out_features == 2
    # the transcripts survive the move: the multitask model still reads the digits (the emotion
    # embedding in front of the sequence is one more key for every attention, so a marginal utterance
    # may decode otherwise)
    recovered = transcribe(tuned.model, encoder.tokenizer, asr_digits.features, CPU)
    before = transcribe(model, tokenizer, asr_digits.features, CPU)
    assert sum(a == b for a, b in zip(recovered, before, strict=True)) >= len(before) - 2, (recovered, before)
    exact = sum(got == normalise_transcript(want) for got, want in zip(recovered, asr_digits.transcripts, strict=True))
    assert exact >= 10, list(zip(recovered, asr_digits.transcripts, strict=True))


@pytest.mark.parametrize("mode", list(FineTuningMode))
def test_every_fine_tuning_mode_learns_the_labels(asr_digits: UtteranceSet, asr_pretrained: Pretrained,
                                                  mode: FineTuningMode) -> None:
    model, tokenizer, _ = asr_pretrained
    encoder = (model.config, model.state_dict(), tokenizer) if mode in (FineTuningMode.TL_MTL, FineTuningMode.TL) \
        else None
    config = TINY_BASELINE if mode is FineTuningMode.BASELINE else replace(TINY, vocabulary=TINY.vocabulary)
    recipe = asr_finetuning_recipe(epochs=40, batch_size=6, learning_rate=1e-3, compile=False)
    tuned = finetune(asr_digits, ["george", "jackson"], mode, recipe, CPU, pretrained=encoder, config=config,
                     progress=False)
    assert tuned.ctc_weight == (0.6 if mode is FineTuningMode.TL_MTL else 0.0)
    assert tuned.history[-1].loss < 0.5 * tuned.history[0].loss
    assert tuned.history[-1].train_accuracy >= 0.9, tuned.history[-1]


def test_a_mode_without_its_encoder_is_refused(asr_digits: UtteranceSet) -> None:
    recipe = asr_finetuning_recipe(epochs=1, compile=False)
    with pytest.raises(ValueError, match="tl: needs a pre-trained CTC encoder"):
        finetune(asr_digits, ["george", "jackson"], FineTuningMode.TL, recipe, CPU, progress=False)
    with pytest.raises(ValueError, match=r"labels \['george'\] are not in the class order"):
        finetune(asr_digits, ["jackson", "other"], FineTuningMode.SCRATCH, recipe, CPU, progress=False)


class Interrupted(Exception):
    pass


def test_interrupted_multitask_training_resumes_to_the_uninterrupted_weights(
        tmp_path: Path, asr_digits: UtteranceSet, asr_pretrained: Pretrained) -> None:
    model, tokenizer, _ = asr_pretrained
    # dropout draws from the global generator: its state must resume too
    encoder = (replace(model.config, dropout=0.1), model.state_dict(), tokenizer)
    recipe = asr_finetuning_recipe(epochs=4, batch_size=5, checkpoint_every_epochs=2, learning_rate=1e-3,
                                   compile=False)
    labels = ["george", "jackson"]
    straight = finetune(asr_digits, labels, FineTuningMode.TL_MTL, recipe, CPU, pretrained=encoder, progress=False)

    def stop(record) -> None:
        if record.epoch == 2:
            raise Interrupted

    state = tmp_path / "state.pt"
    with pytest.raises(Interrupted):
        finetune(asr_digits, labels, FineTuningMode.TL_MTL, recipe, CPU, pretrained=encoder, state_path=state,
                 progress=False, on_epoch_end=stop)
    resumed = finetune(asr_digits, labels, FineTuningMode.TL_MTL, recipe, CPU, pretrained=encoder, state_path=state,
                       progress=False)
    assert [h.epoch for h in resumed.history] == [0, 1, 2, 3]
    assert [h.loss for h in resumed.history] == pytest.approx([h.loss for h in straight.history], abs=1e-6)
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, msg=name, rtol=0, atol=1e-6)


def test_fine_tuned_model_serves_scores_and_its_transcript_through_the_registry(
        tmp_path: Path, asr_digits: UtteranceSet, asr_checkpoint: ServedCheckpoint) -> None:
    from emostream.model.features import resample
    from emostream.model.registry import load_model

    card = asr_checkpoint.card
    assert card.architecture == "asr-multitask" and card.architecture_options["transcribes"] is True
    assert card.training == {"recipe": asr_checkpoint.recipe.to_dict()}
    served = load_model(str(asr_checkpoint.folder))
    clips = digit_clips(speakers=("george",), words=("three", "five"))
    waveforms = []
    for clip in clips:
        audio, rate_hz = read_clip(clip)
        waveforms.append(resample(audio, rate_hz, 16_000))  # as the inference stage hands segments over
    predictions = served.predict(waveforms, 16_000)
    assert [p.transcript for p in predictions] == [c.transcript for c in clips]
    assert all(p.label == "george" and sum(p.scores.values()) == pytest.approx(1.0) for p in predictions)
    baseline = finetune(asr_digits, SPEAKERS, FineTuningMode.BASELINE,
                        asr_finetuning_recipe(epochs=1, compile=False), CPU, config=TINY_BASELINE, progress=False)
    save_emotion_model(tmp_path / "baseline", baseline.model, name="baseline", version="0",
                       labels=SPEAKERS, tokenizer=None, training={})
    assert load_model(str(tmp_path / "baseline")).predict(waveforms[:1], 16_000)[0].transcript is None
    assert np.isfinite(list(load_model(str(tmp_path / "baseline")).predict(waveforms, 16_000)[1].scores.values())).all()


def test_variable_length_training_is_eager_even_where_compiling_was_asked(
        asr_digits: UtteranceSet, caplog: pytest.LogCaptureFixture) -> None:
    recipe = asr_finetuning_recipe(epochs=1, batch_size=4, compile=True)
    with caplog.at_level("INFO", logger="emostream.model.training"):
        finetune(asr_digits, sorted(set(asr_digits.labels)), FineTuningMode.SCRATCH, recipe, CPU, config=TINY,
                 progress=False)
    assert "training eagerly: torch.compile of variable-length batches fails here" in caplog.text
    assert "epoch 1/1 eager" in caplog.text
