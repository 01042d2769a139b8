"""Stage 1 (BQPO) of one weight: the pruned groups, then every code chosen with error
compensation (GPTQ / SparseGPT column updates from the Cholesky factor of H⁻¹).

Rows are output channels, columns the reduction dim K, groups `group_size` consecutive
columns of one row. H = XᵀX of the layer's calibration inputs. Walking the columns left to
right, each column is quantized (or zeroed, in a pruned group) and its error, scaled by
the inverse Hessian, is pushed onto the columns not yet quantized, so the kept weights
absorb what the pruned and rounded ones lose. A group's scale and zero point are chosen
when the walk enters it, from the compensated weights, by the clipping ratio that
minimizes its rounding error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mapper.compression.codes import GroupCodes

# Ratios of the group's range tried for its scale (1.0: the full min-max range).
CLIP_RATIOS = tuple(1.0 - 0.04 * i for i in range(8))
DAMPING = 0.01


@dataclass(frozen=True, eq=False)
class Encoded:
    """Codes of one weight and the float scales before any refit."""

    codes: np.ndarray  # uint8 [rows, cols]
    scales: np.ndarray  # float32 [rows, groups], 0 where pruned
    zero_points: np.ndarray | None  # uint8 [rows, groups]


def inverse_cholesky(hessian: np.ndarray, damping: float = DAMPING) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Upper Cholesky factor U of (H + λI)⁻¹ (H⁻¹ = UᵀU), and the damped H, with dead
    columns (no signal) given a unit diagonal."""
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damping * float(np.mean(np.diag(h)))
    for _ in range(8):
        try:
            inverse = np.linalg.inv(h)
            factor = np.linalg.cholesky(inverse).T
            return factor, h
        except np.linalg.LinAlgError:
            h[np.diag_indices_from(h)] += damping * float(np.mean(np.diag(h)))
    raise np.linalg.LinAlgError("the Hessian stays singular after damping")


def _group_params(block: np.ndarray, bits: int, symmetric: bool,
                  importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (and zero point) per row of one group, by the clipping ratio of least rounding
    error, each column's error weighted by its `importance` (the H diagonal: how much
    signal that input carries)."""
    top = (1 << bits) - 1
    low = np.minimum(block.min(axis=1), 0.0)
    high = np.maximum(block.max(axis=1), 0.0)
    best_err = np.full(block.shape[0], np.inf)
    best_scale = np.zeros(block.shape[0])
    best_zero = np.zeros(block.shape[0])
    for ratio in CLIP_RATIOS:
        if symmetric:
            extreme = np.where(np.abs(high) > np.abs(low), high, low) * ratio
            scale = extreme / -(1 << (bits - 1))
            zero = np.full_like(scale, 1 << (bits - 1))
        else:
            lo, hi = low * ratio, high * ratio
            scale = (hi - lo) / top
            zero = np.clip(np.round(-lo / np.where(scale != 0, scale, 1)), 0, top)
        safe = np.where(scale != 0, scale, 1.0)
        codes = np.clip(np.round(block / safe[:, None]) + zero[:, None], 0, top)
        err = ((codes - zero[:, None]) * scale[:, None] - block) ** 2
        if importance is not None:
            err = err * importance[None, :]
        err = err.sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
    return best_scale, (None if symmetric else best_zero)


def quantize_pruned(weight: np.ndarray, hessian: np.ndarray, pruned: np.ndarray, bits: int,
                    group_size: int, symmetric: bool, act_order: bool | None = None
                    ) -> Encoded:
    """Codes of `weight` [rows, cols] with `pruned` [rows, groups] groups zeroed, every
    rounding and pruning error compensated on the columns not yet visited.

    With `act_order`, columns are visited by decreasing H diagonal (the most active inputs
    first, as GPTQ's act-order does) and every group's scale is fixed up front from the
    original weights ("static groups"); without it, columns go left to right and a group's
    scale is chosen when the walk enters it, from the compensated weights. The default
    (None) uses act-order for a layer without pruned groups only: where groups are pruned,
    compensation grows the kept weights past any range fixed up front (measured: 7% less
    output error at 50% sparsity without act-order, 10% more at 0%)."""
    if act_order is None:
        act_order = not bool(pruned.any())
    rows, cols = weight.shape
    groups = -(-cols // group_size)
    top = (1 << bits) - 1
    dead = np.diag(hessian) == 0
    w = weight.astype(np.float64).copy()
    w[:, dead] = 0.0
    group_of = np.arange(cols) // group_size
    scales = np.zeros((rows, groups))
    zeros = np.full((rows, groups), float(1 << (bits - 1)))
    fixed = np.zeros(groups, dtype=bool)
    if act_order:
        for group in range(groups):
            cols_of = slice(group * group_size, min((group + 1) * group_size, cols))
            _set_group(scales, zeros, group, w[:, cols_of], pruned, bits, symmetric,
                       np.diag(hessian)[cols_of])
        fixed[:] = True
        order = np.argsort(-np.diag(hessian), kind="stable")
    else:
        order = np.arange(cols)
    factor, _ = inverse_cholesky(hessian[np.ix_(order, order)])
    # float32 for the column walk (as GPTQ runs it): half the work of float64.
    factor = factor.astype(np.float32)
    w = w[:, order].astype(np.float32)
    diagonal = np.diag(hessian)

    def quantize(block: np.ndarray, i: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        column = int(order[position])
        group = int(group_of[column])
        if not fixed[group]:
            end = min(group_size, block.shape[1] - i)
            _set_group(scales, zeros, group, block[:, i:i + end], pruned, bits, symmetric,
                       diagonal[order[position:position + end]])
            fixed[group] = True
        scale, zero = scales[:, group], zeros[:, group]
        safe = np.where(scale != 0, scale, 1.0)
        code = np.clip(np.round(block[:, i] / safe) + zero, 0, top)
        code = np.where(scale != 0, code, zero)
        return code.astype(np.uint8), (code - zero) * scale

    codes = compensated_walk(w, factor, order, max(group_size, 128 // group_size * group_size),
                             quantize)
    return Encoded(codes=codes, scales=scales.astype(np.float32),
                   zero_points=None if symmetric else zeros.astype(np.uint8))


# (the current block of compensated weights, the column's index in it, its position in
# the visiting order) -> (codes [rows], decoded values [rows])
ColumnQuantizer = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def compensated_walk(weight: np.ndarray, factor: np.ndarray, order: np.ndarray,
                     block_size: int, quantize: ColumnQuantizer) -> np.ndarray:
    """GPTQ's column walk: uint8 codes [rows, cols] of `weight` (columns already in visiting
    `order`, float32), each column quantized by `quantize` and its error pushed onto the
    columns not yet visited through `factor`, the upper Cholesky factor of H⁻¹ in that
    order; updates are applied lazily, a block of columns at a time."""
    rows, cols = weight.shape
    w = weight.copy()
    codes = np.zeros((rows, cols), dtype=np.uint8)
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        part = w[:, start:stop].copy()
        errors = np.zeros_like(part)
        local = factor[start:stop, start:stop]
        for i in range(stop - start):
            code, decoded = quantize(part, i, start + i)
            codes[:, int(order[start + i])] = code
            error = (part[:, i] - decoded) / local[i, i]
            part[:, i:] -= np.outer(error, local[i, i:])
            errors[:, i] = error
        w[:, stop:] -= errors @ factor[start:stop, stop:]
    return codes


def _set_group(scales: np.ndarray, zeros: np.ndarray, group: int, block: np.ndarray,
               pruned: np.ndarray, bits: int, symmetric: bool,
               importance: np.ndarray | None) -> None:
    scale, zero = _group_params(block, bits, symmetric, importance)
    kept = ~pruned[:, group]
    scales[:, group] = np.where(kept, scale, 0.0)
    if zero is not None:
        zeros[:, group] = np.where(kept, zero, zeros[:, group])


def to_codes(encoded: Encoded, bits: int, group_size: int) -> GroupCodes:
    """The GroupCodes of an encoding, scales stored in fp16 (what the artifact keeps)."""
    return GroupCodes(codes=encoded.codes, scales=fp16(encoded.scales),
                      zero_points=encoded.zero_points, bits=bits, group_size=group_size)


def fp16(values: np.ndarray) -> np.ndarray:
    """float32 values that are exactly representable in fp16 (the stored scale format)."""
    return values.astype(np.float16).astype(np.float32)
