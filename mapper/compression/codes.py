"""Group-quantized weights as every compression pass hands them to emission.

A weight is held row by row: `rows x cols` with groups of `group_size` consecutive weights
along `cols`, the reduction dim (for a MatMul weight W[K, N] a row is one output channel,
W transposed; for an embedding table a row is one token's vector). Each group has a scale
and, unless symmetric, a zero point; a code q decodes to `(q - zero_point) * scale`, exactly
as DequantizeLinear and MatMulNBits compute it. With a level table (NormalFloat codes) a
code decodes to `levels[q] * scale` instead, and there are no zero points. A group whose
scale is 0 is pruned: it decodes to 0 whatever its codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class GroupCodes:
    """Codes, scales and zero points of one weight (see the module docstring)."""

    codes: np.ndarray  # uint8 [rows, cols], each < 2**bits
    scales: np.ndarray  # float32 [rows, groups]
    zero_points: np.ndarray | None  # uint8 [rows, groups]; None: symmetric, 2**(bits - 1)
    bits: int
    group_size: int
    levels: np.ndarray | None = None  # float32 [2**bits]: code -> value before the scale

    def __post_init__(self) -> None:
        rows, cols = self.codes.shape
        groups = -(-cols // self.group_size)
        if self.scales.shape != (rows, groups):
            raise ValueError(f"scales {self.scales.shape} do not match {rows} rows x {groups} "
                             "groups")
        if self.zero_points is not None and self.zero_points.shape != (rows, groups):
            raise ValueError("zero points must have the scales' shape")
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be 1..8, got {self.bits}")
        if self.levels is not None and (self.zero_points is not None
                                        or self.levels.shape != (1 << self.bits,)):
            raise ValueError("a level table has 2**bits entries and no zero points")

    @property
    def rows(self) -> int:
        """Output channels (or table rows)."""
        return int(self.codes.shape[0])

    @property
    def cols(self) -> int:
        """The reduction dim (or the embedding width)."""
        return int(self.codes.shape[1])

    @property
    def groups(self) -> int:
        """Groups per row (the last one may be partial)."""
        return int(self.scales.shape[1])

    @property
    def symmetric(self) -> bool:
        """True when no zero points are stored (the midpoint or a level table is implied)."""
        return self.zero_points is None

    def zero_point_array(self) -> np.ndarray:
        """Zero points of every group (the implied midpoint when symmetric)."""
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, 1 << (self.bits - 1), dtype=np.uint8)

    def pruned(self) -> np.ndarray:
        """bool [rows, groups]: groups stored with scale 0 (they decode to exactly 0)."""
        return self.scales == 0

    def dequantize(self) -> np.ndarray:
        """float32 [rows, cols]: what DequantizeLinear / MatMulNBits compute from these."""
        per_column = np.repeat(np.arange(self.groups), self.group_size)[:self.cols]
        scale = self.scales.astype(np.float32)[:, per_column]
        if self.levels is not None:
            return (self.levels.astype(np.float32)[self.codes] * scale).astype(np.float32)
        zero = self.zero_point_array().astype(np.int32)[:, per_column]
        return ((self.codes.astype(np.int32) - zero).astype(np.float32) * scale
                ).astype(np.float32)


def pack_bits(values: np.ndarray, bits: int, fill: int = 0) -> np.ndarray:
    """Pack the last axis of `values` (each < 2**bits) as a little-endian bit stream: value i
    takes bits [i * bits, (i + 1) * bits), lowest first (two 4-bit values per byte, low
    nibble first, as MatMulNBits stores them). Partial bytes are filled with `fill` values."""
    values = np.asarray(values, dtype=np.uint8)
    count = values.shape[-1]
    per_byte = 8 // bits if 8 % bits == 0 else 0
    if per_byte:
        pad = (-count) % per_byte
        if pad:
            filler = np.full((*values.shape[:-1], pad), fill, dtype=np.uint8)
            values = np.concatenate([values, filler], axis=-1)
        grouped = values.reshape(*values.shape[:-1], -1, per_byte).astype(np.uint16)
        packed = np.zeros(grouped.shape[:-1], dtype=np.uint16)
        for index in range(per_byte):
            packed |= grouped[..., index] << (bits * index)
        return packed.astype(np.uint8)
    total = math.ceil(count * bits / 8)
    stream = np.unpackbits(values[..., None], axis=-1, bitorder="little")[..., :bits]
    flat = stream.reshape(*values.shape[:-1], count * bits)
    pad = total * 8 - count * bits
    if pad:
        flat = np.concatenate([flat, np.zeros((*flat.shape[:-1], pad), dtype=np.uint8)], -1)
    return np.packbits(flat, axis=-1, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of `pack_bits`: `count` values per row of the last axis."""
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, bitorder="little")
    stream = stream[..., :count * bits].reshape(*packed.shape[:-1], count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16))
    return (stream.astype(np.uint16) * weights).sum(axis=-1).astype(np.uint8)


def matmulnbits_arrays(codes: GroupCodes) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """B [rows, groups, group_size * bits / 8], scales [rows, groups] and packed zero points
    [rows, ceil(groups * bits / 8)] in MatMulNBits' layout (onnxruntime's own quantizer
    pads a partial last group with code 0 and unused zero-point fields with the midpoint)."""
    if 8 % codes.bits or codes.levels is not None:
        raise ValueError(f"MatMulNBits holds 2, 4 or 8-bit integer codes, not {codes.bits}")
    padded_cols = codes.groups * codes.group_size
    values = np.zeros((codes.rows, padded_cols), dtype=np.uint8)
    values[:, :codes.cols] = codes.codes
    blob = codes.group_size * codes.bits // 8
    packed = pack_bits(values, codes.bits).reshape(codes.rows, codes.groups, blob)
    zero_points = None
    if codes.zero_points is not None:
        zero_points = pack_bits(codes.zero_points, codes.bits, fill=1 << (codes.bits - 1))
    return packed, codes.scales.astype(np.float32), zero_points
