"""Whole runs of the ASR-multitask recipes, from a corpus folder to a checkpoint folder (what the
`emostream asr-pretrain` and `asr-finetune` commands call). Both resume from
`<out>/training-state.pt` and remove it once the checkpoint is written."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emostream.model.asr_checkpoint import load_pretrained, save_emotion_model, save_pretrained
from emostream.model.asr_corpus import TranscribedClip
from emostream.model.asr_multitask import AsrMultitaskConfig, CnnBlstmSaConfig
from emostream.model.asr_training import FineTuningMode, extract_utterances, finetune, pretrain_ctc
from emostream.model.recipes import TrainingRecipe
from emostream.model.training import pick_device
from emostream.schemas.model_card import ModelCard

TRAINING_STATE_FILE = "training-state.pt"


def _curve(history: Sequence[Any]) -> list[dict[str, object]]:
    return [record.to_dict() for record in history]


def run_pretraining(clips: Sequence[TranscribedClip], config: AsrMultitaskConfig, recipe: TrainingRecipe,
                    out_folder: Path, data_description: str, device: str = "auto", progress: bool = True
                    ) -> tuple[Path, list[str]]:
    """CTC pre-training on `clips`; writes the encoder folder. Returns its description file and the
    messages of clips that could not be read."""
    utterances, errors = extract_utterances(clips)
    out_folder.mkdir(parents=True, exist_ok=True)
    state = out_folder / TRAINING_STATE_FILE
    model, tokenizer, history = pretrain_ctc(utterances, config, recipe, pick_device(device), state_path=state,
                                             progress=progress)
    model.cpu()
    path = save_pretrained(out_folder, model, tokenizer, {
        "data": data_description, "utterances": len(utterances), "speakers": len(set(utterances.speakers)),
        "hours": round(float(utterances.frames.sum()) / 100 / 3600, 3), "recipe": recipe.to_dict(),
        "final_train_loss": history[-1].loss if history else None, "learning_curve": _curve(history)})
    state.unlink(missing_ok=True)
    return path, errors


def run_finetuning(clips: Sequence[TranscribedClip], mode: FineTuningMode, recipe: TrainingRecipe,
                   out_folder: Path, *, name: str, version: str, data_description: str,
                   pretrained_folder: Path | None = None,
                   config: AsrMultitaskConfig | CnnBlstmSaConfig | None = None, ctc_weight: float | None = None,
                   device: str = "auto", progress: bool = True) -> tuple[ModelCard, list[str]]:
    """Emotion fine-tuning in `mode` on labelled, transcribed `clips`; writes a registry checkpoint.
    The class order is the sorted label set."""
    missing = [str(c.path) for c in clips if not c.label]
    if missing:
        raise ValueError(f"{len(missing)} clips have no emotion label (first: {missing[0]}); fine-tuning needs "
                         "a label per clip")
    utterances, errors = extract_utterances(clips)
    labels = sorted(set(utterances.labels))
    encoder = load_pretrained(pretrained_folder) if pretrained_folder is not None else None
    out_folder.mkdir(parents=True, exist_ok=True)
    state = out_folder / TRAINING_STATE_FILE
    tuned = finetune(utterances, labels, mode, recipe, pick_device(device),
                     pretrained=encoder.as_tuple() if encoder is not None else None, config=config,
                     ctc_weight=ctc_weight, state_path=state, progress=progress, description=name)
    training = {
        "data": data_description, "mode": str(mode), "ctc_weight": tuned.ctc_weight,
        "pretrained": None if encoder is None else {"folder": str(pretrained_folder), **{
            k: encoder.training.get(k) for k in ("data", "utterances", "hours", "final_train_loss")}},
        "clips": len(utterances), "speakers": sorted(set(utterances.speakers)),
        "class_counts": {label: utterances.labels.count(label) for label in labels},
        "recipe": recipe.to_dict(), "final_train_loss": tuned.history[-1].loss if tuned.history else None,
        "final_train_accuracy": tuned.history[-1].train_accuracy if tuned.history else None,
        "learning_curve": _curve(tuned.history),
    }
    card = save_emotion_model(out_folder, tuned.model, name=name, version=version, labels=labels,
                              tokenizer=tuned.tokenizer if tuned.ctc_weight > 0 else None, training=training)
    state.unlink(missing_ok=True)
    return card, errors
