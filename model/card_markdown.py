"""Render a checkpoint's card.json as MODEL_CARD.md (run after training or after updating metrics).

    python -m emostream.model.card_markdown model/checkpoints/plb-ravdess8
"""

import json
import sys
from pathlib import Path

from emostream.model.asr_checkpoint import ASR_MULTITASK_ARCHITECTURE, BASELINE_ARCHITECTURE
from emostream.model.checkpoint import read_card
from emostream.schemas.model_card import ModelCard


def _architecture_lines(card: ModelCard) -> list[str]:
    """What the network is and what it reads, in the words of its own design notes."""
    features = card.features
    if card.architecture in (ASR_MULTITASK_ARCHITECTURE, BASELINE_ARCHITECTURE):
        transcribes = card.architecture_options.get("transcribes", False)
        network = (f"Architecture `{card.architecture}` (see model/ASR_MULTITASK.md), {card.parameter_count:,} "
                   f"trainable parameters; "
                   f"{'results carry the greedy CTC transcript' if transcribes else 'no transcript'}.")
        inputs = (f"{features.n_coefficients}-band log-mel ({features.kind}), audio resampled to "
                  f"{features.sample_rate_hz} Hz, window {features.n_fft} samples every {features.hop_length}; "
                  f"the whole utterance at any length")
    else:
        network = (f"Architecture `{card.architecture}` (see model/PLB.md), {card.parameter_count:,} trainable "
                   f"parameters ({card.parameter_count_with_bn_statistics:,} counting BatchNorm statistics, as "
                   f"Table 1 of the thesis).")
        inputs = (f"{features.kind.upper()} x {features.n_coefficients}, audio resampled to "
                  f"{features.sample_rate_hz} Hz, padded / cut to {features.input_samples:,} samples; longer "
                  f"audio: {features.long_input} (hop {features.window_hop_samples:,} samples); onset "
                  f"normalisation: {features.onset_lead_in_s} s lead-in")
    return [network, "", f"- Labels (output order): {', '.join(card.labels)}", f"- Input: {inputs}"]


def render(folder: Path) -> str:
    card = read_card(folder)
    lines = [
        f"# Model card: {card.name} v{card.version}",
        "",
        *_architecture_lines(card),
        f"- Weights: `{card.weights_file}`, sha256 `{card.weights_sha256}`",
        f"- Created: {card.created_at}",
        "",
        f"- Scores: softmax(logits / {card.score_temperature:g}) (temperature scaling; 1 = none)",
        "",
        "## Training",
        "```json",
        json.dumps({k: v for k, v in card.training.items() if k != "learning_curve"}, indent=1),
        "```",
        *_learning_curve(card.training.get("learning_curve", [])),
        "",
        "## Measured figures",
    ]
    for name, figures in card.metrics.items():
        lines += [f"### {name}", "```json", json.dumps(figures, indent=1), "```", ""]
    if card.notes:
        lines += ["## Notes", *(f"- {note}" for note in card.notes), ""]
    return "\n".join(lines) + "\n"


def _learning_curve(records: list[dict[str, object]], every: int = 10) -> list[str]:
    """Every `every`-th epoch (and the last) of the training history as a table."""
    if not records:
        return []
    shown = [r for r in records if (int(r["epoch"]) + 1) % every == 0 or r is records[-1]]
    lines = ["", "Learning curve (training set; accuracy on mixed / augmented batches where the recipe mixes):", "",
             "| epoch | loss | train accuracy | learning rate | s / epoch |", "|---|---|---|---|---|"]
    for r in shown:
        lines.append(f"| {int(r['epoch']) + 1} | {float(r['loss']):.3f} | {100 * float(r['train_accuracy']):.1f} % "
                     f"| {float(r['learning_rate']):.2e} | {float(r['seconds']):.1f} |")
    return lines


def main() -> None:
    folder = Path(sys.argv[1])
    (folder / "MODEL_CARD.md").write_text(render(folder))
    print(folder / "MODEL_CARD.md")


if __name__ == "__main__":
    main()
