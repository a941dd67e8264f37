"""Render a checkpoint's card.json as MODEL_CARD.md (run after training or after updating metrics).

    python -m emostream.model.card_markdown model/checkpoints/plb-ravdess8
"""

import json
import sys
from pathlib import Path

from emostream.model.checkpoint import read_card


def render(folder: Path) -> str:
    card = read_card(folder)
    lines = [
        f"# Model card: {card.name} v{card.version}",
        "",
        (f"Architecture `{card.architecture}` (see model/PLB.md), {card.parameter_count:,} trainable parameters "
         f"({card.parameter_count_with_bn_statistics:,} counting BatchNorm statistics, as Table 1 of the thesis)."),
        "",
        f"- Labels (output order): {', '.join(card.labels)}",
        (f"- Input: {card.features.kind.upper()} x {card.features.n_coefficients}, audio resampled to "
         f"{card.features.sample_rate_hz} Hz, padded / cut to {card.features.input_samples:,} samples; longer "
         f"audio: {card.features.long_input} (hop {card.features.window_hop_samples:,} samples); onset "
         f"normalisation: {card.features.onset_lead_in_s} s lead-in"),
        f"- Weights: `{card.weights_file}`, sha256 `{card.weights_sha256}`",
        f"- Created: {card.created_at}",
        "",
        "## Training",
        "```json",
        json.dumps(card.training, indent=1),
        "```",
        "",
        "## Measured figures",
    ]
    for name, figures in card.metrics.items():
        lines += [f"### {name}", "```json", json.dumps(figures, indent=1), "```", ""]
    if card.notes:
        lines += ["## Notes", *(f"- {note}" for note in card.notes), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    folder = Path(sys.argv[1])
    (folder / "MODEL_CARD.md").write_text(render(folder))
    print(folder / "MODEL_CARD.md")


if __name__ == "__main__":
    main()
