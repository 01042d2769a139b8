"""Error-compensated codes for a chosen decomposition: Q's codes re-picked column by column
with GPTQ's updates, so that Q + L1·L2 reproduces the layer's outputs on the calibration
inputs rather than its weights entry by entry.

The alternation fits Q to W - L1·L2 by rounding each entry to its nearest level (what the
paper does); rounding errors then add up in the layer's outputs as XᵀX weighs them.
Visiting the columns by decreasing input energy and pushing each column's rounding error
onto the columns not yet visited, through the Cholesky factor of (XᵀX)⁻¹, lowers
||X (W - L1·L2 - Q)ᵀ||²: the step GQSA's stage 1 takes for its codes. The config and its
stored bits never change: NF keeps its double-quantized block scales (their storage ties
the blocks together); an integer group's scale and zero point are chosen by that walk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from mapper.compression.codes import GroupCodes
from mapper.passes.gqsa.bqpo import (
    compensated_walk,
    inverse_cholesky,
    quantize_pruned,
    to_codes,
)
from mapper.passes.lqlora.nf import NfWeight, nearest_level, nf_levels

# (values of one column [rows], its index) -> (codes [rows], decoded values [rows])
ColumnQuantizer = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
_BLOCK = 128


def _nf_column(q: NfWeight) -> ColumnQuantizer:
    scales = q.block_scales()
    levels = nf_levels(q.config.bits)

    def quantize(values: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
        scale = scales[:, column // q.config.block]
        safe = np.where(scale > 0, scale, np.float32(1))
        codes = nearest_level(values / safe, q.config.bits)
        return codes, levels[codes] * scale
    return quantize


def compensated_codes(target: np.ndarray, hessian: np.ndarray, quantize: ColumnQuantizer
                      ) -> np.ndarray:
    """uint8 [rows, cols] codes of `target` chosen with GPTQ's error compensation under
    H = XᵀX, columns by decreasing H diagonal (act-order; the scales are fixed)."""
    order = np.argsort(-np.diag(hessian), kind="stable")
    factor, _ = inverse_cholesky(hessian[np.ix_(order, order)])
    w = target[:, order].astype(np.float32).copy()
    w[:, np.diag(hessian)[order] == 0] = 0.0
    return compensated_walk(
        w, factor.astype(np.float32), order, _BLOCK,
        lambda block, i, position: quantize(block[:, i], int(order[position])))


def output_error(diff: np.ndarray, hessian: np.ndarray) -> float:
    """||X diffᵀ||² = Σ_rows diff H diffᵀ."""
    d = diff.astype(np.float64)
    return float(((d @ hessian) * d).sum())


def compensate(q: NfWeight | GroupCodes, target: np.ndarray, hessian: np.ndarray
               ) -> tuple[NfWeight | GroupCodes, float, float]:
    """Q with compensated codes (same config; NF keeps its scales, integer groups get
    GPTQ-chosen ranges) if that lowers the output error against `target` (= W - L1·L2),
    and the output errors before and after."""
    if isinstance(q, NfWeight):
        candidate = dataclasses.replace(q, codes=compensated_codes(target, hessian,
                                                                   _nf_column(q)))
    else:
        # Integer groups may take new scales and zero points (MatMulNBits stores any):
        # GQSA's stage 1 walk at no sparsity, whose group ranges are chosen against the
        # layer's inputs. With the round-to-nearest min/max ranges fixed, 2-bit groups
        # stay far worse (SmolLM2-135M at 2.5 bits, int grid: perplexity 2.1e6).
        candidate = to_codes(quantize_pruned(
            target, hessian, np.zeros((q.rows, q.groups), dtype=bool), q.bits,
            q.group_size, symmetric=False), q.bits, q.group_size)
    before = output_error(target - q.dequantize(), hessian)
    after = output_error(target - candidate.dequantize(), hessian)
    return (candidate, before, after) if after < before else (q, before, before)
