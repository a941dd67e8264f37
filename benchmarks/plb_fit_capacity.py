"""Can the PLB network fit its training clips? Two measurements (model/PLB.md, "Dropout is what the
network cannot fit through"):

- `memorise`: train a fresh network on a random subset of RAVDESS clips (each speaker's clips
  standardised with their own statistics), Adam at a constant learning rate, no augmentation, and print
  every 10 epochs its training accuracy in train mode and its accuracy on the same clips in eval mode.
- `shipped`: a checkpoint's accuracy on the clips it was trained on, in eval mode with its running
  BatchNorm statistics, with those statistics re-estimated over the clips, and with batch statistics.

    python benchmarks/plb_fit_capacity.py memorise --features .devdata/ravdess.npz --clips 160 --dropout 0
    python benchmarks/plb_fit_capacity.py shipped --features .devdata/ravdess.npz --model plb-ravdess8-call
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from emostream.model.call_statistics import standardise_per_speaker
from emostream.model.checkpoint import load_plb
from emostream.model.feature_table import FeatureTable
from emostream.model.plb import PLBConfig, PLBNet
from emostream.model.recipes import TrainingRecipe
from emostream.model.registry import resolve
from emostream.model.training import predict_logits, train_plb
from emostream.schemas.settings import DEFAULT_MODEL

BATCH = 32
CPU = torch.device("cpu")


def accuracy(logits: np.ndarray, label_ids: np.ndarray) -> float:
    return round(float((logits.argmax(axis=1) == label_ids).mean()), 4)


def memorise(table: FeatureTable, clips: int, dropout: float, epochs: int, learning_rate: float) -> None:
    rows = np.random.default_rng(0).permutation(len(table.label_ids))[:clips]
    inputs = standardise_per_speaker(table.original_features(), table.speakers)[rows]
    label_ids = table.label_ids[rows]
    config = PLBConfig(num_classes=len(table.labels), dropout=dropout, input_normalisation="per-coefficient")
    recipe = TrainingRecipe(name="memorise", epochs=epochs, learning_rate=learning_rate, beta1=0.9, beta2=0.999,
                            schedule="constant", eval_every_epochs=10)
    _, history = train_plb(inputs, label_ids, config, recipe, CPU, progress=False, eval_set=(inputs, label_ids))
    for record in history:
        if record.eval_accuracy is not None:
            print(json.dumps({"clips": clips, "dropout": dropout, "epoch": record.epoch + 1,
                              "train_mode_accuracy": round(record.train_accuracy or 0.0, 4),
                              "eval_mode_accuracy_same_clips": round(record.eval_accuracy, 4),
                              "seconds_per_epoch": round(record.seconds, 1)}), flush=True)


def with_batch_statistics(model: PLBNet, inputs: np.ndarray, label_ids: np.ndarray, update: bool) -> float:
    """Accuracy with BatchNorm in train mode (dropout off), batches of 32 in a fixed random order; with
    `update`, the running statistics become the plain average over those batches (a re-estimate)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if update:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
    order = np.random.default_rng(0).permutation(len(inputs))[: len(inputs) // BATCH * BATCH]
    hits = 0
    model.train()  # TimeBatchNorm picks its path from its own mode, so the whole network
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d):
            module.eval()
    with torch.no_grad():
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            logits = model(torch.from_numpy(inputs[rows]).float().unsqueeze(1))
            hits += int((logits.argmax(dim=1).numpy() == label_ids[rows]).sum())
    model.eval()
    return round(hits / len(order), 4)


def shipped(table: FeatureTable, name: str) -> None:
    model, card = load_plb(resolve(name))
    inputs = table.original_features()
    if card.features.call_normalisation:
        inputs = standardise_per_speaker(inputs, table.speakers)
    running = accuracy(predict_logits(model, inputs, CPU), table.label_ids)
    batch = with_batch_statistics(model, inputs, table.label_ids, update=False)
    with_batch_statistics(model, inputs, table.label_ids, update=True)
    re_estimated = accuracy(predict_logits(model, inputs, CPU), table.label_ids)
    print(json.dumps({"model": f"{card.name} v{card.version}", "clips": len(inputs),
                      "eval_mode_running_statistics": running, "eval_mode_re_estimated_statistics": re_estimated,
                      "batch_statistics": batch}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["memorise", "shipped"])
    parser.add_argument("--features", type=Path, required=True, help="a RAVDESS feature table (clips)")
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--dropout", type=float, default=PLBConfig.dropout)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name or checkpoint folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = FeatureTable.load(args.features)
    if args.mode == "memorise":
        memorise(table, args.clips, args.dropout, args.epochs, args.learning_rate)
    else:
        shipped(table, args.model)


if __name__ == "__main__":
    main()
