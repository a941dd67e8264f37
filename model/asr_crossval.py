"""Speaker-independent folds of the ASR-multitask fine-tuning modes and the CNN-BLSTM-SA baseline
(Table 1's rows), held out on the same speakers as PLB's folds (model/crossval.py `split_folds`), so
the two models' figures sit side by side. Each fold resumes from its training state; a finished fold
is kept as JSON and skipped on a re-run."""

import json
import time
from collections.abc import Sequence
from pathlib import Path

import jiwer
import numpy as np
from emostream.model.asr_checkpoint import load_pretrained
from emostream.model.asr_corpus import TranscribedClip
from emostream.model.asr_multitask import AsrMultitaskConfig, CnnBlstmSaConfig
from emostream.model.asr_training import FineTuningMode, UtteranceSet, extract_utterances, finetune, predict_utterances
from emostream.model.crossval import split_folds
from emostream.model.metrics import fold_summary, score
from emostream.model.recipes import TrainingRecipe
from emostream.model.tokenizer import BpeTokenizer, normalise_transcript
from emostream.model.training import pick_device


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Characters substituted, deleted and inserted over the references' characters (jiwer), spaces
    included; an empty hypothesis costs its reference's length."""
    return float(jiwer.cer(list(references), list(hypotheses)))


def held_out_transcripts(tokenizer: BpeTokenizer, pieces: Sequence[Sequence[int]], transcripts: Sequence[str]
                         ) -> dict[str, object]:
    """Greedy transcripts of a held-out set against the normalised references, and their CER."""
    hypotheses = [tokenizer.decode(list(p)) for p in pieces]
    references = [normalise_transcript(t) for t in transcripts]
    return {"cer": round(character_error_rate(references, hypotheses), 4),
            "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(references, hypotheses))[:5]]}


def run_asr_fold(
    utterances: UtteranceSet, fold: int, folds: int, mode: FineTuningMode, recipe: TrainingRecipe, out_dir: Path,
    *, pretrained_folder: Path | None = None, config: AsrMultitaskConfig | CnnBlstmSaConfig | None = None,
    ctc_weight: float | None = None, device: str = "auto", progress: bool = True,
) -> dict[str, object]:
    """Fine-tune on every speaker but fold `fold`'s and score the held-out speakers (WAR, UAR,
    macro-F1, confusion; CER where the model has CTC units). Writes `fold-NN.json`."""
    result_path = out_dir / f"fold-{fold:02d}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    labels = sorted(set(utterances.labels))
    label_ids = np.array([labels.index(label) for label in utterances.labels])
    train, test = split_folds(label_ids, utterances.speakers, "speaker", folds, recipe.seed)[fold]
    held_out = utterances.subset(test.tolist())
    encoder = load_pretrained(pretrained_folder) if pretrained_folder is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tuned = finetune(utterances.subset(train.tolist()), labels, mode, recipe, pick_device(device),
                     pretrained=encoder.as_tuple() if encoder is not None else None, config=config,
                     ctc_weight=ctc_weight, state_path=out_dir / f"fold-{fold:02d}.state.pt", progress=progress,
                     description=f"{mode} fold {fold}", eval_set=held_out)
    train_seconds = time.time() - started
    logits, pieces = predict_utterances(tuned.model, held_out.features, pick_device(device))
    result: dict[str, object] = {
        "fold": fold, "mode": str(mode), "ctc_weight": tuned.ctc_weight,
        "pretrained": None if encoder is None else {"folder": str(pretrained_folder), **{
            k: encoder.training.get(k) for k in ("data", "utterances", "hours", "final_train_loss")}},
        "train_clips": len(train), "test_clips": len(test),
        "test_speakers": sorted(set(held_out.speakers)),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(train_seconds / max(1, len(tuned.history)), 1),
        "recipe": recipe.to_dict(),
        "final_train_loss": tuned.history[-1].loss if tuned.history else None,
        "final_train_accuracy": tuned.history[-1].train_accuracy if tuned.history else None,
        "learning_curve": [record.to_dict() for record in tuned.history],
        "held_out_transcripts": (held_out_transcripts(tuned.tokenizer, pieces, held_out.transcripts)
                                 if tuned.tokenizer is not None else None),
        **score(label_ids[test].tolist(), logits.argmax(axis=1).tolist(), labels),
        # for calibration fitted on held-out folds (benchmarks/calibration_report.py)
        "test_indices": test.tolist(), "test_label_ids": label_ids[test].tolist(),
        "test_logits": np.round(logits, 5).tolist(),
    }
    result_path.write_text(json.dumps(result, indent=1))
    (out_dir / f"fold-{fold:02d}.state.pt").unlink(missing_ok=True)
    return result


def run_asr_crossval(
    clips: Sequence[TranscribedClip], mode: FineTuningMode, recipe: TrainingRecipe, out_dir: Path, folds: int = 5,
    only_folds: Sequence[int] | None = None, **fold_options: object,
) -> tuple[dict[str, object], list[str]]:
    """Every (or each of `only_folds`) speaker fold of `mode`; the summary over the folds run, written
    to `summary.json`, and the messages of clips that could not be read."""
    utterances, errors = extract_utterances(clips)
    missing = [i for i, label in enumerate(utterances.labels) if not label]
    if missing:
        raise ValueError(f"{len(missing)} clips have no emotion label; speaker folds score emotions")
    results = [run_asr_fold(utterances, fold, folds, mode, recipe, out_dir, **fold_options)  # type: ignore[arg-type]
               for fold in range(folds) if only_folds is None or fold in only_folds]
    wars = [100 * float(r["war"]) for r in results]  # type: ignore[arg-type]
    uars = [100 * float(r["uar"]) for r in results]  # type: ignore[arg-type]
    summary = {
        "protocol": "speaker", "folds": folds, "folds_run": [r["fold"] for r in results], "mode": str(mode),
        "labels": sorted(set(utterances.labels)), "clips": len(utterances),
        "war_percent_per_fold": [round(w, 2) for w in wars],
        "war_percent": {k: round(v, 2) for k, v in fold_summary(wars).items()},
        "uar_percent_per_fold": [round(u, 2) for u in uars],
        "uar_percent": {k: round(v, 2) for k, v in fold_summary(uars).items()},
        "macro_f1_per_fold": [round(float(r["macro_f1"]), 4) for r in results],  # type: ignore[arg-type]
        "cer_per_fold": [(r["held_out_transcripts"] or {}).get("cer") for r in results],  # type: ignore[union-attr]
        "seconds_per_epoch_per_fold": [r["seconds_per_epoch"] for r in results],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary, errors
