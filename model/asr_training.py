"""Training the ASR-multitask transformer (seed 001) and its baseline through the one engine
(model/training.py `run_training`): CTC pre-training, then emotion fine-tuning in the paper's modes.

Utterances keep their lengths: the log-mel features of a set are padded once to its longest
utterance and preloaded on the device with their frame counts; each batch is cut to its own longest
utterance rounded up to `FRAME_BUCKET_FRAMES` (a few distinct shapes for the compiled step, decided
on the host from the host copy of the lengths, so no sync). Transcripts become padded CTC targets
(BPE piece + 1) with their lengths.

Fine-tuning modes (Table 1):
- `tl+mtl`: the pre-trained encoder, L = CE + 0.6 CTC (equation 8): "Transformer (TL+MTL)";
- `tl`: the pre-trained encoder, CE only (alpha 0): "Transformer (TL)";
- `scratch`: no pre-training, CE only: "Transformer";
- `baseline`: CNN-BLSTM-SA, CE: "CNN-BLSTM-SA".
"""

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from emostream.model.asr_corpus import TranscribedClip
from emostream.model.asr_multitask import (
    AsrMultitaskConfig,
    AsrMultitaskTransformer,
    CnnBlstmSa,
    CnnBlstmSaConfig,
    greedy_ctc_decode,
    load_ctc_encoder,
    multitask_loss,
    subsampled_frames,
)
from emostream.model.logmel import LOGMEL_SETTINGS, logmel_frames
from emostream.model.recipes import TrainingRecipe
from emostream.model.tokenizer import BpeTokenizer
from emostream.model.training import EpochRecord, TrainingTask, run_training
from emostream.schemas.model_card import FeatureSettings
from torch import nn

log = logging.getLogger(__name__)

FRAME_BUCKET_FRAMES = 32  # a batch's frames are its longest utterance's, rounded up to this (0.32 s)
LENGTH_POOL_BATCHES = 32  # length bucketing: batches of a pool this many batches long are cut from it sorted
PAPER_CTC_WEIGHT = 0.6  # alpha of equation 8, "determined by experiment"


class FineTuningMode(StrEnum):
    TL_MTL = "tl+mtl"
    TL = "tl"
    SCRATCH = "scratch"
    BASELINE = "baseline"


DEFAULT_CTC_WEIGHT = {FineTuningMode.TL_MTL: PAPER_CTC_WEIGHT, FineTuningMode.TL: 0.0,
                      FineTuningMode.SCRATCH: 0.0, FineTuningMode.BASELINE: 0.0}


@dataclass
class UtteranceSet:
    """Log-mel features of transcribed utterances, in corpus order (host memory)."""

    features: list[np.ndarray]  # float32 (frames, n_mels) each, model/logmel.py
    transcripts: list[str]
    speakers: list[str]
    labels: list[str]  # emotion label per utterance; "" in ASR-only corpora
    settings: FeatureSettings = LOGMEL_SETTINGS

    def __len__(self) -> int:
        return len(self.features)

    @property
    def frames(self) -> np.ndarray:
        return np.array([len(f) for f in self.features], dtype=np.int64)

    def subset(self, indices: Sequence[int]) -> "UtteranceSet":
        return UtteranceSet([self.features[i] for i in indices], [self.transcripts[i] for i in indices],
                            [self.speakers[i] for i in indices], [self.labels[i] for i in indices], self.settings)


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(rate_hz)


def extract_utterances(clips: Sequence[TranscribedClip], settings: FeatureSettings = LOGMEL_SETTINGS
                       ) -> tuple[UtteranceSet, list[str]]:
    """Features of every readable clip, and one message per clip that could not be read; a
    ValueError naming the first when none could (a wrong folder, paths relative to elsewhere)."""
    features, kept, errors = [], [], []
    for clip in clips:
        try:
            audio, rate_hz = _read_mono(clip.path)
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            errors.append(f"{clip.path}: unreadable audio ({error})")
            continue
        features.append(logmel_frames(audio, rate_hz, settings))
        kept.append(clip)
    if clips and not kept:
        raise ValueError(f"none of the {len(clips)} clips could be read; first: {errors[0]}")
    return UtteranceSet(features, [c.transcript for c in kept], [c.speaker for c in kept],
                        [c.label for c in kept], settings), errors


def pad_sequences(rows: Sequence[np.ndarray], dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Rows of unequal length (first axis) -> zero-padded (N, longest, ...) and the lengths (N,)."""
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    padded = np.zeros((len(rows), max(1, int(lengths.max(initial=0))), *np.shape(rows[0])[1:]), dtype=dtype)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded, lengths


def utterance_fingerprint(*arrays: np.ndarray) -> str:
    """What a resume must find unchanged: shapes, lengths and targets, and a sample of the features."""
    digest = hashlib.sha256(repr([(a.shape, str(a.dtype)) for a in arrays]).encode())
    for array in arrays:
        step = max(1, len(array) // 64) if array.dtype == np.float32 else 1
        digest.update(np.ascontiguousarray(array[::step]).tobytes())
    return digest.hexdigest()[:16]


def ctc_targets(tokenizer: BpeTokenizer, transcripts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Padded CTC targets (N, longest) of BPE outputs (piece + 1) and their lengths."""
    return pad_sequences([np.array(tokenizer.ctc_targets(text), dtype=np.int64) for text in transcripts],
                         dtype=np.int64)


class UtteranceTask(TrainingTask):
    """Padded log-mel utterances on the device, optionally with CTC targets and emotion labels; the
    loss is the model's: CTC (pre-training), equation 8 (multitask), or cross-entropy (baseline,
    alpha 0)."""

    # Measured 2026-12-02 (torch 2.13, 200 synthetic utterances): compiling the step failed at the
    # second batch length (InductorError: ValueRangeError) after ~150 s and fell back to eager.
    eager_reason = ("torch.compile of variable-length batches fails here (InductorError ValueRangeError at the "
                    "second batch length, after ~150 s); model/ASR_MULTITASK.md")

    def __init__(self, utterances: UtteranceSet, device: torch.device, *, tokenizer: BpeTokenizer | None = None,
                 label_ids: np.ndarray | None = None, ctc_weight: float = 0.0,
                 eval_set: tuple[UtteranceSet, np.ndarray] | None = None, seed: int = 0,
                 length_bucketing: bool = True) -> None:
        if tokenizer is None and label_ids is None:
            raise ValueError("an utterance task needs CTC targets (a tokenizer), emotion labels, or both")
        features, frames = pad_sequences(utterances.features)
        arrays = [features, frames]
        self.device = device
        self.features = torch.from_numpy(features).to(device)
        self.frames = torch.from_numpy(frames).to(device)
        self.frames_host = frames
        self.examples = len(frames)
        self.ctc_weight = ctc_weight
        self.with_ctc = tokenizer is not None and (label_ids is None or ctc_weight > 0)
        self.with_emotion = label_ids is not None
        self.counts_correct = self.with_emotion
        self.targets = self.target_lengths = None
        if self.with_ctc:
            assert tokenizer is not None
            targets, target_lengths = ctc_targets(tokenizer, utterances.transcripts)
            self._check_ctc_lengths(frames, target_lengths)
            self.targets = torch.from_numpy(targets).to(device)
            self.target_lengths = torch.from_numpy(target_lengths).to(device)
            self.target_lengths_host = target_lengths
            arrays += [targets, target_lengths]
        if self.with_emotion:
            assert label_ids is not None
            self.label_ids = torch.from_numpy(np.asarray(label_ids, dtype=np.int64)).to(device)
            arrays.append(np.asarray(label_ids, dtype=np.int64))
        self.fingerprint = utterance_fingerprint(*arrays)
        self.eval_set = eval_set
        self.length_bucketing = length_bucketing
        self.batch_draw = torch.Generator().manual_seed(seed + 3)

    def generators(self) -> dict[str, torch.Generator]:
        return {"batch_order": self.batch_draw} if self.length_bucketing else {}

    def epoch_order(self, order: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Length bucketing: each pool of LENGTH_POOL_BATCHES batches of the shuffled order is sorted
        by length and cut into batches, and the batches are shuffled; a batch is padded to its
        longest utterance, so similar lengths waste less padding."""
        if not self.length_bucketing:
            return order
        lengths = torch.from_numpy(self.frames_host)[order]
        pool = batch_size * LENGTH_POOL_BATCHES
        grouped = torch.cat([order[start : start + pool][torch.argsort(lengths[start : start + pool], stable=True)]
                             for start in range(0, len(order), pool)])
        full = len(order) // batch_size
        batches = grouped[: full * batch_size].view(full, batch_size)
        return torch.cat([batches[torch.randperm(full, generator=self.batch_draw)].reshape(-1),
                          grouped[full * batch_size :]])

    @staticmethod
    def _check_ctc_lengths(frames: np.ndarray, target_lengths: np.ndarray) -> None:
        outputs = subsampled_frames(torch.from_numpy(frames)).numpy()
        too_short = int((outputs < target_lengths).sum())
        if too_short:
            log.warning("%d of %d utterances have fewer subsampled frames than BPE units; their CTC loss is "
                        "infinite and counted as 0 (zero_infinity)", too_short, len(frames))

    def identity(self) -> dict[str, str]:
        return {"data": self.fingerprint, "task": f"ctc={self.with_ctc},emotion={self.with_emotion},"
                                                  f"alpha={self.ctc_weight},bucketing={self.length_bucketing}"}

    def batch(self, indices: torch.Tensor, host_indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        longest = int(self.frames_host[host_indices].max())
        frames = min(self.features.shape[1], -(-longest // FRAME_BUCKET_FRAMES) * FRAME_BUCKET_FRAMES)
        batch: tuple[torch.Tensor, ...] = (self.features[indices, :frames], self.frames[indices])
        if self.with_ctc:
            assert self.targets is not None and self.target_lengths is not None
            units = max(1, int(self.target_lengths_host[host_indices].max()))
            batch += (self.targets[indices, :units], self.target_lengths[indices])
        if self.with_emotion:
            batch += (self.label_ids[indices],)
        return batch

    def loss(self, model: nn.Module, *batch: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        features, frames = batch[:2]
        if isinstance(model, CnnBlstmSa):
            logits = model(features, frames)
            labels = batch[-1]
            return F.cross_entropy(logits, labels), (logits.detach().argmax(dim=1) == labels).sum(), {}
        log_probs, lengths, emotion = model(features, frames)
        if not self.with_emotion:
            targets, target_lengths = batch[2:4]
            ctc = F.ctc_loss(log_probs, targets, lengths, target_lengths, zero_infinity=True)
            return ctc, torch.zeros((), dtype=torch.long, device=ctc.device), {}
        assert emotion is not None
        labels = batch[-1]
        correct = (emotion.detach().argmax(dim=1) == labels).sum()
        if not self.with_ctc:
            return F.cross_entropy(emotion, labels), correct, {}
        total, cross_entropy, ctc = multitask_loss(emotion, labels, log_probs, lengths, *batch[2:4],
                                                   alpha=self.ctc_weight)
        return total, correct, {"cross_entropy": cross_entropy, "ctc": ctc}

    def evaluate(self, model: nn.Module) -> float | None:
        if self.eval_set is None:
            return None
        utterances, label_ids = self.eval_set
        logits, _ = predict_utterances(model, utterances.features, self.device)
        return float(np.mean(logits.argmax(axis=1) == label_ids))


@torch.inference_mode()
def predict_utterances(model: nn.Module, features: Sequence[np.ndarray], device: torch.device, batch_size: int = 16
                       ) -> tuple[np.ndarray, list[list[int]]]:
    """Emotion logits (N, K) (empty (N, 0) for a CTC-only network) and greedy CTC pieces per utterance
    (empty lists for the baseline). Batches are padded to their longest utterance; the transformer
    masks the padding, the baseline (whose BLSTM would read it) runs one utterance at a time."""
    was_training = model.training
    model.eval()
    model.to(device)
    if isinstance(model, CnnBlstmSa):
        batch_size = 1
    logits, pieces = [], []
    with torch.inference_mode():  # no autograd graph (and the transformer layers' inference fast path)
        for start in range(0, len(features), batch_size):
            padded, frames = pad_sequences(features[start : start + batch_size])
            inputs, lengths = torch.from_numpy(padded).to(device), torch.from_numpy(frames).to(device)
            if isinstance(model, CnnBlstmSa):
                logits.append(model(inputs, lengths).float().cpu().numpy())
                pieces += [[] for _ in frames]
                continue
            log_probs, output_lengths, emotion = model(inputs, lengths)
            logits.append(emotion.float().cpu().numpy() if emotion is not None else np.zeros((len(frames), 0)))
            pieces += greedy_ctc_decode(log_probs.cpu(), output_lengths.cpu())
    model.train(was_training)
    return np.concatenate(logits) if logits else np.zeros((0, 0)), pieces


def transcribe(model: nn.Module, tokenizer: BpeTokenizer, features: Sequence[np.ndarray], device: torch.device
               ) -> list[str]:
    """Greedy CTC transcripts."""
    return [tokenizer.decode(p) for p in predict_utterances(model, features, device)[1]]


def pretrain_ctc(
    utterances: UtteranceSet,
    config: AsrMultitaskConfig,
    recipe: TrainingRecipe,
    device: torch.device,
    *,
    tokenizer: BpeTokenizer | None = None,
    state_path: Path | None = None,
    progress: bool = True,
    description: str = "asr-pretraining",
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> tuple[AsrMultitaskTransformer, BpeTokenizer, list[EpochRecord]]:
    """CTC pre-training (section 3.1) of the network without the emotion embedding. The tokenizer is
    trained on the utterances' transcripts with `config.vocabulary` pieces unless one is given."""
    if tokenizer is None:
        tokenizer = BpeTokenizer.train(utterances.transcripts, config.vocabulary)
    if tokenizer.vocabulary != config.vocabulary:
        raise ValueError(f"tokenizer has {tokenizer.vocabulary} pieces but the network config {config.vocabulary}")
    torch.manual_seed(recipe.seed)
    model = AsrMultitaskTransformer(replace(config, emotion_token=False))
    task = UtteranceTask(utterances, device, tokenizer=tokenizer, seed=recipe.seed)
    history = run_training(model, task, recipe, device, state_path, progress, description, on_epoch_end)
    return model, tokenizer, history


@dataclass
class FineTuned:
    model: nn.Module  # AsrMultitaskTransformer, or CnnBlstmSa for the baseline
    tokenizer: BpeTokenizer | None  # the CTC units, where the model was pre-trained or trained with CTC
    ctc_weight: float  # alpha of equation 8 in this run
    history: list[EpochRecord]
    initialised: list[str]  # names left as initialised when a pre-trained encoder was loaded


def finetune(
    utterances: UtteranceSet,
    labels: Sequence[str],
    mode: FineTuningMode,
    recipe: TrainingRecipe,
    device: torch.device,
    *,
    pretrained: tuple[AsrMultitaskConfig, dict[str, torch.Tensor], BpeTokenizer] | None = None,
    config: AsrMultitaskConfig | CnnBlstmSaConfig | None = None,
    ctc_weight: float | None = None,
    state_path: Path | None = None,
    progress: bool = True,
    description: str = "asr-finetuning",
    eval_set: UtteranceSet | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> FineTuned:
    """Emotion fine-tuning (section 3.2) on utterances whose `labels` are in `labels` (the class order).

    `pretrained` (config, CTC weights, tokenizer; model/asr_checkpoint.py `load_pretrained`) is
    required for tl+mtl and tl and refused otherwise. `config` is the network of scratch and baseline
    (its num_classes is set from `labels`). `ctc_weight` overrides the mode's alpha; alpha > 0 without
    pre-training trains a tokenizer on these transcripts with `config.vocabulary` pieces.
    """
    mode = FineTuningMode(mode)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for label in utterances.labels if label not in index})
    if unknown:
        raise ValueError(f"utterance labels {unknown} are not in the class order {list(labels)}")
    label_ids = np.array([index[label] for label in utterances.labels], dtype=np.int64)
    alpha = DEFAULT_CTC_WEIGHT[mode] if ctc_weight is None else ctc_weight
    needs_pretrained = mode in (FineTuningMode.TL_MTL, FineTuningMode.TL)
    if needs_pretrained != (pretrained is not None):
        raise ValueError(f"fine-tuning mode {mode}: " + ("needs a pre-trained CTC encoder" if needs_pretrained
                                                          else "trains without a pre-trained encoder; none is used"))
    if mode is FineTuningMode.BASELINE and alpha:
        raise ValueError("the CNN-BLSTM-SA baseline has no CTC head; ctc_weight must be 0")
    torch.manual_seed(recipe.seed)
    tokenizer: BpeTokenizer | None = None
    initialised: list[str] = []
    model: nn.Module
    if mode is FineTuningMode.BASELINE:
        base = config if isinstance(config, CnnBlstmSaConfig) else CnnBlstmSaConfig()
        model = CnnBlstmSa(replace(base, num_classes=len(labels)))
    elif pretrained is not None:
        ctc_config, ctc_state, tokenizer = pretrained
        model = AsrMultitaskTransformer(replace(ctc_config, emotion_token=True, num_classes=len(labels)))
        initialised = load_ctc_encoder(model, ctc_state)
    else:
        base = config if isinstance(config, AsrMultitaskConfig) else AsrMultitaskConfig()
        if alpha > 0:
            tokenizer = BpeTokenizer.train(utterances.transcripts, base.vocabulary)
        model = AsrMultitaskTransformer(replace(base, emotion_token=True, num_classes=len(labels)))
    task = UtteranceTask(utterances, device, tokenizer=tokenizer if alpha > 0 else None, label_ids=label_ids,
                         ctc_weight=alpha, seed=recipe.seed,
                         eval_set=None if eval_set is None else
                         (eval_set, np.array([index[label] for label in eval_set.labels], dtype=np.int64)))
    history = run_training(model, task, recipe, device, state_path, progress, description, on_epoch_end)
    return FineTuned(model, tokenizer, alpha, history, initialised)
