"""How fast the PLB network fits, under variants of the parts suspected of slowing it: the learning
curve (training and held-out accuracy) of stratified fold 0 of RAVDESS for a few epochs.

Variants (combine with "-", e.g. norm-adam-lr3):
- raw: the thesis's network, input and optimiser (Adam 0.97 / 0.93, lr 1e-3, constant lr)
- norm: per-coefficient input standardisation (raw MFCC has coefficient 0 in the hundreds)
- scale8: logits x 8 (the squashed capsules bound the classifier's input to norm < 1)
- chbn: per-channel BatchNorm in place of the per-frame (Keras axis=1) BatchNorm
- gaphead: the classifier on the global average of the DCNN + CBAM output (no DWSCNN, capsules, routing)
- adam: Adam (0.9, 0.999); lr3: lr 3e-3
- bs8: batches of 8 clips (4x the optimiser steps per epoch of the thesis's 32)
- nodrop: no SpatialDropout2D
- nocbam: no CBAM (identity where the shared one sits)
- noxatt: no cross-attention (the forward branch alone goes on to the DCNN)
- outputs: routing's softmax over the output capsules (CapsNet's axis) instead of the input capsules

    python benchmarks/plb_learning_pace.py --features .devdata/ravdess.npz --variant raw --epochs 20
"""

import argparse
import json
import time
import types
from pathlib import Path

import torch
from emostream.model.crossval import make_folds
from emostream.model.feature_table import FeatureTable
from emostream.model import plb
from emostream.model.plb import PLBConfig, PLBNet, cross_attention
from torch import nn


def forward_branch_only(query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return query


def gap_head_forward(self: PLBNet, mfcc: torch.Tensor) -> torch.Tensor:
    forward_patterns = self.cbam(self.forward_block(mfcc))
    reverse_patterns = self.cbam(self.reverse_block(torch.flip(mfcc, dims=[2])))
    x = self.cbam(self.dilated_block(cross_attention(forward_patterns, reverse_patterns)))
    return self.gap_head(x.mean(dim=(2, 3)))


def build(variant: str, num_classes: int) -> PLBNet:
    parts = set(variant.split("-"))
    model = PLBNet(PLBConfig(num_classes=num_classes, logit_scale=8.0 if "scale8" in parts else 1.0,
                             dropout=0.0 if "nodrop" in parts else PLBConfig.dropout,
                             routing_softmax="outputs" if "outputs" in parts else PLBConfig.routing_softmax))
    if "nocbam" in parts:
        model.cbam = nn.Identity()  # type: ignore[assignment]
    if "noxatt" in parts:
        plb.cross_attention = forward_branch_only  # PLBNet.forward looks the function up in its module
    if "chbn" in parts:
        for block in (model.forward_block, model.reverse_block, model.dilated_block):
            block.norm = nn.BatchNorm2d(model.config.channels, eps=1e-3, momentum=0.01)
    if "gaphead" in parts:
        model.add_module("gap_head", nn.Linear(model.config.channels, num_classes))
        model.forward = types.MethodType(gap_head_forward, model)  # type: ignore[method-assign]
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--variant", default="raw")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.variant.split("-"))
    table = FeatureTable.load(args.features)
    train, test = make_folds(table, "stratified", 10, 0)[0]
    inputs = torch.from_numpy(table.original_features()).unsqueeze(1)
    targets = torch.from_numpy(table.label_ids)
    if "norm" in parts:
        mean = inputs[train].mean(dim=(0, 2), keepdim=True)
        inputs = (inputs - mean) / inputs[train].std(dim=(0, 2), keepdim=True)
    torch.manual_seed(0)
    model = build(args.variant, len(table.labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3 if "lr3" in parts else 1e-3,
                                 betas=(0.9, 0.999) if "adam" in parts else (0.97, 0.93), eps=1e-8)
    loss_function = nn.CrossEntropyLoss()

    def step(batch_inputs: torch.Tensor, batch_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch_inputs)
        loss = loss_function(logits, batch_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.argmax(dim=1) == batch_targets).sum()

    compiled = torch.compile(step)
    train_inputs, train_targets = inputs[train], targets[train]
    shuffle = torch.Generator().manual_seed(0)
    batch_size = 8 if "bs8" in parts else 32
    steps = len(train_targets) // batch_size
    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_targets), generator=shuffle)
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for n in range(steps):
            batch = order[n * batch_size : (n + 1) * batch_size]
            loss, hits = compiled(train_inputs[batch], train_targets[batch])
            loss_sum += loss
            correct += hits
        seconds = time.perf_counter() - started
        if epoch < 2 or (epoch + 1) % 5 == 0:
            model.eval()
            with torch.no_grad():
                held_out = float((model(inputs[test]).argmax(dim=1) == targets[test]).float().mean())
            print(json.dumps({"variant": args.variant, "epoch": epoch + 1, "loss": round(float(loss_sum) / steps, 3),
                              "train_accuracy": round(int(correct) / (steps * batch_size), 3),
                              "held_out_accuracy": round(held_out, 3), "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
