"""Least-squares refits of group scales with codes and masks frozen.

For one row n with decoded weights ŵ = Σ_g s_g c_g (c_g: the row's codes minus zero point
on group g's columns), minimize ||X̃ ŵ - y||² over the kept groups' scales, where X̃ are the
layer's inputs (through the compressed prefix) and y its target outputs: the layer's own
full-precision outputs on the same inputs (stage 1's refinement, `cross` = H̃), or the
original model's outputs at that layer (stage 2, `cross` = X̃ᵀX with X the inputs through
the original model). The normal equations are A s = b with A = Cᵀ H̃ C and b = Cᵀ cross wᵀ.
A row keeps its old scales unless the refit lowers its error.
"""

from __future__ import annotations

import numpy as np

from mapper.compression.codes import GroupCodes
from mapper.passes.gqsa.bqpo import fp16

_RIDGE = 1e-6


def centred(codes: GroupCodes) -> np.ndarray:
    """float64 [rows, groups, group_size]: codes minus zero point, 0-padded past the end."""
    rows, cols = codes.codes.shape
    padded = np.zeros((rows, codes.groups * codes.group_size))
    padded[:, :cols] = codes.codes
    grouped = padded.reshape(rows, codes.groups, codes.group_size)
    shifted = grouped - codes.zero_point_array().astype(np.float64)[..., None]
    mask = np.zeros(codes.groups * codes.group_size, dtype=bool)
    mask[:cols] = True
    return shifted * mask.reshape(codes.groups, codes.group_size)


def _pad(matrix: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, size))
    out[:matrix.shape[0], :matrix.shape[1]] = matrix
    return out


def row_errors(codes: GroupCodes, target: np.ndarray, hessian: np.ndarray,
               cross: np.ndarray) -> np.ndarray:
    """Per row, ||X̃ ŵ||² - 2 ŵᵀ cross w (the refit objective up to a constant)."""
    decoded = codes.dequantize().astype(np.float64)
    quad = ((decoded @ hessian) * decoded).sum(axis=1)
    lin = ((decoded @ cross) * target).sum(axis=1)
    return quad - 2 * lin


def refit_scales(codes: GroupCodes, target: np.ndarray, hessian: np.ndarray,
                 cross: np.ndarray, allowed: np.ndarray | None = None) -> GroupCodes:
    """`codes` with each row's kept scales re-solved by least squares (fp16-stored); only
    rows in `allowed` (bool [rows]) may change."""
    rows, groups, size = codes.rows, codes.groups, codes.group_size
    full = groups * size
    hessian_full = _pad(hessian, full)
    shifted = centred(codes)
    flat = shifted.reshape(rows, full)
    # spread[n, k, b] = Σ_{l in group b} H[k, l] c[n, l]: one BLAS product per group.
    spread = np.empty((rows, full, groups))
    for group in range(groups):
        cols = slice(group * size, (group + 1) * size)
        spread[:, :, group] = flat[:, cols] @ hessian_full[:, cols].T
    normal = np.einsum("nai,naib->nab", shifted, spread.reshape(rows, groups, size, groups))
    target_full = np.zeros((rows, full))
    target_full[:, :codes.cols] = target
    moment = (target_full @ _pad(cross, full).T).reshape(rows, groups, size)
    rhs = np.einsum("nai,nai->na", shifted, moment)
    kept = codes.scales != 0
    # Pruned groups become identity rows with a zero right side, so every row solves in
    # one batched call and their scales come out exactly 0.
    eye = np.eye(groups)
    keep2 = kept[:, :, None] & kept[:, None, :]
    system = np.where(keep2, normal, 0.0) + np.where(kept[:, :, None], 0.0, eye)
    ridge = _RIDGE * (np.trace(system, axis1=1, axis2=2) / groups + 1e-30)
    system = system + ridge[:, None, None] * eye
    right = np.where(kept, rhs, 0.0)
    try:
        scales = np.linalg.solve(system, right[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return codes
    refit = GroupCodes(codes=codes.codes, scales=fp16(scales.astype(np.float32)),
                       zero_points=codes.zero_points, bits=codes.bits, group_size=size)
    # A scale rounded to 0 would read as a pruned group: keep the old one there.
    lost = kept & (refit.scales == 0)
    before = row_errors(codes, target, hessian, cross)
    after = row_errors(refit, target, hessian, cross)
    improved = after < before
    if allowed is not None:
        improved &= allowed
    better = improved[:, None] & ~lost
    merged = np.where(better, refit.scales, codes.scales).astype(np.float32)
    return GroupCodes(codes=codes.codes, scales=merged, zero_points=codes.zero_points,
                      bits=codes.bits, group_size=size)


def validated_refit(codes: GroupCodes, target: np.ndarray, inputs: np.ndarray,
                    sources: np.ndarray) -> GroupCodes:
    """refit_scales on all rows of `inputs` (X̃) against outputs from `sources` (X̃ itself for
    stage 1, the original model's inputs for stage 2), keeping a row's refit only where it
    also generalizes: fitted on either half of the samples, it must lower the objective on
    the other half. A refit on a few hundred tokens per group can otherwise fit noise
    (measured on SmolLM2-135M: the ungated stage 2 raised perplexity)."""
    half = inputs.shape[0] // 2
    if half < 1:
        return codes
    allowed = np.ones(codes.rows, dtype=bool)
    halves = (slice(0, half), slice(half, None))
    # Each half's XᵀX and X̃ᵀ-sources product once; the whole set's are their sums.
    grams = [_product(inputs[part], inputs[part]) for part in halves]
    crosses = (grams if sources is inputs else
               [_product(inputs[part], sources[part]) for part in halves])
    for fit, check in ((0, 1), (1, 0)):
        trial = refit_scales(codes, target, grams[fit], crosses[fit])
        allowed &= (row_errors(trial, target, grams[check], crosses[check])
                    < row_errors(codes, target, grams[check], crosses[check]))
    return refit_scales(codes, target, grams[0] + grams[1], crosses[0] + crosses[1], allowed)


def _product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """leftᵀ·right in float64."""
    return left.astype(np.float64, copy=False).T @ right.astype(np.float64, copy=False)
