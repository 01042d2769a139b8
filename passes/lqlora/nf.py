"""NormalFloat quantization with double-quantized block scales (QLoRA / LQ-LoRA).

A config is (b, B0, b0, B1, s1): codes of `b` bits index the NF-b levels (normal-quantile
points spanning [-1, 1], one of them exactly 0; the same construction as the LQ-LoRA and
bitsandbytes code); every B0 consecutive weights of a row share an absmax scale; those
first-level scales, less their minimum (one fp32 offset per matrix), are quantized to
unsigned b0-bit codes in groups of B1 with one second-level scale in dtype s1 per group.
Storage is b + b0/B0 + s1/(B0·B1) bits per weight, plus the 32-bit offset per matrix.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ScaleDtype = Literal["bf16", "fp16", "fp32"]
SCALE_BITS = {"bf16": 16, "fp16": 16, "fp32": 32}
_NF_OFFSET = 0.9677083


@dataclass(frozen=True, order=True)
class NfConfig:
    """One quantization config of the grid."""

    bits: int
    block: int
    scale_bits: int
    scale_block: int
    scale_dtype: ScaleDtype

    def bits_per_weight(self) -> float:
        """b + b0/B0 + s1/(B0·B1) (the per-matrix offset aside)."""
        return (self.bits + self.scale_bits / self.block
                + SCALE_BITS[self.scale_dtype] / (self.block * self.scale_block))

    def label(self) -> str:
        """A compact name, e.g. nf4-b64-q8x256-fp32."""
        return (f"nf{self.bits}-b{self.block}-q{self.scale_bits}x{self.scale_block}-"
                f"{self.scale_dtype}")


def paper_grid() -> list[NfConfig]:
    """The 432 configs of LQ-LoRA: b, b0 in {2,3,4,8}, B0 in {16,32,64}, B1 in {16,64,256},
    s1 in {bf16, fp16, fp32}."""
    return [NfConfig(b, b0_block, b0, b1_block, dtype)
            for b, b0, b0_block, b1_block, dtype in itertools.product(
                (2, 3, 4, 8), (2, 3, 4, 8), (16, 32, 64), (16, 64, 256),
                ("bf16", "fp16", "fp32"))]


QLORA_NF4 = NfConfig(4, 64, 8, 256, "fp32")


# bitsandbytes' NF4 table as it ships (and as onnxruntime's MatMulBnb4 decodes): the same
# construction as below, whose float32 rounding differs from it in the last bit or two.
BNB_NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
           -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
           0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
           0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
           0.7229568362236023, 1.0)


@functools.cache
def nf_levels(bits: int) -> np.ndarray:
    """float32 [2**bits] NF levels, ascending, from -1 to 1 with an exact 0 (NF4: exactly
    bitsandbytes' table, so MatMulBnb4 decodes the same values)."""
    if bits == 4:
        return np.asarray(BNB_NF4, dtype=np.float32)
    from statistics import NormalDist

    # erfinv(y) = Φ⁻¹((y + 1) / 2) / √2, with Φ the standard normal CDF (the stdlib's).
    standard = NormalDist()
    sigma = -1.0 / (math.sqrt(2.0) * (standard.inv_cdf((1.0 - 2.0 * _NF_OFFSET + 1.0) / 2)
                                      / math.sqrt(2.0)))
    half = 1 << (bits - 1)
    left = np.linspace(1.0 - _NF_OFFSET, 0.5, half)
    right = np.linspace(0.5, _NF_OFFSET, half + 1)
    quantiles = np.concatenate([left[:-1], right])
    values = np.asarray([NormalDist(0.0, sigma).inv_cdf(float(q)) for q in quantiles])
    values[half - 1] = 0.0
    return values.astype(np.float32)


def _to_dtype(values: np.ndarray, dtype: ScaleDtype) -> np.ndarray:
    """float32 values rounded to `dtype` (bf16 by round-to-nearest-even on the bits)."""
    values = values.astype(np.float32)
    if dtype == "fp32":
        return values
    if dtype == "fp16":
        return values.astype(np.float16).astype(np.float32)
    bits = values.view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


@dataclass(frozen=True, eq=False)
class NfWeight:
    """A matrix [rows, cols] in one NF config: codes, and the double-quantized scales."""

    config: NfConfig
    rows: int
    cols: int
    codes: np.ndarray  # uint8 [rows, cols]
    scale_codes: np.ndarray  # uint8 [blocks]: first-level scales as b0-bit codes
    scale_scales: np.ndarray  # float32 [ceil(blocks / B1)], values exact in scale_dtype
    offset: np.float32

    @property
    def blocks(self) -> int:
        """First-level blocks (B0 weights each)."""
        return int(self.scale_codes.size)

    def block_scales(self) -> np.ndarray:
        """float32 [rows, cols / B0]: each block's decoded absmax, as the model decodes it:
        offset + code * (second-level scale / (2**b0 - 1))."""
        step = (self.scale_scales / np.float32((1 << self.config.scale_bits) - 1)
                ).astype(np.float32)
        per_block = np.repeat(step, self.config.scale_block)[:self.blocks]
        scales = (self.scale_codes.astype(np.float32) * per_block).astype(np.float32)
        scales = (scales + self.offset).astype(np.float32)
        return scales.reshape(self.rows, self.cols // self.config.block)

    def dequantize(self) -> np.ndarray:
        """float32 [rows, cols]."""
        scales = np.repeat(self.block_scales(), self.config.block, axis=1)
        return (nf_levels(self.config.bits)[self.codes] * scales).astype(np.float32)

    def stored_bits(self) -> int:
        """Bits this encoding stores: codes, scale codes, second-level scales, offset."""
        return (self.codes.size * self.config.bits + self.blocks * self.config.scale_bits
                + self.scale_scales.size * SCALE_BITS[self.config.scale_dtype] + 32)


def quantize(matrix: np.ndarray, config: NfConfig) -> NfWeight:
    """NF-quantize a [rows, cols] matrix (cols a multiple of B0) with double quantization."""
    rows, cols = matrix.shape
    if cols % config.block:
        raise ValueError(f"{cols} columns are not a multiple of the block {config.block}")
    a = matrix.astype(np.float32).reshape(-1, config.block)
    absmax = np.abs(a).max(axis=1)
    offset = np.float32(absmax.min())
    centred = (absmax - offset).astype(np.float32)
    blocks = centred.size
    groups = -(-blocks // config.scale_block)
    padded = np.zeros(groups * config.scale_block, dtype=np.float32)
    padded[:blocks] = centred
    top = (1 << config.scale_bits) - 1
    second = _to_dtype(padded.reshape(groups, config.scale_block).max(axis=1), config.scale_dtype)
    step = (second / np.float32(top)).astype(np.float32)
    safe = np.where(step > 0, step, np.float32(1))
    scale_codes = np.clip(np.round(padded.reshape(groups, -1) / safe[:, None]), 0, top)
    scale_codes = np.where(step[:, None] > 0, scale_codes, 0).ravel()[:blocks].astype(np.uint8)
    encoded = NfWeight(config, rows, cols, np.zeros((rows, cols), np.uint8), scale_codes,
                       second, offset)
    scales = encoded.block_scales().reshape(-1)
    normalized = a / np.where(scales > 0, scales, np.float32(1))[:, None]
    codes = nearest_level(normalized.ravel(), config.bits).reshape(rows, cols)
    return NfWeight(config, rows, cols, codes, scale_codes, second, offset)


_BINS = 1 << 13


@functools.cache
def _bin_table(bits: int) -> tuple[np.ndarray, np.ndarray]:
    levels = nf_levels(bits)
    edges = ((levels[1:] + levels[:-1]) / 2).astype(np.float32)
    starts = np.linspace(-1.0, 1.0, _BINS + 1, dtype=np.float64)[:-1].astype(np.float32)
    return edges, np.searchsorted(edges, starts, side="left").astype(np.int64)


def nearest_level(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 index of the nearest NF level of each value (ties to the upper one), exactly
    as searchsorted over the midpoints, via a bin table: bins are narrower than the closest
    two levels, so a bin holds at most one midpoint and one comparison finishes it."""
    edges, table = _bin_table(bits)
    x = values.astype(np.float32)
    bins = np.clip(((x + 1.0) * (_BINS / 2)).astype(np.int64), 0, _BINS - 1)
    base = table[bins]
    nxt = np.minimum(base, edges.size - 1)
    return (base + ((base < edges.size) & (edges[nxt] < x))).astype(np.uint8)
