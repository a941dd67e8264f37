"""The PLB thesis's training recipe, deterministic and resumable: Adam(0.97, 0.93, 1e-8), lr 1e-3,
batch 32, lr x 0.15 every 20 epochs after epoch 50, 300 epochs; evaluation after the last epoch."""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from emostream.model.plb import PLBConfig, PLBNet
from torch import nn
from tqdm import tqdm

THESIS_EFFECTIVE_EPOCHS = 110  # lr 1e-3 to epoch 70, then x0.15 at 70, 90, 110: negligible after


@dataclass(frozen=True)
class TrainingRecipe:
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    beta1: float = 0.97
    beta2: float = 0.93
    epsilon: float = 1e-8
    decay_after_epoch: int = 50  # the learning rate is constant for epochs 0..49 (and to 69)
    decay_every_epochs: int = 20
    decay_factor: float = 0.15
    seed: int = 0
    checkpoint_every_epochs: int = 10

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def for_epochs(cls, epochs: int, **overrides: object) -> "TrainingRecipe":
        """The thesis's recipe, with its schedule compressed when fewer epochs are affordable.

        With 300 epochs the learning rate is 1e-3 until epoch 70 and below 1e-6 after epoch 150, so
        the recipe does its work in about 110 epochs. Below that (a CPU budget), the decay points scale
        by epochs / 110, keeping the same shape: e.g. 40 epochs decay at 25, 32 and 39.
        """
        if epochs >= THESIS_EFFECTIVE_EPOCHS:
            return cls(epochs=epochs, **overrides)  # type: ignore[arg-type]
        scale = epochs / THESIS_EFFECTIVE_EPOCHS
        return cls(epochs=epochs, decay_after_epoch=round(cls.decay_after_epoch * scale),  # type: ignore[arg-type]
                   decay_every_epochs=max(1, round(cls.decay_every_epochs * scale)), **overrides)


def learning_rate_factor(epoch: int, recipe: TrainingRecipe) -> float:
    """Multiplier of the initial learning rate in `epoch` (0-based): x0.15 at epochs 70, 90, 110, ..."""
    decays = max(0, (epoch - recipe.decay_after_epoch) // recipe.decay_every_epochs)
    return recipe.decay_factor**decays


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                generator: torch.Generator) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "next_epoch": torch.tensor(epoch),
        "shuffle_rng": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def train_plb(
    features: np.ndarray,
    label_ids: np.ndarray,
    config: PLBConfig,
    recipe: TrainingRecipe,
    device: torch.device,
    state_path: Path | None = None,
    progress: bool = True,
    description: str = "train",
) -> tuple[PLBNet, list[dict[str, float]]]:
    """Train a PLBNet on (clips, frames, coefficients) features; resumes from `state_path` if present."""
    seed_everything(recipe.seed)
    model = PLBNet(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate, betas=(recipe.beta1, recipe.beta2),
                                 eps=recipe.epsilon)
    generator = torch.Generator().manual_seed(recipe.seed)
    start_epoch = 0
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["next_epoch"])
        generator.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
    inputs = torch.from_numpy(features).unsqueeze(1).to(device)
    targets = torch.from_numpy(label_ids).to(device)
    loss_function = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    epochs = tqdm(range(start_epoch, recipe.epochs), desc=description, disable=not progress,
                  initial=start_epoch, total=recipe.epochs)
    for epoch in epochs:
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * learning_rate_factor(epoch, recipe)
        model.train()
        order = torch.randperm(len(targets), generator=generator).to(device)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            logits = model(inputs[batch])
            loss = loss_function(logits, targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == targets[batch]).sum())
        record = {"epoch": epoch, "loss": loss_sum / len(order), "train_accuracy": correct / len(order),
                  "learning_rate": optimizer.param_groups[0]["lr"]}
        history.append(record)
        epochs.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_accuracy']:.3f}")
        if state_path is not None and ((epoch + 1) % recipe.checkpoint_every_epochs == 0 or epoch + 1 == recipe.epochs):
            _save_state(state_path, model, optimizer, epoch + 1, generator)
    model.eval()
    return model, history


@torch.inference_mode()
def predict_logits(model: PLBNet, features: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    model.eval()
    outputs = []
    for start in range(0, len(features), batch_size):
        batch = torch.from_numpy(features[start : start + batch_size]).unsqueeze(1).to(device)
        outputs.append(model(batch).float().cpu().numpy())
    return np.concatenate(outputs)
