"""ITU-T G.711 mu-law: the telephone network's 8-bit companding, as gateways send it (codes stored
bit-inverted, as on the wire). The streaming stage decodes with it; augmentation and benchmarks encode."""

import numpy as np

_MULAW_BIAS, _MULAW_CLIP = 0x84, 32_635


def mulaw_encode(samples_s16: np.ndarray) -> np.ndarray:
    """ITU-T G.711 mu-law encoder: int16 -> uint8 codes (bit-inverted, as on the wire)."""
    sign = (samples_s16 < 0).astype(np.int32)
    magnitude = np.minimum(np.abs(samples_s16.astype(np.int32)), _MULAW_CLIP) + _MULAW_BIAS
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~((sign << 7) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    """ITU-T G.711 mu-law decoder: uint8 codes -> int16."""
    inverted = ~codes.astype(np.int32) & 0xFF
    exponent = (inverted >> 4) & 0x07
    magnitude = ((((inverted & 0x0F) << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(inverted & 0x80, -magnitude, magnitude).astype(np.int16)
