"""The one training engine: preloaded tensors, a compiled optimiser step, no host sync inside an
epoch, checkpoints that resume to the same weights as an uninterrupted run.

`run_training` is the engine; a `TrainingTask` says what it trains on (PLB's fixed windows:
`ClassificationTask`; the ASR-multitask model's padded variable-length utterances:
model/asr_training.py).

Recipes (what to train with) are in `model/recipes.py`; batch augmentation in `model/augment.py`.
"""

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from emostream.model.augment import BatchAugmenter
from emostream.model.host_memory import keep_freed_memory
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
    train_accuracy: float | None  # None where the task predicts no class (CTC pre-training)
    learning_rate: float
    seconds: float
    eval_accuracy: float | None = None
    losses: dict[str, float] | None = None  # named loss terms (e.g. cross-entropy and CTC), mean per step

    def to_dict(self) -> dict[str, object]:
        record = dict(self.__dict__)
        if record["losses"] is None:
            del record["losses"]  # single-loss tasks keep their records as they were
        return record


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


class TrainingTask(ABC):
    """What one run trains: its data, preloaded on the device, how a batch is cut from it, and the
    loss of a batch. The engine (`run_training`) owns the rest: optimiser, schedule, shuffling,
    the compiled step, the once-per-epoch host read, checkpoints and exact resume.

    PLB's fixed-window classification is `ClassificationTask`; the ASR-multitask model's
    variable-length tasks (padding + lengths) are in model/asr_training.py.
    """

    examples: int  # training examples; each epoch shuffles range(examples) and drops the remainder
    counts_correct: bool = True  # `loss` counts correct predictions (False: train_accuracy is None)
    eager_reason: str | None = None  # why this task's step is never compiled (None: compiled where asked)

    def generators(self) -> dict[str, torch.Generator]:
        """The task's own random streams (augmentation, variants): saved in the training state."""
        return {}

    @abstractmethod
    def identity(self) -> dict[str, str]:
        """What a resume must find unchanged besides the recipe and the model: at least "data"."""

    def epoch_order(self, order: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The epoch's example order (host tensor) from its shuffled permutation; consecutive runs of
        `batch_size` are its batches and the remainder is dropped. Default: the permutation as it is;
        a task may regroup it (e.g. batches of similar length) with its own generators only."""
        return order

    def begin_epoch(self) -> None:
        """Per-epoch draws, after the epoch's shuffle (e.g. one feature-bank variant per clip)."""

    @abstractmethod
    def batch(self, indices: torch.Tensor, host_indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The inputs of one optimiser step for these examples (`indices` on the device, the same on
        the host for shape decisions that must not sync)."""

    @abstractmethod
    def loss(self, model: nn.Module, *batch: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to minimise, correct predictions in the batch (a 0-dim tensor), named loss terms
        recorded per epoch). Runs inside the compiled step: tensor operations only."""

    def evaluate(self, model: nn.Module) -> float | None:
        """Accuracy on the task's eval set, if it has one; must not touch any random state."""
        return None


class ClassificationTask(TrainingTask):
    """PLB's task: fixed-size (frames, coefficients) windows, a feature bank of waveform variants,
    batch augmentation (model/augment.py), soft cross-entropy."""

    def __init__(self, model: nn.Module, features: np.ndarray, label_ids: np.ndarray, num_classes: int,
                 recipe: TrainingRecipe, device: torch.device,
                 eval_set: tuple[np.ndarray, np.ndarray] | None = None,
                 shift_per_db: np.ndarray | None = None) -> None:
        fill = model.input_fill_value() if hasattr(model, "input_fill_value") else None
        self.augmenter = BatchAugmenter(recipe, num_classes, seed=recipe.seed + 1, mask_fill=fill,
                                        shift_per_db=None if shift_per_db is None else torch.from_numpy(shift_per_db))
        self.variant_draw = torch.Generator().manual_seed(recipe.seed + 2)
        self.fingerprint = data_fingerprint(features, label_ids)
        bank = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
        self.bank = bank.unsqueeze(1) if bank.ndim == 3 else bank  # one variant: the clips as they are
        self.targets = torch.from_numpy(np.asarray(label_ids, dtype=np.int64)).to(device)
        self.examples = len(self.targets)
        self.device = device
        self.eval_set = eval_set
        self.chosen = torch.zeros(self.examples, dtype=torch.long, device=device)

    def generators(self) -> dict[str, torch.Generator]:
        return {"augment": self.augmenter.generator, "variants": self.variant_draw}

    def identity(self) -> dict[str, str]:
        return {"data": self.fingerprint}

    def begin_epoch(self) -> None:
        self.chosen = torch.randint(self.bank.shape[1], (self.examples,), generator=self.variant_draw).to(self.device)

    def batch(self, indices: torch.Tensor, host_indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        inputs, soft_targets = self.augmenter(self.bank[indices, self.chosen[indices]].unsqueeze(1),
                                              self.targets[indices])
        return inputs, soft_targets, self.targets[indices]

    def loss(self, model: nn.Module, *batch: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        inputs, soft_targets, hard_targets = batch
        logits = model(inputs)
        return (soft_cross_entropy(logits, soft_targets), (logits.detach().argmax(dim=1) == hard_targets).sum(),
                {})

    def evaluate(self, model: nn.Module) -> float | None:
        if self.eval_set is None:
            return None
        predicted = predict_logits(model, self.eval_set[0], self.device).argmax(axis=1)
        return float(np.mean(predicted == self.eval_set[1]))


class _Stepper:
    """One optimiser step, compiled where torch.compile works here, eager (with the reason logged) where not."""

    def __init__(self, model: nn.Module, task: TrainingTask, optimizer: torch.optim.Optimizer,
                 compile_step: bool) -> None:
        self.model = model
        self.task = task
        self.optimizer = optimizer
        if compile_step and task.eager_reason:
            log.info("training eagerly: %s", task.eager_reason)
            compile_step = False
        self.compiled: Callable | None = torch.compile(self._step) if compile_step else None
        self.mode = "compiled" if compile_step else "eager"

    def _step(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        loss, correct, terms = self.task.loss(self.model, *batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), correct, {name: term.detach() for name, term in terms.items()}

    def __call__(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if self.compiled is not None:
            try:
                return self.compiled(*batch)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
                log.warning("torch.compile failed (%s: %s); training eagerly", type(error).__name__, error)
                self.compiled, self.mode = None, "eager (compile failed)"
        return self._step(*batch)


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
    shift_per_db: np.ndarray | None = None,
) -> list[EpochRecord]:
    """Train `model` in place on (clips, frames, coefficients) features; resumes from `state_path`.

    A feature bank (clips, variants, frames, coefficients) trains on one variant per clip per epoch,
    drawn uniformly (model/waveform_augment.py). `eval_set` (features, labels) records a learning
    curve every `recipe.eval_every_epochs`. `shift_per_db` (features.input_shift_per_db) is what a
    recipe's gain augmentation adds per dB. See `run_training` for the rest.
    """
    model.to(device)
    task = ClassificationTask(model, features, label_ids, num_classes, recipe, device, eval_set, shift_per_db)
    return run_training(model, task, recipe, device, state_path, progress, description, on_epoch_end)


def run_training(
    model: nn.Module,
    task: TrainingTask,
    recipe: TrainingRecipe,
    device: torch.device,
    state_path: Path | None = None,
    progress: bool = True,
    description: str = "train",
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """The engine: train `model` in place on `task` with `recipe`; resumes from `state_path`.

    Every epoch shuffles with its own generator and drops the last partial batch (static batch size
    for the compiled step; a different remainder each epoch). Loss, correct counts and loss terms
    accumulate on the device and are read once per epoch. The task's eval (if any) runs every
    `recipe.eval_every_epochs` without touching any random state, so it never changes the weights.
    """
    keep_freed_memory()  # a step's large activations are reused, not faulted in again each step
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(recipe.beta1, recipe.beta2),
                                  eps=recipe.epsilon, weight_decay=recipe.weight_decay)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    generators = {"shuffle": shuffle, **task.generators()}
    identity = {"recipe": recipe.fingerprint(), **task.identity(),
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
    batch_size = min(recipe.batch_size, task.examples)
    if batch_size < 2:
        raise ValueError(f"{description}: {task.examples} training clips; training needs batches of two or more "
                         "(BatchNorm)")
    steps = task.examples // batch_size
    stepper = _Stepper(model, task, optimizer, recipe.compile)
    epochs = tqdm(range(start_epoch, recipe.epochs), desc=description, disable=not progress,
                  initial=start_epoch, total=recipe.epochs)
    for epoch in epochs:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * learning_rate_factor(epoch, recipe)
        model.train()
        host_order = task.epoch_order(torch.randperm(task.examples, generator=shuffle), batch_size)
        order = host_order.to(device)
        host_order_array = host_order.numpy()
        task.begin_epoch()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        term_sums: dict[str, torch.Tensor] = {}
        for step in range(steps):
            chosen = slice(step * batch_size, (step + 1) * batch_size)
            loss, hits, terms = stepper(*task.batch(order[chosen], host_order_array[chosen]))
            loss_sum += loss
            correct += hits
            for name, term in terms.items():
                term_sums[name] = term_sums[name] + term if name in term_sums else term
        # the epoch's one host read: loss, correct count and loss terms together
        totals = torch.stack([loss_sum.double(), correct.double(), *(t.double() for t in term_sums.values())]).tolist()
        record = EpochRecord(epoch=epoch, loss=totals[0] / steps,
                             train_accuracy=int(totals[1]) / (steps * batch_size) if task.counts_correct else None,
                             learning_rate=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started,
                             losses={name: value / steps for name, value in zip(term_sums, totals[2:], strict=True)}
                             or None)
        if (epoch + 1) % recipe.eval_every_epochs == 0 or epoch + 1 == recipe.epochs:
            record.eval_accuracy = task.evaluate(model)
        history.append(record)
        epochs.set_postfix(loss=f"{record.loss:.3f}", step=stepper.mode,
                           **({"acc": f"{record.train_accuracy:.3f}"} if record.train_accuracy is not None else {}))
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
    shift_per_db: np.ndarray | None = None,
) -> tuple[PLBNet, list[EpochRecord]]:
    """A PLBNet trained with `recipe`; its input normalisation (if any) is fitted on the clips as they
    are (the first variant of a feature bank) first."""
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    model = PLBNet(config)
    originals = features[:, 0] if features.ndim == 4 else features
    model.fit_input_normalisation(torch.from_numpy(np.asarray(originals, dtype=np.float32)))
    history = train_network(model, features, label_ids, config.num_classes, recipe, device, state_path, progress,
                            description, eval_set, on_epoch_end, shift_per_db)
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
