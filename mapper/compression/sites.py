"""Which weights a compression pass may rewrite, and the matrix each one is.

A site is one initializer and the one node that reads it: the B operand of a MatMul or a
Gemm (no transA; a bias that is an initializer vector or absent), or the table of a Gather
embedding lookup. A weight that several nodes read (tied embeddings) is left dense: one
rewrite could not serve both. Everything is held in the codes' row layout
(mapper.compression.codes): rows are output channels (or table rows), columns the
reduction dim.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

from mapper.options import CompressionConfig

SiteKind = Literal["matmul", "gemm", "gather"]
# An embedding table is worth quantizing (`--embeddings auto`) when it is at least this
# share of the model's weight bytes.
EMBEDDING_SHARE = 0.1
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class WeightSite:
    """One rewritable weight: its node, initializer, and its shape in the row layout."""

    node: str
    kind: SiteKind
    weight: str
    rows: int
    cols: int
    activation: str
    output: str
    transposed: bool = False  # Gemm transB: the initializer is already [N, K]
    bias: str | None = None
    alpha: float = 1.0
    beta: float = 1.0

    @property
    def elements(self) -> int:
        """Weights of the matrix."""
        return self.rows * self.cols

    @property
    def shape(self) -> tuple[int, int]:
        """The initializer's own shape."""
        if self.kind == "gather" or self.transposed:
            return self.rows, self.cols
        return self.cols, self.rows


def _attr(node: onnx.NodeProto, name: str, default: float | int) -> float | int:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _excluded(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def find_sites(model: ModelProto, config: CompressionConfig) -> tuple[list[WeightSite],
                                                                       list[str]]:
    """The weights `config` selects, in graph order, and a note per weight left out."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    total_bytes = sum(init.ByteSize() for init in graph.initializer) or 1
    sites: list[WeightSite] = []
    notes: list[str] = []
    for node in graph.node:
        site = _site(node, initializers)
        if site is None:
            continue
        if _excluded(config.exclude, site.weight, site.node):
            notes.append(f"{site.weight}: excluded by --exclude")
            continue
        if config.only and not _excluded(config.only, site.weight, site.node):
            continue  # not selected by --only: left as it is, without a note per weight
        if readers.get(site.weight, 0) > 1:
            notes.append(f"{site.weight}: read by {readers[site.weight]} nodes, left dense")
            continue
        if site.kind == "gather":
            share = initializers[site.weight].ByteSize() / total_bytes
            if config.embeddings == "off" or (config.embeddings == "auto"
                                              and share < EMBEDDING_SHARE):
                notes.append(f"{site.weight}: embedding table ({share:.0%} of the weights) "
                             f"left dense (--embeddings {config.embeddings})")
                continue
        sites.append(site)
    _check_selection(config.only, graph, initializers, sites)
    return sites, notes


def _check_selection(patterns: Sequence[str], graph: onnx.GraphProto,
                     initializers: dict[str, TensorProto], sites: Sequence[WeightSite]
                     ) -> None:
    """Every --only pattern must select a rewritable weight; naming another initializer
    (a bias, a conv kernel, a 1-D scale) is a user error that says what it is."""
    from mapper.errors import UserError

    for pattern in patterns:
        if any(_excluded((pattern,), s.weight, s.node) for s in sites):
            continue
        init = initializers.get(pattern)
        if init is not None:
            readers = sorted({n.op_type for n in graph.node if pattern in n.input})
            raise UserError(
                f"--only {pattern}: that initializer is {len(init.dims)}-D "
                f"{list(init.dims)} read by {', '.join(readers) or 'no node'}; only 2-D "
                "MatMul/Gemm weights (and Gather embedding tables) can be rewritten")
        raise UserError(f"--only {pattern}: no rewritable weight or node matches it (weights "
                        f"look like {', '.join(s.weight for s in sites[:3]) or 'none here'})")


def _site(node: onnx.NodeProto, initializers: dict[str, TensorProto]) -> WeightSite | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2:
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or weight.data_type not in _FLOATS \
                or node.input[0] in initializers:
            return None
        if node.op_type == "MatMul":
            k, n = weight.dims
            return WeightSite(node=node.name, kind="matmul", weight=weight.name, rows=n,
                              cols=k, activation=node.input[0], output=node.output[0])
        if _attr(node, "transA", 0):
            return None
        transposed = bool(_attr(node, "transB", 0))
        n, k = weight.dims if transposed else weight.dims[::-1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            tensor = initializers.get(bias)
            if tensor is None or int(np.prod(tensor.dims)) not in (1, n) or len(tensor.dims) > 1:
                return None
        return WeightSite(node=node.name, kind="gemm", weight=weight.name, rows=n, cols=k,
                          activation=node.input[0], output=node.output[0],
                          transposed=transposed, bias=bias,
                          alpha=float(_attr(node, "alpha", 1.0)),
                          beta=float(_attr(node, "beta", 1.0)))
    if node.op_type == "Gather" and len(node.input) == 2:
        table = initializers.get(node.input[0])
        if table is None or len(table.dims) != 2 or table.data_type not in _FLOATS \
                or _attr(node, "axis", 0) != 0:
            return None
        rows, cols = table.dims
        return WeightSite(node=node.name, kind="gather", weight=table.name, rows=rows,
                          cols=cols, activation=node.input[1], output=node.output[0])
    return None


def site_matrix(model: ModelProto, site: WeightSite) -> np.ndarray:
    """float32 [rows, cols]: the weight in the row layout (alpha folded in for a Gemm)."""
    init = next(i for i in model.graph.initializer if i.name == site.weight)
    array = numpy_helper.to_array(init).astype(np.float32)
    if site.kind == "matmul" or (site.kind == "gemm" and not site.transposed):
        array = array.T
    if site.kind == "gemm" and site.alpha != 1.0:
        array = array * np.float32(site.alpha)
    return np.ascontiguousarray(array)


def from_rows(site: WeightSite, rows: np.ndarray) -> np.ndarray:
    """A row-layout matrix back in the initializer's own layout (for dense checks)."""
    if site.kind == "matmul" or (site.kind == "gemm" and not site.transposed):
        return np.ascontiguousarray(rows.T)
    return rows
