"""Small helpers over ONNX protobufs shared by the loader, graph view and passes."""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

from mapper.errors import UserError


def graph_input_names(graph: GraphProto) -> list[str]:
    """Names of the graph's declared inputs, in order."""
    return [inp.name for inp in graph.input]


def node_subgraphs(node: NodeProto) -> list[GraphProto]:
    """The subgraphs held in a node's attributes (If branches, Loop/Scan bodies)."""
    graphs: list[GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            graphs.append(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            graphs.extend(attribute.graphs)
    return graphs


def iter_subgraphs(graph: GraphProto) -> Iterator[GraphProto]:
    """Every subgraph nested anywhere below `graph`, depth first."""
    for node in graph.node:
        for sub in node_subgraphs(node):
            yield sub
            yield from iter_subgraphs(sub)


def drop_initializer_value_info(graph: GraphProto) -> None:
    """Remove value_info entries that repeat an initializer's type: onnx-ir writes one per
    initializer, and a later rewrite that changes the initializer's dtype (quantized codes)
    would then contradict it."""
    for sub in (graph, *iter_subgraphs(graph)):
        initializers = {init.name for init in sub.initializer}
        kept = [info for info in sub.value_info if info.name not in initializers]
        if len(kept) != len(sub.value_info):
            del sub.value_info[:]
            sub.value_info.extend(kept)


def implicit_inputs(node: NodeProto) -> list[str]:
    """Outer-scope tensors a node's subgraphs read: hidden dependencies of If/Loop/Scan."""
    found: list[str] = []
    seen: set[str] = set()

    def visit(graph: GraphProto, defined: set[str]) -> None:
        local = set(defined)
        local.update(inp.name for inp in graph.input)
        local.update(init.name for init in graph.initializer)
        for inner in graph.node:
            for name in inner.input:
                if name and name not in local and name not in seen:
                    seen.add(name)
                    found.append(name)
            for sub in node_subgraphs(inner):
                visit(sub, local)
            local.update(out for out in inner.output if out)
        for out in graph.output:
            if out.name not in local and out.name not in seen:
                seen.add(out.name)
                found.append(out.name)

    for sub in node_subgraphs(node):
        visit(sub, set())
    return found


def node_reads(node: NodeProto) -> list[str]:
    """Every tensor a node reads: its explicit inputs, then its subgraphs' outer-scope reads."""
    explicit = [name for name in node.input if name]
    return explicit + [name for name in implicit_inputs(node) if name not in explicit]


def topological_sort(graph: GraphProto) -> None:
    """Sort the graph's nodes in place; stable, so already-sorted graphs keep their order."""
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = index
    successors: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    for index, node in enumerate(nodes):
        preds = {producer[name] for name in node_reads(node) if name in producer}
        preds.discard(index)
        for pred in preds:
            successors[pred].append(index)
            indegree[index] += 1
    ready = [index for index, degree in enumerate(indegree) if degree == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for succ in successors[index]:
            indegree[succ] -= 1
            if indegree[succ] == 0:
                heapq.heappush(ready, succ)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if indegree[i] > 0]
        raise UserError(f"the graph has a cycle through nodes {', '.join(stuck[:8])}: an ONNX "
                        "graph must be acyclic")
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def np_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type (ml_dtypes-backed for bf16/fp8)."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def element_size(elem_type: int) -> float:
    """Bytes per element of an ONNX element type; 4-bit types give 0.5, strings 0."""
    if elem_type in (TensorProto.INT4, TensorProto.UINT4, getattr(TensorProto, "FLOAT4E2M1", -1)):
        return 0.5
    if elem_type == TensorProto.STRING or elem_type == TensorProto.UNDEFINED:
        return 0.0
    return float(np_dtype(elem_type).itemsize)


def dtype_name(elem_type: int) -> str:
    """Short dtype name for plans and reports: fp32, fp16, bf16, int8, int64, bool..."""
    names = {
        TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
        TensorProto.DOUBLE: "fp64", TensorProto.INT8: "int8", TensorProto.UINT8: "uint8",
        TensorProto.INT16: "int16", TensorProto.UINT16: "uint16", TensorProto.INT32: "int32",
        TensorProto.UINT32: "uint32", TensorProto.INT64: "int64", TensorProto.UINT64: "uint64",
        TensorProto.BOOL: "bool", TensorProto.STRING: "string",
        TensorProto.FLOAT8E4M3FN: "fp8", TensorProto.FLOAT8E5M2: "fp8",
        TensorProto.INT4: "int4", TensorProto.UINT4: "uint4",
    }
    return names.get(elem_type, onnx.TensorProto.DataType.Name(elem_type).lower())
