"""An inference-only rewrite of a trained PLBNet: the same function, in ops that export and run fast.

Built from a trained network (weights copied, nothing learnt here) and exported to ONNX by
model/onnx_network.py. Differences from PLBNet.forward, each exact up to float32 rounding:
- input standardisation `(x - mean) / std` becomes `x * (1 / std) + (-mean / std)`;
- each per-frame BatchNorm (TimeBatchNorm) is one multiply-add with precomputed per-frame scale and
  shift (inference statistics only), and in the two one-channel blocks part of the conv itself
  (FrontConvBlock); a per-channel BatchNorm (network option frame_batchnorm=False) is folded into
  its conv's weights and bias (ChannelConvBlock);
- ELU is `max(x, exp(min(x, 0)) - 1)`: ONNX Runtime's own Elu kernel is ~3x slower on this CPU;
- the cross attention's scaled dot product is written out (ONNX has no 3-D SDPA);
- dynamic routing is written as matmuls (FastRouting);
- the logit scale is applied to the logits as in PLBNet.
Batch size is free; frames and coefficients are fixed by the config, as in training.
"""

import math

import torch
from emostream.model.plb import (
    CBAM,
    ConvBlock,
    DepthwiseSeparableConv,
    DynamicRouting,
    PLBNet,
    SpatialAttention,
    TimeBatchNorm,
    squash,
    valid_length,
)
from torch import nn


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU (alpha 1) as max(x, exp(min(x, 0)) - 1): x for x > 0 (exp(0) - 1 = 0), else exp(x) - 1
    (which is >= x). Four ONNX ops; ONNX Runtime's own Elu kernel was ~1 ms slower per window."""
    return torch.maximum(x, torch.exp(torch.clamp(x, max=0.0)) - 1.0)


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per feature of an inference-mode BatchNorm: bn(x) = scale * x + shift."""
    scale = (bn.weight * torch.rsqrt(bn.running_var + bn.eps)).detach()
    return scale, (bn.bias - bn.running_mean * scale).detach()


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv equal to `bn(conv(x))` at inference: s_c (W_c * x + b_c) + h_c = (s_c W_c) * x + (s_c b_c + h_c)."""
    scale, shift = batchnorm_affine(bn)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, bias=True)
    bias = folded.bias
    assert bias is not None
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
    return folded


def frame_affine(norm: TimeBatchNorm, coefficients: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (scale, shift) of an inference-mode TimeBatchNorm, (1, 1, frames, coefficients).

    Repeated over the coefficients on purpose: ONNX Runtime broadcasts a (1, 1, T, F) operand over
    the channels in contiguous spans, but a (1, 1, T, 1) one element by element (~0.3 ms slower).
    """
    scale, shift = batchnorm_affine(norm.norm)
    return (scale[None, None, :, None].expand(-1, -1, -1, coefficients).contiguous(),
            shift[None, None, :, None].expand(-1, -1, -1, coefficients).contiguous())


class FastConvBlock(nn.Module):
    """Conv -> per-frame multiply-add -> ELU -> 2x2 average pool (dropout is the identity)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, block: ConvBlock, coefficients_in: int) -> None:
        super().__init__()
        self.conv = block.conv
        conv = block.conv
        coefficients_out = valid_length(coefficients_in, conv.kernel_size[1], conv.dilation[1])
        scale, shift = frame_affine(block.norm, coefficients_out)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.pool = block.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(elu(self.conv(x) * self.scale + self.shift))


class FrontConvBlock(nn.Module):
    """A one-channel CNN block (the forward / reverse blocks) with its per-frame BatchNorm moved into
    the conv, exactly: with s_t, h_t the frame's scale and shift and W, b the conv's weights and bias,

        s_t * (sum_ij W[c,i,j] x[t+i, f+j] + b_c) + h_t
            = sum_i sum_j W[c,i,j] (s_t x[t+i, f+j]) + b_c s_t + 1 * h_t,

    a (1 x k) conv over k time-shifted, frame-scaled copies of x plus two constant planes (s, h):
    two passes over the (B, 64, 194, 37) maps fewer (~0.1 ms per block on this CPU).
    """

    frame_scale: torch.Tensor
    planes: torch.Tensor

    def __init__(self, block: ConvBlock, frames_in: int, coefficients_in: int) -> None:
        super().__init__()
        conv = block.conv
        if conv.in_channels != 1 or conv.dilation != (1, 1) or conv.bias is None:
            raise ValueError("FrontConvBlock takes a one-channel, undilated conv with a bias")
        self.time_taps, coefficient_taps = conv.kernel_size
        self.frames_out = valid_length(frames_in, self.time_taps)
        scale, shift = frame_affine(block.norm, coefficients_in)  # (1, 1, frames_out, coefficients_in)
        self.register_buffer("frame_scale", scale[..., :1].clone())  # (1, 1, frames_out, 1)
        self.register_buffer("planes", torch.cat([scale, shift], dim=1))  # (1, 2, frames_out, coefficients)
        weight = torch.zeros(conv.out_channels, self.time_taps + 2, 1, coefficient_taps)
        with torch.no_grad():
            weight[:, : self.time_taps, 0, :] = conv.weight[:, 0]
            weight[:, self.time_taps, 0, 0] = conv.bias  # times the s plane
            weight[:, self.time_taps + 1, 0, 0] = 1.0  # times the h plane
        self.conv = nn.Conv2d(self.time_taps + 2, conv.out_channels, (1, coefficient_taps), bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
        self.pool = block.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = torch.cat([x[:, :, i : i + self.frames_out, :] for i in range(self.time_taps)], dim=1)
        planes = self.planes.expand(x.shape[0], -1, -1, -1)
        return self.pool(elu(self.conv(torch.cat([shifted * self.frame_scale, planes], dim=1))))


class ChannelConvBlock(nn.Module):
    """A CNN block whose per-channel BatchNorm (frame_batchnorm=False) is folded into its conv
    (`folded_conv`), then ELU and the 2x2 average pool."""

    def __init__(self, block: ConvBlock) -> None:
        super().__init__()
        if not isinstance(block.norm, nn.BatchNorm2d):
            raise ValueError("ChannelConvBlock takes a block with a per-channel BatchNorm2d")
        self.conv = folded_conv(block.conv, block.norm)
        self.pool = block.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(elu(self.conv(x)))


class FastSpatialAttention(nn.Module):
    """Equation 3 with the scalar BatchNorm folded into the 7x7 conv (weights and a bias)."""

    def __init__(self, attention: SpatialAttention) -> None:
        super().__init__()
        self.conv = folded_conv(attention.conv, attention.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class FastCBAM(nn.Module):
    def __init__(self, cbam: CBAM) -> None:
        super().__init__()
        self.mlp = cbam.channel.mlp
        self.spatial = FastSpatialAttention(cbam.spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        return self.spatial(x * weights[:, :, None, None])


class FastSeparable(nn.Module):
    def __init__(self, separable: DepthwiseSeparableConv) -> None:
        super().__init__()
        self.depthwise = separable.depthwise
        self.pointwise = separable.pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return elu(self.pointwise(self.depthwise(x)))


class FastRouting(nn.Module):
    """Algorithm 1 (plb.DynamicRouting) as matmuls: u_hat made in (B, J, N, D) order by one broadcast
    matmul (no transpose), the weighted sums and agreements as matmuls instead of multiply + reduce,
    and the first iteration's softmax of zeros as the plain mean (57 ONNX nodes -> ~25)."""

    weight: torch.Tensor

    def __init__(self, routing: DynamicRouting) -> None:
        super().__init__()
        dim = routing.weight.shape[0]
        self.output_capsules = routing.output_capsules
        self.iterations = routing.iterations
        self.softmax_dim = routing.softmax_dim
        # (D, J*D) -> (J, D, D): u_hat[b, j] = u[b] @ weight[j]
        per_output = routing.weight.detach().reshape(dim, self.output_capsules, dim).permute(1, 0, 2)
        self.register_buffer("weight", per_output.contiguous())

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u_hat = u.unsqueeze(1) @ self.weight  # (B, J, N, D)
        logits: torch.Tensor | None = None
        v = u_hat  # bound below; iterations >= 1
        for iteration in range(self.iterations):
            if logits is None:  # softmax of zeros: every coupling 1/N (over inputs) or 1/J (outputs)
                total = u_hat.mean(dim=2) if self.softmax_dim == 2 else u_hat.sum(dim=2) / self.output_capsules
            else:
                coupling = torch.softmax(logits, dim=self.softmax_dim)  # (B, J, N)
                total = (coupling.unsqueeze(2) @ u_hat).squeeze(2)
            v = squash(total)  # (B, J, D)
            if iteration < self.iterations - 1:
                agreement = (u_hat @ v.unsqueeze(-1)).squeeze(-1)  # (B, J, N)
                logits = agreement if logits is None else logits + agreement
        return v


def cross_attention(query: torch.Tensor, context: torch.Tensor, scale: float, residual: bool) -> torch.Tensor:
    """plb.cross_attention with the scaled dot product written out; scale = 1 / sqrt(C * F)."""
    batch, channels, frames, coefficients = query.shape
    q = query.permute(0, 2, 1, 3).reshape(batch, frames, channels * coefficients)
    kv = context.permute(0, 2, 1, 3).reshape(batch, frames, channels * coefficients)
    weights = torch.softmax((q * scale) @ kv.transpose(1, 2), dim=-1)
    attended = (weights @ kv).reshape(batch, frames, channels, coefficients).permute(0, 2, 1, 3)
    return query + attended if residual else attended


class FastPLBNet(nn.Module):
    """PLBNet.forward for inference: (B, 1, frames, coefficients) -> logits (B, classes)."""

    input_scale: torch.Tensor
    input_shift: torch.Tensor

    def __init__(self, network: PLBNet) -> None:
        super().__init__()
        if network.training:
            raise ValueError("FastPLBNet is built from a network in eval mode")
        config = network.config
        self.capsule_dim = config.capsule_dim
        self.logit_scale = config.logit_scale
        branch_coefficients = valid_length(config.input_coefficients, config.kernel_size) // 2
        self.attention_scale = 1.0 / math.sqrt(config.channels * branch_coefficients)
        self.normalise_input = config.input_normalisation == "per-coefficient"
        if self.normalise_input:
            inverse_std = 1.0 / network.input_std.detach()
            self.register_buffer("input_scale", inverse_std.clone())
            self.register_buffer("input_shift", (-network.input_mean.detach() * inverse_std).clone())
        frames, coefficients = config.input_frames, config.input_coefficients
        self.forward_block: nn.Module
        self.reverse_block: nn.Module
        self.dilated_block: nn.Module
        if config.frame_batchnorm:
            self.forward_block = FrontConvBlock(network.forward_block, frames, coefficients)
            self.reverse_block = FrontConvBlock(network.reverse_block, frames, coefficients)
            self.dilated_block = FastConvBlock(network.dilated_block, branch_coefficients)
        else:
            self.forward_block = ChannelConvBlock(network.forward_block)
            self.reverse_block = ChannelConvBlock(network.reverse_block)
            self.dilated_block = ChannelConvBlock(network.dilated_block)
        self.cbam = FastCBAM(network.cbam)
        self.own_cbams = None if network.own_cbams is None else nn.ModuleList(
            [FastCBAM(cbam) for cbam in network.own_cbams])
        self.cross_attention_residual = config.cross_attention_residual
        self.separable = FastSeparable(network.separable)
        self.capsule_pool = network.capsule_pool
        self.spatial_attention = FastSpatialAttention(network.spatial_attention)
        self.self_attention = network.self_attention
        self.routing = FastRouting(network.routing)
        self.classifier = network.classifier

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        if self.normalise_input:
            mfcc = mfcc * self.input_scale + self.input_shift
        reverse_cbam, dilated_cbam = (self.cbam, self.cbam) if self.own_cbams is None else self.own_cbams
        forward_patterns = self.cbam(self.forward_block(mfcc))
        reverse_patterns = reverse_cbam(self.reverse_block(torch.flip(mfcc, dims=[2])))
        fused = cross_attention(forward_patterns, reverse_patterns, self.attention_scale, self.cross_attention_residual)
        x = dilated_cbam(self.dilated_block(fused))
        x = self.spatial_attention(self.capsule_pool(self.separable(x)))
        batch = x.shape[0]
        capsules = x.permute(0, 2, 3, 1).reshape(batch, -1, self.capsule_dim)
        routed = self.routing(self.self_attention(capsules))
        return self.classifier(routed.mean(dim=1)) * self.logit_scale

