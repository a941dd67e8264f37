"""The model card: a checkpoint's JSON description, and the only source of its label set."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FeatureSettings(BaseModel):
    """How audio becomes the model's input; must match training exactly."""

    model_config = ConfigDict(frozen=True)

    kind: str = Field("mfcc", description="mfcc, logmel (fixed window, dB), or logmel-utterance-mean (the "
                      "ASR-multitask model's: natural-log mel, each band's utterance mean subtracted)")
    sample_rate_hz: int = Field(22_050, description="audio is resampled to this rate before features")
    n_coefficients: int = Field(39, description="MFCC coefficients (or mel bands)")
    n_fft: int = 2_048
    hop_length: int = Field(512, description="samples between frames at sample_rate_hz")
    input_samples: int = Field(100_000, description="audio is zero-padded or cut to this many samples")
    long_input: str = Field(
        "windows",
        description="longer audio: `windows` averages scores over input_samples windows; `trim` keeps the start; "
        "`whole`: the model reads the whole utterance (input_samples unused)",
    )
    pad_position: Literal["end", "centre"] = Field(
        "end", description="where a short utterance's zeros go: after it (`end`), or half before and half after "
        "(`centre`, TIM-Net's preprocessing, which the PLB thesis says it follows; an ablation)")
    window_hop_samples: int = Field(50_000, description="hop between windows for long_input=windows")
    onset_lead_in_s: float | None = Field(
        None,
        description="if set, leading audio quieter than onset_threshold_db is cut and this much silence put "
        "before the speech, so speech starts where it did in training (RAVDESS clips: ~1 s in)",
    )
    onset_threshold_db: float = Field(-35.0, description="frame RMS relative to the loudest 20 ms frame")
    level_dbfs: float | None = Field(
        None,
        description="if set, each utterance is scaled so the RMS of its active frames (within 40 dB of the "
        "loudest 20 ms frame) is this level, in training and serving alike: calls arrive at any gain",
    )
    call_normalisation: bool = Field(
        False,
        description="each input coefficient standardised by the call's own running statistics (its speech "
        "frames so far, this utterance included) blended with call_prior_*; trained per speaker "
        "(model/call_statistics.py)",
    )
    call_prior_frames: float = Field(400.0, ge=0, description="how many of a call's frames the prior counts as "
                                     "(400, about 2.5 utterances: of 0 / 150 / 400 / 1,000 measured, the middle "
                                     "ground between a call's first utterance and its later ones; model/PLB.md)")
    call_prior_mean: list[float] | None = Field(None, description="training speakers' pooled mean per coefficient")
    call_prior_std: list[float] | None = Field(None, description="training speakers' pooled std per coefficient")

    def with_call_prior(self, mean: list[float], std: list[float], frames: float | None = None) -> "FeatureSettings":
        """These settings with call normalisation on and its prior set (validated); `frames` None keeps
        call_prior_frames."""
        return FeatureSettings(**{**self.model_dump(), "call_normalisation": True, "call_prior_mean": mean,
                                  "call_prior_std": std,
                                  "call_prior_frames": self.call_prior_frames if frames is None else frames})

    @model_validator(mode="after")
    def _call_prior_fits(self) -> "FeatureSettings":
        if self.call_normalisation:
            for name in ("call_prior_mean", "call_prior_std"):
                values = getattr(self, name)
                if values is None or len(values) != self.n_coefficients:
                    raise ValueError(f"call_normalisation needs {name} with {self.n_coefficients} values "
                                     f"(one per coefficient), got {None if values is None else len(values)}")
        return self

    @property
    def input_frames(self) -> int:
        """Frames of one input window (centred frames, as librosa computes them)."""
        return 1 + self.input_samples // self.hop_length


class ModelCard(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(description="registry name, e.g. plb-ravdess8")
    version: str = Field(description="bumped on every retrain; part of every result's idempotency key")
    architecture: str = Field(description="plb, asr-multitask, ...")
    labels: list[str] = Field(min_length=2, description="class order of the output layer")
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    architecture_options: dict[str, Any] = Field(default_factory=dict)
    parameter_count: int = Field(description="trainable parameters")
    parameter_count_with_bn_statistics: int | None = Field(
        None, description="trainable + BatchNorm running statistics (Keras' convention, as the PLB thesis counts)"
    )
    score_temperature: float = Field(
        1.0, gt=0, description="scores are softmax(logits / T); T fitted on held-out folds (temperature scaling)"
    )
    weights_file: str = Field(description="safetensors file beside the card")
    weights_sha256: str
    training: dict[str, Any] = Field(default_factory=dict, description="data, protocol, recipe, seed, epochs")
    metrics: dict[str, Any] = Field(default_factory=dict, description="measured figures with the command that made them")
    notes: list[str] = Field(default_factory=list)
    created_at: str | None = None

    @property
    def sample_rate_hz(self) -> int:
        return self.features.sample_rate_hz
