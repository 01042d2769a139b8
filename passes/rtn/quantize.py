"""Round-to-nearest group quantization, computed the way onnxruntime's MLAS quantizer does.

Per group of `group_size` weights along a row:
- asymmetric: the range [min(x, 0), max(x, 0)] maps onto codes 0..2**b - 1; scale =
  range / (2**b - 1), zero point = round(-min / scale) clamped to the codes;
- symmetric: the value of largest magnitude maps to code 0 exactly (scale = that value /
  -2**(b - 1), keeping its sign), zero point the midpoint 2**(b - 1);
- code = clamp(round(x * (1 / scale) + zero point)), in float32, half away from zero.
That reproduces `MatMulNBitsQuantizer`'s DefaultWeightOnlyQuantConfig codes, scales and
zero points bit for bit (tests/test_rtn.py compares them).
"""

from __future__ import annotations

import numpy as np

from mapper.compression.codes import GroupCodes


def _round_half_away(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.floor(np.abs(values) + np.float32(0.5))


def group_view(matrix: np.ndarray, group_size: int) -> np.ndarray:
    """[rows, groups, group_size] of a [rows, cols] matrix, zero-padded to whole groups."""
    rows, cols = matrix.shape
    groups = -(-cols // group_size)
    padded = np.zeros((rows, groups * group_size), dtype=np.float32)
    padded[:, :cols] = matrix
    return padded.reshape(rows, groups, group_size)


def scales_and_zero_points(matrix: np.ndarray, bits: int, group_size: int, symmetric: bool
                           ) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 scales [rows, groups] and uint8 zero points (None when symmetric)."""
    blocks = group_view(matrix.astype(np.float32), group_size)
    low, high = blocks.min(axis=-1), blocks.max(axis=-1)
    if symmetric:
        extreme = np.where(np.abs(high) > np.abs(low), high, low)
        return (extreme / np.float32(-(1 << (bits - 1)))).astype(np.float32), None
    top = (1 << bits) - 1
    low, high = np.minimum(low, 0), np.maximum(high, 0)
    scales = ((high - low) / np.float32(top)).astype(np.float32)
    safe = np.where(scales != 0, scales, np.float32(1))
    zero = np.where(scales != 0, np.float32(0) - low / safe, low)
    zero_points = np.where(zero < 0, 0, np.where(zero > top, top, _round_half_away(zero)))
    return scales, zero_points.astype(np.uint8)


def quantize_with(matrix: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                  bits: int, group_size: int) -> GroupCodes:
    """Codes of `matrix` [rows, cols] for given group scales and zero points."""
    rows, cols = matrix.shape
    blocks = group_view(matrix.astype(np.float32), group_size)
    zero = (np.full(scales.shape, 1 << (bits - 1), dtype=np.uint8) if zero_points is None
            else zero_points).astype(np.float32)
    inverse = np.where(scales != 0, np.float32(1) / np.where(scales != 0, scales, 1), 0)
    scaled = blocks * inverse.astype(np.float32)[..., None]
    # The zero point is added in float before rounding (a value that lands just below .5
    # can round up once shifted), as MLAS does.
    shifted = (scaled + zero[..., None]).astype(np.float32)
    codes = np.clip(_round_half_away(shifted), 0, (1 << bits) - 1)
    codes = codes.reshape(rows, -1)[:, :cols].astype(np.uint8)
    return GroupCodes(codes=codes, scales=scales.astype(np.float32), zero_points=zero_points,
                      bits=bits, group_size=group_size)


def round_to_nearest(matrix: np.ndarray, bits: int, group_size: int, symmetric: bool
                     ) -> GroupCodes:
    """RTN codes of `matrix` [rows, cols], groups along cols."""
    scales, zero_points = scales_and_zero_points(matrix, bits, group_size, symmetric)
    return quantize_with(matrix, scales, zero_points, bits, group_size)
