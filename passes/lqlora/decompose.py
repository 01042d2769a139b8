"""W ≈ Q + L1·L2: the LQ-LoRA alternation, and the cheap per-config error estimates.

Rows are output channels, columns input channels (W is [out, in]). Errors are weighted by
`importance` per input channel when given (the diagonal of XᵀX: the data-aware proxy ONNX
can give for the paper's Fisher weighting); the weighting enters the SVD exactly, by
scaling the columns before it and back after.

The alternation starts from Q = 0: L1·L2 = rank-r SVD of W - Q, then Q = quant(W - L1·L2);
it stops when the error rises and returns the best iterate (the reference code returns the
last one, which can be worse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mapper.compression.codes import GroupCodes
from mapper.passes.lqlora.grid import Config, quantize_config
from mapper.passes.lqlora.nf import (
    NfConfig,
    NfWeight,
    _to_dtype,
    nearest_level,
    nf_levels,
)

MAX_ITERATIONS = 10
# Another alternation round is run only while the last one cut the error by this share.
MIN_GAIN = 0.01
# A rank well below the smaller dim takes a randomized SVD (oversampled, two power
# iterations): within float32 noise of the exact one on weight matrices, and 10x faster.
_RANDOMIZED_ABOVE = 256


@dataclass(frozen=True, eq=False)
class Decomposition:
    """One matrix as Q (quantized) plus L1·L2 (rank `rank`, float32), and its error."""

    q: NfWeight | GroupCodes
    l1: np.ndarray  # [rows, rank]
    l2: np.ndarray  # [rank, cols]
    error: float  # weighted squared Frobenius error
    iterations: int

    @property
    def rank(self) -> int:
        """Rank of the low-rank part."""
        return int(self.l1.shape[1])

    def dense(self) -> np.ndarray:
        """Q + L1·L2 as float32 [rows, cols]."""
        return (self.q.dequantize() + self.l1 @ self.l2).astype(np.float32)


def default_rank(rows: int, cols: int) -> int:
    """The paper's 64 for 4096-wide matrices, scaled to the matrix (a multiple of 8, >= 8)."""
    return max(8, round(64 * min(rows, cols) / 4096 / 8) * 8)


def _weighted_error(diff: np.ndarray, importance: np.ndarray | None) -> float:
    squared = diff.astype(np.float64) ** 2
    if importance is not None:
        squared = squared * importance[None, :]
    return float(squared.sum())


def low_rank(matrix: np.ndarray, rank: int, importance: np.ndarray | None, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """The best rank-`rank` approximation L1·L2 under column weights `importance`
    (randomized SVD with oversampling and power iterations for large matrices)."""
    l1, l2, _ = _low_rank(matrix, rank, importance, seed, None)
    return l1, l2


def _low_rank(matrix: np.ndarray, rank: int, importance: np.ndarray | None, seed: int,
              start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """low_rank, plus the right subspace [cols, rank + 10] that warm-starts the next call
    on a nearby matrix (the alternation's next residual): one power iteration then
    suffices where a cold start takes two."""
    if rank == 0:
        return (np.zeros((matrix.shape[0], 0), np.float32),
                np.zeros((0, matrix.shape[1]), np.float32), None)
    root = np.sqrt(importance) if importance is not None else None
    randomized = min(matrix.shape) > _RANDOMIZED_ABOVE and 4 * rank < min(matrix.shape)
    # The sketch's products run in float32 (twice the speed; the subspace only steers),
    # the small exact SVDs in float64.
    dtype = np.float32 if randomized else np.float64
    scaled = matrix.astype(dtype) * (root[None, :].astype(dtype) if root is not None else 1)
    subspace = None
    if randomized:
        if start is None:
            rng = np.random.default_rng(seed)
            start = rng.standard_normal((scaled.shape[1], rank + 10))
            powers = 2
        else:
            powers = 1
        sketch = scaled @ start.astype(dtype)
        for _ in range(powers):
            sketch = scaled @ (scaled.T @ np.linalg.qr(sketch)[0])
        basis = np.linalg.qr(sketch)[0]
        u, s, vt = np.linalg.svd((basis.T @ scaled).astype(np.float64), full_matrices=False)
        u = basis.astype(np.float64) @ u
        subspace = vt.T
    else:
        u, s, vt = np.linalg.svd(scaled, full_matrices=False)
    root_s = np.sqrt(s[:rank])
    l1 = u[:, :rank] * root_s[None, :]
    l2 = root_s[:, None] * vt[:rank]
    if root is not None:
        l2 = l2 / np.where(root > 0, root, 1.0)[None, :]
    return l1.astype(np.float32), l2.astype(np.float32), subspace


def decompose(matrix: np.ndarray, config: Config, rank: int,
              importance: np.ndarray | None = None, seed: int = 0,
              max_iterations: int = MAX_ITERATIONS) -> Decomposition:
    """The LQ-LoRA alternation for one config; the best iterate."""
    w = matrix.astype(np.float32)
    quantized = np.zeros_like(w)
    best: Decomposition | None = None
    subspace = None
    for iteration in range(1, max_iterations + 1):
        l1, l2, subspace = _low_rank(w - quantized, rank, importance, seed, subspace)
        residual = w - l1 @ l2
        q = quantize_config(residual, config)
        quantized = q.dequantize()
        error = _weighted_error(residual - quantized, importance)
        if best is not None and error >= best.error:
            break  # it rose: keep the best iterate
        improving = best is None or error < (1 - MIN_GAIN) * best.error
        best = Decomposition(q, l1, l2, error, iteration)
        if rank == 0 or not improving:
            break  # nothing to alternate with, or no longer worth another round
    assert best is not None
    return best


@dataclass(frozen=True)
class Estimates:
    """Estimated weighted error of every config of a grid for one matrix."""

    configs: tuple[Config, ...]
    errors: tuple[float, ...]


def estimate_errors(matrix: np.ndarray, configs: Sequence[Config], rank: int,
                    importance: np.ndarray | None, seed: int = 0) -> Estimates:
    """First-iteration errors of every config at once: the residual R = W - SVD_r(W) is
    NF-quantized once per (bits, block) with exact block scales; each double-quantization
    setting then only re-scales the blocks, and its error follows from per-block sums
    (Σw², Σw·c, Σc²) in O(blocks): 12 quantizations instead of one per config. Integer
    configs are few, and quantize the residual exactly."""
    l1, l2 = low_rank(matrix, rank, importance, seed)
    return residual_errors((matrix.astype(np.float32) - l1 @ l2).astype(np.float32), configs,
                           importance)


def residual_errors(residual: np.ndarray, configs: Sequence[Config],
                    importance: np.ndarray | None) -> Estimates:
    """The weighted error of quantizing `residual` (W - L1·L2 for some fixed factors) in each
    of `configs`, with the per-block sums of estimate_errors: exact for that residual."""
    weights = (np.broadcast_to(importance, residual.shape) if importance is not None
               else np.ones_like(residual)).astype(np.float64)
    errors: dict[Config, float] = {}
    for config in configs:
        if not isinstance(config, NfConfig):
            decoded = quantize_config(residual, config).dequantize()
            errors[config] = _weighted_error(residual - decoded, importance)
    nf_configs = [c for c in configs if isinstance(c, NfConfig)]
    for bits, block in sorted({(c.bits, c.block) for c in nf_configs}):
        a = residual.reshape(-1, block).astype(np.float64)
        wb = weights.reshape(-1, block)
        absmax = np.abs(a).max(axis=1)
        safe = np.where(absmax > 0, absmax, 1.0)
        levels = nf_levels(bits).astype(np.float64)
        codes = levels[nearest_level((a / safe[:, None]).ravel(), bits)].reshape(a.shape)
        sww = (wb * a * a).sum(axis=1)
        swc = (wb * a * codes).sum(axis=1)
        scc = (wb * codes * codes).sum(axis=1)
        offset = np.float32(absmax.min())
        centred = (absmax - offset).astype(np.float32)
        for config in (c for c in nf_configs if (c.bits, c.block) == (bits, block)):
            scales = _double_quantized(centred, offset, config)
            errors[config] = float((sww - 2 * scales * swc + scales**2 * scc).sum())
    return Estimates(tuple(configs), tuple(errors[c] for c in configs))


def _double_quantized(centred: np.ndarray, offset: np.float32, config: NfConfig) -> np.ndarray:
    """Block scales after double quantization (as nf.quantize decodes them)."""
    blocks = centred.size
    groups = -(-blocks // config.scale_block)
    padded = np.zeros(groups * config.scale_block, dtype=np.float32)
    padded[:blocks] = centred
    top = (1 << config.scale_bits) - 1
    second = _to_dtype(padded.reshape(groups, -1).max(axis=1), config.scale_dtype)
    step = (second / np.float32(top)).astype(np.float32)
    safe = np.where(step > 0, step, np.float32(1))
    codes = np.clip(np.round(padded.reshape(groups, -1) / safe[:, None]), 0, top)
    decoded = (codes * step[:, None]).astype(np.float32).ravel()[:blocks] + offset
    return decoded.astype(np.float64)
