"""The activations a weight sees: its input rows over the calibration samples, through the
original model or through a model whose earlier weights are already compressed.

One onnxruntime session serves every run: the weights of the sites are graph inputs, so a
pass can swap in the compressed (decoded) weights of the layers it has done and tap the
inputs of the next ones, without building a session per layer. Only the taps a run asks
for come back, stacked as `[tokens, cols]` (every position of every sample is a row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from mapper.calibration import Feed, Session
from mapper.compression.sites import WeightSite


class ActivationTaps:
    """Runs `model` with the sites' weights fed as inputs, returning the taps asked for."""

    def __init__(self, model: ModelProto, sites: Sequence[WeightSite]) -> None:
        self.sites = tuple(sites)
        weights = {site.weight for site in self.sites}
        graph = model.graph
        copy = ModelProto()
        copy.ir_version = model.ir_version
        copy.opset_import.extend(model.opset_import)
        copy.graph.name = graph.name
        copy.graph.node.extend(graph.node)
        copy.graph.input.extend(graph.input)
        copy.graph.output.extend(graph.output)
        copy.graph.value_info.extend(graph.value_info)
        self.dense: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            if init.name in weights:
                array = numpy_helper.to_array(init)
                self.dense[init.name] = np.ascontiguousarray(array)
                copy.graph.input.append(helper.make_tensor_value_info(
                    init.name, init.data_type, list(init.dims)))
            else:
                copy.graph.initializer.append(init)
        self.taps = tuple(dict.fromkeys(site.activation for site in self.sites
                                        if site.kind != "gather"))
        self._session = Session(copy, taps=self.taps)
        self._dtypes = {name: array.dtype for name, array in self.dense.items()}

    def collect(self, feeds: Sequence[Feed], taps: Sequence[str],
                weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """`[tokens, cols]` rows of each tap over `feeds`, with `weights` (in each
        initializer's own layout) replacing the dense ones where given."""
        current = self._weights(weights)
        rows: dict[str, list[np.ndarray]] = {tap: [] for tap in taps}
        for feed in feeds:
            outputs = self._session.run({**feed, **current})
            for tap in taps:
                value = outputs[tap]
                rows[tap].append(value.reshape(-1, value.shape[-1]).astype(np.float32))
        return {tap: np.concatenate(chunks) for tap, chunks in rows.items()}

    def outputs(self, feeds: Sequence[Feed], weights: Mapping[str, np.ndarray] | None = None
                ) -> list[dict[str, np.ndarray]]:
        """The model's own float outputs on each of `feeds`, with `weights` swapped in as in
        `collect`."""
        current = self._weights(weights)
        found = []
        for feed in feeds:
            outputs = self._session.run({**feed, **current})
            found.append({name: outputs[name] for name in self._session.outputs
                          if np.issubdtype(outputs[name].dtype, np.floating)})
        return found

    def _weights(self, weights: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The site weights to feed: the dense ones, `weights` in their place where given."""
        current = dict(self.dense)
        for name, array in (weights or {}).items():
            current[name] = np.ascontiguousarray(array.astype(self._dtypes[name]))
        return current


def output_error(outputs: Sequence[Mapping[str, np.ndarray]],
                 reference: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Squared error of `outputs` against `reference`, relative to the reference's energy,
    summed over samples and float outputs."""
    error = energy = 0.0
    for got, want in zip(outputs, reference, strict=True):
        for name, value in want.items():
            expected = value.astype(np.float64)
            error += float(((got[name].astype(np.float64) - expected) ** 2).sum())
            energy += float((expected ** 2).sum())
    return error / max(energy, 1e-30)


def gram(rows: np.ndarray) -> np.ndarray:
    """XᵀX in float64 (the Hessian of a layer's squared output error, up to a factor 2)."""
    x = rows.astype(np.float64)
    return x.T @ x


def decoded_initializer(site: WeightSite, dense_rows: np.ndarray) -> np.ndarray:
    """A row-layout matrix in the site's initializer layout (to feed it as that weight)."""
    if site.kind == "matmul" or (site.kind == "gemm" and not site.transposed):
        return np.ascontiguousarray(dense_rows.T)
    return dense_rows


def block_key(site: WeightSite) -> str:
    """The transformer block a weight belongs to, from its name: everything up to the first
    numeric component (`model.layers.3.mlp.up_proj.weight` -> `model.layers.3`); weights
    without one are each their own block."""
    parts = site.weight.replace("/", ".").split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:index + 1])
    return site.weight


def blocks_in_order(sites: Sequence[WeightSite]) -> list[list[WeightSite]]:
    """Sites grouped by block, blocks in the order their first site appears."""
    grouped: dict[str, list[WeightSite]] = {}
    for site in sites:
        grouped.setdefault(block_key(site), []).append(site)
    return list(grouped.values())
