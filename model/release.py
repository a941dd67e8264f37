"""Train a model on a whole corpus and write it as a checkpoint folder with its card."""

import datetime
from pathlib import Path
from typing import Any

import numpy as np
from emostream.model.checkpoint import save_checkpoint
from emostream.model.feature_table import FeatureTable
from emostream.model.plb import PLBConfig, count_parameters, count_parameters_with_bn_statistics
from emostream.model.recipes import TrainingRecipe
from emostream.model.training import pick_device, train_plb
from emostream.schemas.model_card import FeatureSettings, ModelCard


def train_release(
    table: FeatureTable,
    name: str,
    version: str,
    recipe: TrainingRecipe,
    out_folder: Path,
    features: FeatureSettings,
    data_description: str,
    device: str = "auto",
    metrics: dict[str, Any] | None = None,
    progress: bool = True,
    config: PLBConfig | None = None,
    call_normalisation: bool = False,
    served_onset_lead_in_s: float | None = None,
) -> ModelCard:
    """`call_normalisation`: train on each speaker's clips standardised with that speaker's statistics,
    and serve each call against its own (model/call_statistics.py); the card carries the prior.
    `served_onset_lead_in_s`: the card's features.onset_lead_in_s, so that utterances are served with
    their speech this far into the window, as in the training clips (whose windows are their own)."""
    config = config or PLBConfig(num_classes=len(table.labels))
    out_folder.mkdir(parents=True, exist_ok=True)
    inputs, shift_per_db, prior = table.training_inputs(
        call_normalisation, np.arange(len(table.label_ids)), features.call_prior_frames,
        recipe, data_description)
    if prior is not None:
        features = features.with_call_prior(prior.mean.tolist(), prior.std.tolist())
    if served_onset_lead_in_s is not None:
        features = features.model_copy(update={"onset_lead_in_s": served_onset_lead_in_s})
    model, history = train_plb(inputs, table.label_ids, config, recipe, pick_device(device),
                               state_path=out_folder / "training-state.pt", progress=progress, description=name,
                               shift_per_db=shift_per_db)
    card = ModelCard(
        name=name,
        version=version,
        architecture="plb",
        labels=table.labels,
        features=features,
        architecture_options=config.to_dict(),
        parameter_count=count_parameters(model),
        parameter_count_with_bn_statistics=count_parameters_with_bn_statistics(model),
        weights_file="",
        weights_sha256="",
        training={
            "data": data_description,
            "clips": len(table.label_ids),
            "speakers": sorted(set(table.speakers)),
            "class_counts": {label: int((table.label_ids == i).sum()) for i, label in enumerate(table.labels)},
            "waveform_variants": table.variants or ["original"],
            "recipe": recipe.to_dict(),
            "final_train_loss": history[-1].loss if history else None,
            "final_train_accuracy": history[-1].train_accuracy if history else None,
            "learning_curve": [record.to_dict() for record in history],
        },
        metrics=metrics or {},
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    model.cpu()
    saved = save_checkpoint(model, card, out_folder)
    (out_folder / "training-state.pt").unlink(missing_ok=True)
    return saved
