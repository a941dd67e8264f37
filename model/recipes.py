"""Training recipes: the PLB thesis's, and ours for production. A recipe is data (saved in every card
and training state); `model/training.py` is the one engine that runs it."""

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace

THESIS_EFFECTIVE_EPOCHS = 110  # lr 1e-3 to epoch 70, then x0.15 at 70, 90, 110: negligible after
SCHEDULES = ("thesis-step", "warmup-cosine", "constant")
# Fields that do not change what a resumed run computes; everything else must match the saved state.
_RESUME_NEUTRAL = {"checkpoint_every_epochs", "eval_every_epochs", "compile", "name"}


@dataclass(frozen=True)
class TrainingRecipe:
    """Optimiser, schedule and batch augmentation. Defaults are the thesis's recipe (section 4.2):
    Adam(beta1 0.97, beta2 0.93, eps 1e-8), lr 1e-3, batch 32, lr x0.15 every 20 epochs after 50,
    300 epochs, no augmentation."""

    name: str = "thesis"
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    beta1: float = 0.97
    beta2: float = 0.93
    epsilon: float = 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW); 0 is exactly Adam
    schedule: str = "thesis-step"  # or warmup-cosine, or constant (the ASR-multitask paper names none)
    decay_after_epoch: int = 50  # thesis-step: lr constant for epochs 0..69, x0.15 at 70, 90, ...
    decay_every_epochs: int = 20
    decay_factor: float = 0.15
    warmup_epochs: int = 0  # warmup-cosine: linear warm-up, then cosine to 0 at the last epoch
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of inputs and targets; 0 = off
    time_shift_frames: int = 0  # move each clip up to this many frames later or earlier (offset of the window)
    time_masks: int = 0  # SpecAugment: masks of up to time_mask_frames frames each
    time_mask_frames: int = 0
    coefficient_masks: int = 0  # SpecAugment: masks of up to coefficient_mask_width coefficients each
    coefficient_mask_width: int = 0
    gain_min_db: float = 0.0  # each clip played this many dB louder (or quieter, negative), drawn uniformly
    gain_max_db: float = 0.0  # from [gain_min_db, gain_max_db] per clip per batch; both 0 = off
    # with call normalisation: waveform variants standardised as a call's k-th utterance is served
    # (call_statistics.standardise_partial_calls), not with all of their speaker's clips; off: on speaker
    # fold 0 it fitted slower and held out 33 % at epoch 40 against 43 % without (model/PLB.md)
    partial_call_statistics: bool = False
    seed: int = 0
    checkpoint_every_epochs: int = 10
    eval_every_epochs: int = 10  # learning curve on an eval set, when one is given
    compile: bool = True  # torch.compile the optimiser step (eager fallback with the reason logged)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"recipe schedule {self.schedule!r} unknown; use one of {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"recipe needs epochs >= 1 and batch_size >= 2 (got {self.epochs}, {self.batch_size})")
        if self.gain_min_db > self.gain_max_db:
            raise ValueError(f"recipe gain_min_db {self.gain_min_db} is above gain_max_db {self.gain_max_db}")

    @property
    def gain_augmentation(self) -> bool:
        """Whether clips are trained at a random gain (gain_min_db..gain_max_db not both 0)."""
        return bool(self.gain_min_db or self.gain_max_db)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> "TrainingRecipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"recipe fields {unknown} unknown; known: {sorted(known)}")
        return cls(**values)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """Identity of what the recipe computes; a training state resumes only under the same one."""
        relevant = {k: v for k, v in self.to_dict().items() if k not in _RESUME_NEUTRAL}
        if self.schedule in ("thesis-step", "constant"):
            relevant.pop("epochs")  # these schedules do not depend on the run's length
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def for_epochs(cls, epochs: int, **overrides: object) -> "TrainingRecipe":
        """The thesis's recipe, with its schedule compressed when fewer than 110 epochs are affordable.

        With 300 epochs the learning rate is 1e-3 until epoch 70 and below 1e-6 after epoch 150, so
        the recipe does its work in about 110 epochs. Below that, the decay points scale by
        epochs / 110, keeping the same shape: e.g. 40 epochs decay at 25, 32 and 39.
        """
        if epochs >= THESIS_EFFECTIVE_EPOCHS:
            return cls(epochs=epochs, **overrides)  # type: ignore[arg-type]
        scale = epochs / THESIS_EFFECTIVE_EPOCHS
        return cls(epochs=epochs, decay_after_epoch=round(cls.decay_after_epoch * scale),  # type: ignore[arg-type]
                   decay_every_epochs=max(1, round(cls.decay_every_epochs * scale)), **overrides)


# Calls arrive at any level: telephone speech sits near -26 dBFS, RAVDESS's near -38. Each clip is trained
# on at -10..+25 dB of its recorded level, so the network cannot learn the corpus's loudness as emotion.
PRODUCTION_GAIN_DB = (-10.0, 25.0)


def production_recipe(epochs: int = 60, **overrides: object) -> TrainingRecipe:
    """Ours: standard Adam with decoupled weight decay at 3x the thesis's learning rate, warm-up +
    cosine to zero, light label smoothing, and random offsets of the clip in its window (~0.5 s either
    way, for VAD segments whose speech starts anywhere), and a random gain of -10..+25 dB per clip (calls
    arrive at any level; model/PLB.md). Mixup and SpecAugment masks are available
    (`--set mixup_alpha=0.2 time_masks=2 ...`) but off: with them the network underfit (model/PLB.md).
    Its waveform variants live in the feature table it trains on (waveform_augment.PRODUCTION_VARIANTS,
    the CLI's default for this recipe); the input standardisation is the network's (PLBConfig)."""
    recipe = TrainingRecipe(name="production", epochs=epochs, learning_rate=3e-3, beta1=0.9, beta2=0.999,
                            weight_decay=1e-2, schedule="warmup-cosine", warmup_epochs=3, label_smoothing=0.05,
                            time_shift_frames=20, gain_min_db=PRODUCTION_GAIN_DB[0], gain_max_db=PRODUCTION_GAIN_DB[1])
    return replace(recipe, **overrides)  # type: ignore[arg-type]


RECIPES = {"thesis": TrainingRecipe.for_epochs, "production": production_recipe}


# The ASR-multitask paper's recipes (seed 001, section 4.2): Adam with weight decay 1e-6; the paper
# names no schedule or betas, so the learning rate is constant and the betas are Adam's defaults.
def asr_pretraining_recipe(epochs: int = 25, **overrides: object) -> TrainingRecipe:
    """CTC pre-training: lr 3e-4, weight decay 1e-6, batch 64, 25 passes over the corpus. The paper names
    no schedule: a one-epoch warm-up then cosine to zero (at a constant 3e-4 the CTC loss stalled near
    3.5 and the held-out CER was 75 %, against 17 % with this schedule; model/ASR_MULTITASK.md)."""
    recipe = TrainingRecipe(name="asr-pretraining", epochs=epochs, batch_size=64, learning_rate=3e-4, beta1=0.9,
                            beta2=0.999, weight_decay=1e-6, schedule="warmup-cosine", warmup_epochs=1)
    return replace(recipe, **overrides)  # type: ignore[arg-type]


def asr_finetuning_recipe(epochs: int = 20, **overrides: object) -> TrainingRecipe:
    """Multitask fine-tuning (and the transformer from scratch): lr 1e-4, weight decay 1e-6, batch 32, 20 epochs."""
    recipe = TrainingRecipe(name="asr-finetuning", epochs=epochs, batch_size=32, learning_rate=1e-4, beta1=0.9,
                            beta2=0.999, weight_decay=1e-6, schedule="constant")
    return replace(recipe, **overrides)  # type: ignore[arg-type]


def baseline_recipe(epochs: int = 20, **overrides: object) -> TrainingRecipe:
    """The CNN-BLSTM-SA baseline: lr 1e-4, weight decay 1e-6, batch 40, 20 epochs."""
    recipe = TrainingRecipe(name="cnn-blstm-sa", epochs=epochs, batch_size=40, learning_rate=1e-4, beta1=0.9,
                            beta2=0.999, weight_decay=1e-6, schedule="constant")
    return replace(recipe, **overrides)  # type: ignore[arg-type]


ASR_RECIPES = {"asr-pretraining": asr_pretraining_recipe, "asr-finetuning": asr_finetuning_recipe,
               "cnn-blstm-sa": baseline_recipe}


def learning_rate_factor(epoch: int, recipe: TrainingRecipe) -> float:
    """Multiplier of the initial learning rate in `epoch` (0-based)."""
    if recipe.schedule == "thesis-step":
        decays = max(0, (epoch - recipe.decay_after_epoch) // recipe.decay_every_epochs)
        return recipe.decay_factor**decays
    if recipe.schedule == "constant":
        return 1.0
    if epoch < recipe.warmup_epochs:
        return (epoch + 1) / (recipe.warmup_epochs + 1)
    span = max(1, recipe.epochs - recipe.warmup_epochs)
    progress = (epoch - recipe.warmup_epochs) / span
    return 0.5 * (1.0 + math.cos(math.pi * progress))
