"""The one training engine: preloaded tensors, a compiled optimiser step, no host sync inside an
epoch, checkpoints that resume to the same weights as an uninterrupted run.

Recipes (what to train with) are in `model/recipes.py`; batch augmentation in `model/augment.py`.
"""

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from emostream.model.augment import BatchAugmenter
from emostream.model.plb import PLBConfig, PLBNet
from emostream.model.recipes import TrainingRecipe, learning_rate_factor
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

STATE_FORMAT = 2  # bumped when the training-state file changes shape


class TrainingStateError(ValueError):
    """A training-state file is unreadable, partial, or belongs to another recipe or data set."""


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float
    learning_rate: float
    seconds: float
    eval_accuracy: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def data_fingerprint(features: np.ndarray, label_ids: np.ndarray) -> str:
    """What a resume must find unchanged: the shape and content of the training set."""
    digest = hashlib.sha256(repr((features.shape, str(features.dtype))).encode())
    digest.update(np.ascontiguousarray(label_ids).tobytes())
    digest.update(np.ascontiguousarray(features[:: max(1, len(features) // 64)]).tobytes())
    return digest.hexdigest()[:16]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions (one-hot, smoothed or mixed): (B, K), (B, K) -> ()."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, next_epoch: int,
                generators: dict[str, torch.Generator], identity: dict[str, str],
                history: list[EpochRecord]) -> None:
    state = {
        "format": STATE_FORMAT,
        "identity": identity,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "next_epoch": next_epoch,
        "generators": {name: g.get_state() for name, g in generators.items()},
        "torch_rng": torch.get_rng_state(),
        "history": [record.to_dict() for record in history],
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)  # atomic: an interrupted save leaves the previous state


def _load_state(path: Path, device: torch.device, identity: dict[str, str]) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise TrainingStateError(f"{path}: not a readable training state ({type(error).__name__}: {error}); "
                                 "delete it to start from scratch") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingStateError(f"{path}: training state of another format "
                                 f"({state.get('format') if isinstance(state, dict) else type(state).__name__}, "
                                 f"expected {STATE_FORMAT}); delete it to start from scratch")
    missing = {"identity", "model", "optimizer", "next_epoch", "generators", "torch_rng"} - set(state)
    if missing:
        raise TrainingStateError(f"{path}: partial training state, missing {sorted(missing)}")
    for key, expected in identity.items():
        found = state["identity"].get(key)
        if found != expected:
            raise TrainingStateError(f"{path}: written for another {key} ({found!r}, this run has {expected!r}); "
                                     "use another state path or delete it to start from scratch")
    return state


class _Stepper:
    """One optimiser step, compiled where torch.compile works here, eager (with the reason logged) where not."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, compile_step: bool) -> None:
        self.model = model
        self.optimizer = optimizer
        self.compiled: Callable | None = torch.compile(self._step) if compile_step else None
        self.mode = "compiled" if compile_step else "eager"

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor, hard_targets: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(inputs)
        loss = soft_cross_entropy(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == hard_targets).sum()

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, hard_targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compiled is not None:
            try:
                return self.compiled(inputs, targets, hard_targets)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
                log.warning("torch.compile failed (%s: %s); training eagerly", type(error).__name__, error)
                self.compiled, self.mode = None, "eager (compile failed)"
        return self._step(inputs, targets, hard_targets)


def train_network(
    model: nn.Module,
    features: np.ndarray,
    label_ids: np.ndarray,
    num_classes: int,
    recipe: TrainingRecipe,
    device: torch.device,
    state_path: Path | None = None,
    progress: bool = True,
    description: str = "train",
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train `model` in place on (clips, frames, coefficients) features; resumes from `state_path`.

    A feature bank (clips, variants, frames, coefficients) trains on one variant per clip per epoch,
    drawn uniformly (model/waveform_augment.py). Every epoch shuffles with its own generator and drops the last partial batch (static shapes for
    the compiled step; a different remainder each epoch). Loss and accuracy accumulate on the device
    and are read once per epoch. `eval_set` (features, labels) records a learning curve every
    `recipe.eval_every_epochs` without touching any random state, so it never changes the weights.
    """
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(recipe.beta1, recipe.beta2),
                                  eps=recipe.epsilon, weight_decay=recipe.weight_decay)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    fill = model.input_fill_value() if hasattr(model, "input_fill_value") else None
    augmenter = BatchAugmenter(recipe, num_classes, seed=recipe.seed + 1, mask_fill=fill)
    variant_draw = torch.Generator().manual_seed(recipe.seed + 2)
    generators = {"shuffle": shuffle, "augment": augmenter.generator, "variants": variant_draw}
    identity = {"recipe": recipe.fingerprint(), "data": data_fingerprint(features, label_ids),
                "model": type(model).__name__ + ":" + json.dumps(getattr(model, "config", PLBConfig()).__dict__,
                                                                  sort_keys=True, default=str)}
    history: list[EpochRecord] = []
    start_epoch = 0
    if state_path is not None and state_path.is_file():
        state = _load_state(state_path, device, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["next_epoch"])
        for name, generator in generators.items():
            generator.set_state(state["generators"][name])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        history = [EpochRecord(**record) for record in state.get("history", [])]
        log.info("%s: resumed from %s at epoch %d", description, state_path, start_epoch)
    bank = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    if bank.ndim == 3:
        bank = bank.unsqueeze(1)  # one variant: the clips as they are
    targets = torch.from_numpy(np.asarray(label_ids, dtype=np.int64)).to(device)
    batch_size = min(recipe.batch_size, len(targets))
    if batch_size < 2:
        raise ValueError(f"{description}: {len(targets)} training clips; BatchNorm needs batches of two or more")
    steps = len(targets) // batch_size
    stepper = _Stepper(model, optimizer, recipe.compile)
    epochs = tqdm(range(start_epoch, recipe.epochs), desc=description, disable=not progress,
                  initial=start_epoch, total=recipe.epochs)
    for epoch in epochs:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * learning_rate_factor(epoch, recipe)
        model.train()
        order = torch.randperm(len(targets), generator=shuffle).to(device)
        chosen = torch.randint(bank.shape[1], (len(targets),), generator=variant_draw).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for step in range(steps):
            batch = order[step * batch_size : (step + 1) * batch_size]
            batch_inputs, batch_targets = augmenter(bank[batch, chosen[batch]].unsqueeze(1), targets[batch])
            loss, hits = stepper(batch_inputs, batch_targets, targets[batch])
            loss_sum += loss
            correct += hits
        record = EpochRecord(epoch=epoch, loss=float(loss_sum) / steps, train_accuracy=int(correct) / (steps * batch_size),
                             learning_rate=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started)
        if eval_set is not None and ((epoch + 1) % recipe.eval_every_epochs == 0 or epoch + 1 == recipe.epochs):
            predicted = predict_logits(model, eval_set[0], device).argmax(axis=1)
            record.eval_accuracy = float(np.mean(predicted == eval_set[1]))
        history.append(record)
        epochs.set_postfix(loss=f"{record.loss:.3f}", acc=f"{record.train_accuracy:.3f}", step=stepper.mode)
        if not progress:
            log.info("%s epoch %d/%d %s: %s", description, epoch + 1, recipe.epochs, stepper.mode,
                     json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.to_dict().items()}))
        if state_path is not None and ((epoch + 1) % recipe.checkpoint_every_epochs == 0 or epoch + 1 == recipe.epochs):
            _save_state(state_path, model, optimizer, epoch + 1, generators, identity, history)
        if on_epoch_end is not None:
            on_epoch_end(record)
    model.eval()
    return history


def train_plb(
    features: np.ndarray,
    label_ids: np.ndarray,
    config: PLBConfig,
    recipe: TrainingRecipe,
    device: torch.device,
    state_path: Path | None = None,
    progress: bool = True,
    description: str = "train",
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> tuple[PLBNet, list[EpochRecord]]:
    """A PLBNet trained with `recipe`; its input normalisation (if any) is fitted on the clips as they
    are (the first variant of a feature bank) first."""
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    model = PLBNet(config)
    originals = features[:, 0] if features.ndim == 4 else features
    model.fit_input_normalisation(torch.from_numpy(np.asarray(originals, dtype=np.float32)))
    history = train_network(model, features, label_ids, config.num_classes, recipe, device, state_path, progress,
                            description, eval_set, on_epoch_end)
    return model, history


@torch.inference_mode()
def predict_logits(model: nn.Module, features: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(features), batch_size):
        batch = torch.from_numpy(np.asarray(features[start : start + batch_size], dtype=np.float32)).unsqueeze(1)
        outputs.append(model(batch.to(device)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outputs)
