"""The Pattern Learning Block network (TPMNet) of the PLB thesis (seed 000, section 3, Table 1).

Tensors are (batch, channels, frames, coefficients): the MFCC "image" has time on the height axis,
as the thesis's Keras model had it on axis 1 of (batch, 196, 39, 1). Shapes below are for the
thesis's 196 x 39 input; see model/PLB.md for every choice where the thesis is ambiguous.

    forward MFCC (B,1,196,39) ----> CNN block ---> CBAM* -\
                                                          cross-attention (Q forward, K/V reversed)
    reversed MFCC (B,1,196,39) ---> CNN block ---> CBAM* -/        -> (B,64,97,18)
    -> DCNN (dilation 2) -> (B,64,46,7) -> CBAM* -> DWSCNN -> (B,384,22,2) -> spatial attention 2
    -> capsules (B,264,64) -> self-attention + LayerNorm -> dynamic routing (B,6,64) -> GAP (B,64)
    -> dense (B,classes)                                      (* one CBAM, weights shared)
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from emostream.schemas.model_card import FeatureSettings
from torch import nn

_FEATURES = FeatureSettings()  # the network's input shape follows the feature settings


@dataclass(frozen=True)
class PLBConfig:
    """Hyper-parameters of Table 1; the defaults reproduce its parameter counts."""

    num_classes: int = 7
    input_frames: int = _FEATURES.input_frames  # MFCC frames: 100,000 samples at 22,050 Hz, hop 512 = 196
    input_coefficients: int = _FEATURES.n_coefficients  # MFCC coefficients: 39
    channels: int = 64  # filters of every Conv2D
    kernel_size: int = 3
    dilation: int = 2  # DCNN rate
    dropout: float = 0.2  # SpatialDropout2D rate
    cbam_hidden: int = 32  # channel-attention MLP width (4,192 + 102 = Table 1's 4,294)
    spatial_kernel_size: int = 7  # f^{7x7} of equation 3
    capsule_dim: int = 64  # (L, 64) capsules
    output_capsules: int = 6  # routing weight 64 x (6 x 64) = Table 1's 24,576
    routing_iterations: int = 3  # R of algorithm 1
    routing_softmax: str = "inputs"  # c = softmax(b) over input capsules (weighted mean) or "outputs"
    pool_before_capsules: bool = True  # 2x2 average pool after DWSCNN: L = 264 instead of 1,320
    keras_init: bool = True  # Glorot-uniform weights, zero biases: the thesis's TensorFlow defaults
    frame_batchnorm: bool = True  # BatchNorm axis=1 is time (Table 1's counts); False: per channel (ablation)
    shared_cbam: bool = True  # one CBAM after all three blocks (Table 1's count); False: one each (+2 x 4,294)
    cross_attention_residual: bool = True  # fused = forward + attended reverse; False: the attended reverse alone
    input_normalisation: str = "none"  # "per-coefficient": standardise each MFCC coefficient (fitted stats)
    logit_scale: float = 1.0  # constant factor on the logits (no parameter); see model/PLB.md

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


INPUT_NORMALISATIONS = ("none", "per-coefficient")


def valid_length(length: int, kernel_size: int, dilation: int = 1) -> int:
    """Output length of an unpadded ('valid') convolution."""
    return length - dilation * (kernel_size - 1)


class TimeBatchNorm(nn.Module):
    """Batch normalisation over the frame axis: Keras `BatchNormalization(axis=1)` on (B, T, F, C).

    The thesis normalises axis 1 of its channels-last tensors, which is time; Table 1's counts
    (776 = 4 x 194, 372 = 4 x 93) confirm one statistic per frame. x: (B, C, T, F) -> same shape.
    """

    def __init__(self, num_frames: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_frames, eps=1e-3, momentum=0.01)  # Keras defaults

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        # Inference: the same affine map per frame, broadcast in place of two layout copies.
        norm = self.norm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        return torch.addcmul(shift[None, None, :, None], x, scale[None, None, :, None])


class ConvBlock(nn.Module):
    """Conv2D -> BatchNorm(time) -> ELU -> AveragePooling 2x2 -> SpatialDropout2D (Table 1's CNN / DCNN)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, frames_in: int, dilation: int,
                 dropout: float, frame_batchnorm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, dilation=dilation)
        self.norm: nn.Module = (TimeBatchNorm(valid_length(frames_in, kernel_size, dilation)) if frame_batchnorm
                                else nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01))
        self.pool = nn.AvgPool2d(2)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(F.elu(self.norm(self.conv(x)))))


class ChannelAttention(nn.Module):
    """Equation 2: M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), one MLP for both. x: (B,C,T,F)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        return x * weights[:, :, None, None]


class SpatialAttention(nn.Module):
    """Equation 3: M_s(F) = sigmoid(f7x7([AvgPool_c(F); MaxPool_c(F)])), conv without bias + BN(1)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(1, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel then spatial attention (Woo et al. 2018); one instance is shared across the network."""

    def __init__(self, channels: int, hidden: int, spatial_kernel_size: int) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, hidden)
        self.spatial = SpatialAttention(spatial_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def cross_attention(query: torch.Tensor, context: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """Parameter-free scaled dot-product attention across time (equation 1), with a residual.

    Each frame of `query` (B,C,T,F) attends over the frames of `context` (same shape); a frame is the
    C x F vector at one time step. Returns query + attended context (without `residual`: the attended
    context alone), (B,C,T,F).
    """
    batch, channels, frames, coefficients = query.shape
    q = query.permute(0, 2, 1, 3).reshape(batch, frames, channels * coefficients)
    kv = context.permute(0, 2, 1, 3).reshape(batch, frames, channels * coefficients)
    attended = F.scaled_dot_product_attention(q, kv, kv).reshape(batch, frames, channels, coefficients)
    attended = attended.permute(0, 2, 1, 3)
    return query + attended if residual else attended


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 (bias) then pointwise 1x1 to capsule_dim x output_capsules channels: 640 + 24,960."""

    def __init__(self, channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, groups=channels)
        self.pointwise = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.pointwise(self.depthwise(x)))


class CapsuleSelfAttention(nn.Module):
    """Scaled dot-product self-attention over capsules with a learnt scale (1 parameter), then LayerNorm.

    x: (B, L, D) -> (B, L, D). The scale starts at 1/sqrt(D) as in equation 1.
    """

    def __init__(self, capsule_dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0 / math.sqrt(capsule_dim)))
        self.norm = nn.LayerNorm(capsule_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.scale * (x @ x.transpose(1, 2)), dim=-1)
        return self.norm(x + weights @ x)


def squash(vectors: torch.Tensor, dim: int = -1, eps: float = 1e-7) -> torch.Tensor:
    """CapsNet's non-linearity: keeps direction, maps length to [0, 1)."""
    squared_norm = (vectors**2).sum(dim=dim, keepdim=True)
    return vectors * squared_norm / (1.0 + squared_norm) / torch.sqrt(squared_norm + eps)


class DynamicRouting(nn.Module):
    """Algorithm 1: u_hat = u W; b = 0; R times: c = softmax(b); v = squash(sum c u_hat); b += u_hat . v.

    One weight matrix W (D x J*D) shared by all input capsules (24,576 parameters for D=64, J=6).
    u: (B, L, D) input capsules -> v: (B, J, D) output capsules.
    """

    def __init__(self, capsule_dim: int, output_capsules: int, iterations: int, softmax_over: str = "inputs") -> None:
        super().__init__()
        if softmax_over not in ("inputs", "outputs"):
            raise ValueError(f"routing softmax_over {softmax_over!r} unknown; use inputs or outputs")
        self.output_capsules = output_capsules
        self.iterations = iterations
        self.softmax_dim = 2 if softmax_over == "inputs" else 1
        self.weight = nn.Parameter(torch.empty(capsule_dim, output_capsules * capsule_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        batch, num_inputs, dim = u.shape
        u_hat = (u @ self.weight).reshape(batch, num_inputs, self.output_capsules, dim).transpose(1, 2)
        logits = u.new_zeros(batch, self.output_capsules, num_inputs)
        for iteration in range(self.iterations):
            coupling = torch.softmax(logits, dim=self.softmax_dim)
            v = squash((coupling.unsqueeze(-1) * u_hat).sum(dim=2))
            if iteration < self.iterations - 1:
                logits = logits + (u_hat * v.unsqueeze(2)).sum(dim=-1)
        return v


def _keras_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PLBNet(nn.Module):
    """TPMNet: two-direction pattern learning, attention, capsules. Input (B, 1, frames, coefficients)."""

    def __init__(self, config: PLBConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.forward_block = ConvBlock(1, c.channels, c.kernel_size, c.input_frames, 1, c.dropout, c.frame_batchnorm)
        self.reverse_block = ConvBlock(1, c.channels, c.kernel_size, c.input_frames, 1, c.dropout, c.frame_batchnorm)
        self.cbam = CBAM(c.channels, c.cbam_hidden, c.spatial_kernel_size)
        # Without sharing (an ablation), the reversed branch and the DCNN get CBAMs of their own.
        self.own_cbams = None if c.shared_cbam else nn.ModuleList(
            [CBAM(c.channels, c.cbam_hidden, c.spatial_kernel_size) for _ in ("reverse", "dilated")])
        branch_frames = valid_length(c.input_frames, c.kernel_size) // 2
        self.dilated_block = ConvBlock(c.channels, c.channels, c.kernel_size, branch_frames, c.dilation, c.dropout,
                                       c.frame_batchnorm)
        self.separable = DepthwiseSeparableConv(c.channels, c.capsule_dim * c.output_capsules, c.kernel_size)
        self.capsule_pool = nn.AvgPool2d(2) if c.pool_before_capsules else nn.Identity()
        self.spatial_attention = SpatialAttention(c.spatial_kernel_size)
        self.self_attention = CapsuleSelfAttention(c.capsule_dim)
        self.routing = DynamicRouting(c.capsule_dim, c.output_capsules, c.routing_iterations, c.routing_softmax)
        self.classifier = nn.Linear(c.capsule_dim, c.num_classes)
        if c.keras_init:
            self.apply(_keras_init)
        if c.input_normalisation not in INPUT_NORMALISATIONS:
            raise ValueError(f"input_normalisation {c.input_normalisation!r} unknown; "
                             f"use one of {', '.join(INPUT_NORMALISATIONS)}")
        if c.input_normalisation == "per-coefficient":
            # Statistics, not parameters: fitted on the training set, saved with the weights.
            self.register_buffer("input_mean", torch.zeros(c.input_coefficients))
            self.register_buffer("input_std", torch.ones(c.input_coefficients))

    def fit_input_normalisation(self, features: torch.Tensor) -> None:
        """Fit the input statistics on training features (clips, frames, coefficients); no-op if off."""
        if self.config.input_normalisation == "per-coefficient":
            flat = features.reshape(-1, features.shape[-1]).double()
            self.input_mean.copy_(flat.mean(dim=0))
            self.input_std.copy_(flat.std(dim=0).clamp_min(1e-3))

    def input_fill_value(self) -> torch.Tensor | None:
        """The raw input value that normalises to 0 (what SpecAugment masks fill with), (1,1,1,F)."""
        if self.config.input_normalisation == "per-coefficient":
            return self.input_mean.detach().clone()[None, None, None, :]
        return None

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        """mfcc: (B, 1, frames, coefficients) float32 -> logits (B, num_classes)."""
        if self.config.input_normalisation == "per-coefficient":
            mfcc = (mfcc - self.input_mean) / self.input_std
        reverse_cbam, dilated_cbam = (self.cbam, self.cbam) if self.own_cbams is None else self.own_cbams
        forward_patterns = self.cbam(self.forward_block(mfcc))
        reverse_patterns = reverse_cbam(self.reverse_block(torch.flip(mfcc, dims=[2])))
        fused = cross_attention(forward_patterns, reverse_patterns, self.config.cross_attention_residual)
        x = dilated_cbam(self.dilated_block(fused))
        x = self.spatial_attention(self.capsule_pool(self.separable(x)))
        batch = x.shape[0]
        capsules = x.permute(0, 2, 3, 1).reshape(batch, -1, self.config.capsule_dim)
        capsules = self.self_attention(capsules)
        routed = self.routing(capsules)
        return self.classifier(routed.mean(dim=1)) * self.config.logit_scale


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_parameters_with_bn_statistics(model: nn.Module) -> int:
    """Trainable parameters + BatchNorm running mean/variance: how Keras (and Table 1) counts."""
    statistics = sum(
        buffer.numel()
        for name, buffer in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    )
    return count_parameters(model) + statistics
