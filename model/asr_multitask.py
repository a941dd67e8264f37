"""The ASR-multitask transformer of seed 001 (Park & Kim, J. Acoust. Soc. Korea 2021), and its
CNN-BLSTM-SA baseline (section 4.2).

    log-mel (B, T, 80) -> subsampling CNN: conv 3x3 stride 2, conv 5x5 stride 3 (x1/6 in time and
    frequency), ReLU -> projection to d_model -> + sinusoidal positions -> [x_e; x_1..x_N] with a
    trainable emotion embedding x_e in front (BERT's class token) -> post-norm transformer encoder,
    no masks beyond padding -> z_e -> emotion classifier; z_1..z_N -> CTC classifier over BPE units.

Loss (equation 8): L = CE(emotion) + alpha * CTC, alpha 0.6. CTC pre-training runs the same network
without the emotion embedding; `load_ctc_encoder` moves such a checkpoint into the multitask model.
Choices where the paper is silent are listed in model/ASR_MULTITASK.md.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

CTC_BLANK = 0  # CTC's blank is output 0; BPE piece i is output i + 1


@dataclass(frozen=True)
class AsrMultitaskConfig:
    """Defaults: the paper's configuration (section 4.2)."""

    n_mels: int = 80
    subsampling_channels: int = 512
    d_model: int = 512
    heads: int = 8  # 8 heads of 64
    ffn_dim: int = 2048
    blocks: int = 18
    vocabulary: int = 5_000  # BPE units (CTC adds a blank)
    num_classes: int = 4  # IEMOCAP's four
    dropout: float = 0.1
    emotion_token: bool = True  # False: a CTC-only (pre-training) network

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


SMALL = AsrMultitaskConfig(subsampling_channels=64, d_model=144, heads=4, ffn_dim=576, blocks=6, vocabulary=256,
                           num_classes=8)  # trains on 2 CPU cores; see the model card for its size and cost


def subsampled_frames(frames: torch.Tensor) -> torch.Tensor:
    """Output length of the subsampling CNN for input lengths `frames` (valid convs, strides 2 and 3)."""
    return torch.div(torch.div(frames - 3, 2, rounding_mode="floor") + 1 - 5, 3, rounding_mode="floor") + 1


class Subsampling(nn.Module):
    """Two convolutions with strides 2 and 3 over (time, frequency): 1/6 of each, then a projection."""

    def __init__(self, n_mels: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 5, stride=3), nn.ReLU())
        frequencies = ((n_mels - 3) // 2 + 1 - 5) // 3 + 1
        self.projection = nn.Linear(channels * frequencies, d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) -> (B, T', d_model)."""
        x = self.conv(features.unsqueeze(1))  # (B, C, T', F')
        batch, channels, frames, frequencies = x.shape
        return self.projection(x.permute(0, 2, 1, 3).reshape(batch, frames, channels * frequencies))


def sinusoidal_positions(length: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """Vaswani et al.'s positional encoding, (length, d_model)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rates = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    table = torch.zeros(length, d_model, device=device)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates)
    return table


class AsrMultitaskTransformer(nn.Module):
    def __init__(self, config: AsrMultitaskConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.subsampling = Subsampling(c.n_mels, c.subsampling_channels, c.d_model)
        layer = nn.TransformerEncoderLayer(c.d_model, c.heads, c.ffn_dim, c.dropout, batch_first=True,
                                           norm_first=False)  # post-norm residual blocks, as the paper's
        self.encoder = nn.TransformerEncoder(layer, c.blocks, enable_nested_tensor=False)
        self.ctc_head = nn.Linear(c.d_model, c.vocabulary + 1)
        if c.emotion_token:
            self.emotion_embedding = nn.Parameter(torch.randn(c.d_model) * 0.02)
            self.emotion_head = nn.Linear(c.d_model, c.num_classes)

    def forward(self, features: torch.Tensor, frames: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """features (B, T, n_mels), frames (B,) valid lengths ->
        CTC log-probabilities (T', B, vocabulary + 1), their lengths (B,), emotion logits (B, K) or None."""
        x = self.subsampling(features)
        lengths = subsampled_frames(frames).clamp(min=1)
        x = x * math.sqrt(self.config.d_model) + sinusoidal_positions(x.shape[1], self.config.d_model, x.device)
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        if self.config.emotion_token:
            token = self.emotion_embedding.expand(x.shape[0], 1, -1)
            x = torch.cat([token, x], dim=1)
            padding = torch.cat([padding.new_zeros(x.shape[0], 1), padding], dim=1)
        z = self.encoder(x, src_key_padding_mask=padding)
        emotion = None
        if self.config.emotion_token:
            emotion, z = self.emotion_head(z[:, 0]), z[:, 1:]
        log_probs = F.log_softmax(self.ctc_head(z), dim=-1).transpose(0, 1)
        return log_probs, lengths, emotion


def multitask_loss(emotion_logits: torch.Tensor, emotion_labels: torch.Tensor, log_probs: torch.Tensor,
                   output_lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
                   alpha: float = 0.6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equation 8: CE(emotion) + alpha * CTC (mean over the batch of per-utterance CTC / target length).
    Returns (total, cross-entropy, CTC)."""
    cross_entropy = F.cross_entropy(emotion_logits, emotion_labels)
    ctc = F.ctc_loss(log_probs, targets, output_lengths, target_lengths, blank=CTC_BLANK, zero_infinity=True)
    return cross_entropy + alpha * ctc, cross_entropy, ctc


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path, repeats merged, blanks removed: BPE piece ids (0-based) per utterance."""
    best = log_probs.argmax(dim=-1).transpose(0, 1)  # (B, T')
    decoded = []
    for row, length in zip(best.tolist(), lengths.tolist(), strict=True):
        pieces, previous = [], CTC_BLANK
        for output in row[:length]:
            if output != previous and output != CTC_BLANK:
                pieces.append(output - 1)
            previous = output
        decoded.append(pieces)
    return decoded


def load_ctc_encoder(model: AsrMultitaskTransformer, ctc_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a CTC-only network's weights (subsampling, encoder, CTC head) into a multitask model; the
    emotion embedding and head keep their initialisation. Returns the names left as initialised."""
    missing, unexpected = model.load_state_dict(ctc_state, strict=False)
    if unexpected:
        raise ValueError(f"CTC checkpoint has weights the multitask model lacks: {sorted(unexpected)[:5]}")
    foreign = [name for name in missing if not name.startswith(("emotion_embedding", "emotion_head"))]
    if foreign:
        raise ValueError(f"CTC checkpoint lacks encoder weights: {sorted(foreign)[:5]}")
    return sorted(missing)


@dataclass(frozen=True)
class CnnBlstmSaConfig:
    """Defaults: the paper's baseline (section 4.2)."""

    n_mels: int = 80
    num_classes: int = 4
    channels: int = 128
    hidden: int = 128  # per direction
    heads: int = 8

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class CnnBlstmSa(nn.Module):
    """The paper's baseline: two (128-channel conv 3x3 + ReLU + max-pool 3) blocks, two BLSTM layers of
    128 per direction, 8-head self-attention pooling to one vector (a learnt query), a classifier."""

    def __init__(self, config: CnnBlstmSaConfig) -> None:
        super().__init__()
        self.config = config
        n_mels, num_classes, channels, hidden, heads = (config.n_mels, config.num_classes, config.channels,
                                                        config.hidden, config.heads)
        self.cnn = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3))
        self.blstm = nn.LSTM(channels * (n_mels // 9), hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.query = nn.Parameter(torch.randn(1, 1, 2 * hidden) * 0.02)
        self.attention = nn.MultiheadAttention(2 * hidden, heads, batch_first=True)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """features (B, T, n_mels), frames (B,) -> emotion logits (B, K)."""
        x = self.cnn(features.unsqueeze(1))  # (B, C, T/9, F/9)
        batch, channels, steps, frequencies = x.shape
        x, _ = self.blstm(x.permute(0, 2, 1, 3).reshape(batch, steps, channels * frequencies))
        padding = torch.arange(steps, device=x.device)[None, :] >= torch.div(frames, 9, rounding_mode="floor"
                                                                             ).clamp(min=1)[:, None]
        pooled, _ = self.attention(self.query.expand(batch, -1, -1), x, x, key_padding_mask=padding)
        return self.classifier(pooled[:, 0])
