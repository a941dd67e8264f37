"""The tiny ASR-multitask model the ASR tests share, trained on a few real FSDD clips.

Twelve clips (speakers george and jackson saying zero..five, take 0 of each) are CTC pre-trained
(`pretrain_digits`), then fine-tuned with TL+MTL to tell the two speakers apart (the stand-in
"emotion") and written as a servable registry checkpoint (`write_served_checkpoint`). conftest.py
builds each once per test session (`asr_digits`, `asr_pretrained`, `asr_checkpoint`): the training
tests and the worker test serve the same weights, and the training is paid for once.

Training runs on one torch thread: tiny networks only lose to intra-op synchronisation on a loaded
2-core machine, and one thread makes the weights the same on every run.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
from emostream.model.asr_checkpoint import save_emotion_model
from emostream.model.asr_corpus import TranscribedClip, load_fsdd
from emostream.model.asr_multitask import AsrMultitaskConfig, AsrMultitaskTransformer, CnnBlstmSaConfig
from emostream.model.asr_training import FineTuningMode, UtteranceSet, extract_utterances, finetune, pretrain_ctc
from emostream.model.recipes import TrainingRecipe, asr_finetuning_recipe, asr_pretraining_recipe
from emostream.model.tokenizer import BpeTokenizer
from emostream.model.training import EpochRecord
from emostream.schemas.model_card import ModelCard

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
FSDD_MISSING = f"FSDD not found at {FSDD}"
CPU = torch.device("cpu")
# a few hundred thousand parameters: trains in seconds on two cores
TINY = AsrMultitaskConfig(subsampling_channels=16, d_model=64, heads=2, ffn_dim=128, blocks=2, vocabulary=24,
                          num_classes=2, dropout=0.0)
TINY_BASELINE = CnnBlstmSaConfig(channels=8, hidden=16, heads=2)
WORDS = ("zero", "one", "two", "three", "four", "five")
SPEAKERS = ["george", "jackson"]  # the fine-tuned model's labels, in class order
SERVED_NAME = "asr-fsdd"  # the served checkpoint's card name and version
SERVED_VERSION = "0"


def fsdd_available() -> bool:
    return (FSDD / "labels.csv").is_file()


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def digit_clips(speakers: Sequence[str] = tuple(SPEAKERS), words: Sequence[str] = WORDS) -> list[TranscribedClip]:
    """Take 0 of each (speaker, word) in FSDD's order, labelled with the speaker."""
    return [TranscribedClip(c.path, c.transcript, c.speaker, label=c.speaker) for c in load_fsdd(FSDD)
            if c.speaker in speakers and c.transcript in words and c.path.stem.endswith("_0")]


def read_clip(clip: TranscribedClip) -> tuple[np.ndarray, int]:
    """A clip's float32 samples in [-1, 1] and its rate (FSDD: 8 kHz mono)."""
    audio, rate_hz = sf.read(str(clip.path), dtype="float32")
    return audio, rate_hz


def digit_utterances() -> UtteranceSet:
    """Two speakers saying six digit words: 12 utterances."""
    utterances, errors = extract_utterances(digit_clips())
    assert not errors and len(utterances) == 12, errors
    return utterances


class Pretrained(NamedTuple):
    """The CTC pre-trained network (no emotion embedding), its BPE units and its loss per epoch."""

    model: AsrMultitaskTransformer
    tokenizer: BpeTokenizer
    history: list[EpochRecord]

    def encoder(self) -> tuple[AsrMultitaskConfig, dict[str, torch.Tensor], BpeTokenizer]:
        """What `finetune(pretrained=...)` takes."""
        return self.model.config, self.model.state_dict(), self.tokenizer


def pretrain_digits(digits: UtteranceSet) -> Pretrained:
    recipe = asr_pretraining_recipe(epochs=120, batch_size=12, learning_rate=2e-3, compile=False)
    with single_thread():
        model, tokenizer, history = pretrain_ctc(digits, TINY, recipe, CPU, progress=False)
    return Pretrained(model, tokenizer, history)


@dataclass(frozen=True)
class ServedCheckpoint:
    """A TL+MTL fine-tuned model written as a registry checkpoint folder (it transcribes)."""

    folder: Path
    card: ModelCard
    recipe: TrainingRecipe


def write_served_checkpoint(folder: Path, digits: UtteranceSet, pretrained: Pretrained) -> ServedCheckpoint:
    recipe = asr_finetuning_recipe(epochs=30, batch_size=6, learning_rate=1e-3, compile=False)
    with single_thread():
        tuned = finetune(digits, SPEAKERS, FineTuningMode.TL_MTL, recipe, CPU, pretrained=pretrained.encoder(),
                         progress=False)
    card = save_emotion_model(folder, tuned.model, name=SERVED_NAME, version=SERVED_VERSION, labels=SPEAKERS,
                              tokenizer=tuned.tokenizer, training={"recipe": recipe.to_dict()})
    return ServedCheckpoint(folder, card, recipe)
