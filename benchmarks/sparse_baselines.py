"""2:4 sparsity baselines for the GQSA benchmark: magnitude and SparseGPT-style (fp16 values).

Both keep 2 of every 4 consecutive weights along the reduction dim of each output channel.
SparseGPT-style chooses each 4-block's mask on the compensated weights by w² / [H⁻¹]_jj and
pushes every pruned weight's error onto the columns to its right through the Cholesky
factor of H⁻¹ (H = XᵀX of the layer's inputs through the original model), as SparseGPT's
semi-structured mode does. Stored as NVIDIA's 2:4 format would: half the values in fp16
plus a 2-bit index per kept value, 9 bits per weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import ModelProto, numpy_helper

from mapper.calibration import Feed
from mapper.compression.activations import ActivationTaps, decoded_initializer, gram
from mapper.compression.sites import WeightSite, site_matrix
from mapper.passes.gqsa.bqpo import inverse_cholesky

BITS_PER_WEIGHT = 9.0


def magnitude_2_4(weight: np.ndarray) -> np.ndarray:
    """Keep the 2 largest |w| of every 4 consecutive columns of each row."""
    rows, cols = weight.shape
    padded = np.zeros((rows, -(-cols // 4) * 4))
    padded[:, :cols] = weight
    blocks = padded.reshape(rows, -1, 4)
    order = np.argsort(np.abs(blocks), axis=2)
    keep = np.zeros_like(blocks, dtype=bool)
    np.put_along_axis(keep, order[:, :, 2:], True, axis=2)
    return (blocks * keep).reshape(rows, -1)[:, :cols]


def sparsegpt_2_4(weight: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """SparseGPT's 2:4 mode with error compensation."""
    cols = weight.shape[1]
    factor, _ = inverse_cholesky(hessian)
    w = weight.astype(np.float64).copy()
    for start in range(0, cols, 128):
        stop = min(start + 128, cols)
        part = w[:, start:stop].copy()
        errors = np.zeros_like(part)
        local = factor[start:stop, start:stop]
        mask = np.zeros_like(part, dtype=bool)
        for i in range(stop - start):
            if i % 4 == 0:
                span = min(4, stop - start - i)
                score = part[:, i:i + span] ** 2 / np.diag(local)[i:i + span][None, :] ** 2
                order = np.argsort(score, axis=1)
                drop = order[:, :max(0, span - 2)]
                np.put_along_axis(mask[:, i:i + span], drop, True, axis=1)
            value = np.where(mask[:, i], 0.0, part[:, i])
            error = (part[:, i] - value) / local[i, i]
            part[:, i:] -= np.outer(error, local[i, i:])
            part[:, i] = value
            errors[:, i] = error
        w[:, start:stop] = part
        w[:, stop:] -= errors @ factor[start:stop, stop:]
    return w


def sparsified(model: ModelProto, sites: Sequence[WeightSite], feeds: Sequence[Feed],
               method: str) -> ModelProto:
    """A copy of `model` with every site's weight made 2:4 sparse (fp16-rounded values)."""
    taps = ActivationTaps(model, sites) if method == "sparsegpt" else None
    inputs = taps.collect(feeds, taps.taps) if taps is not None else {}
    result = ModelProto()
    result.CopyFrom(model)
    by_name = {init.name: init for init in result.graph.initializer}
    for site in sites:
        w = site_matrix(model, site)
        if method == "magnitude":
            sparse = magnitude_2_4(w)
        else:
            sparse = sparsegpt_2_4(w, gram(inputs[site.activation]))
        values = decoded_initializer(site, sparse.astype(np.float16).astype(np.float32))
        old = by_name[site.weight]
        new = numpy_helper.from_array(values.astype(onnx.helper.tensor_dtype_to_np_dtype(
            old.data_type)), site.weight)
        old.CopyFrom(new)
    return result
