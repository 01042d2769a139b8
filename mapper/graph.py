"""The read-only graph view every pass works from: nodes, tensors, costs, a DAG and lifetimes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import networkx as nx
from onnx import GraphProto, ModelProto, NodeProto, numpy_helper

from mapper.costs import DTYPE_BITS, OpWork, Shape, matrix_operands, op_work, stored_bits
from mapper.costs.dtypes import stored_dtype
from mapper.formats import (
    WeightFormat,
    declared_formats,
    find_decode_chains,
    read_formats,
)
from mapper.onnx_utils import node_reads, node_subgraphs
from mapper.shapes import annotated_copy

TensorKind = Literal["input", "weight", "activation"]
_FLOAT_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "fp64")
# Ops between an attention score MatMul and its Softmax (scaling, masking, bias).
_ATTENTION_GLUE = {"Div", "Mul", "Add", "Where", "Sub", "Cast", "Reshape", "Transpose"}


@dataclass(frozen=True)
class Tensor:
    """One main-graph tensor: static shape, stored dtype and bytes, who makes and reads it."""

    name: str
    shape: Shape
    dtype: str
    size: int
    kind: TensorKind
    is_output: bool
    producer: str | None
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class Node:
    """One main-graph operator with its work and traffic (control flow: subgraphs included)."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: float
    bytes_read: int
    bytes_written: int
    dtype: str
    category: str
    attention: bool
    # Quantized or dense weights this node reads as a matrix B operand or a table (by the
    # name its ONNX input uses; see GraphView.formats).
    weights: tuple[str, ...] = ()


def _type_table(graph: GraphProto, into: dict[str, tuple[Shape | None, int]]) -> None:
    for init in graph.initializer:
        into[init.name] = (tuple(init.dims), init.data_type)
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if not info.type.HasField("tensor_type"):
            continue
        tensor = info.type.tensor_type
        shape: Shape | None = None
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shape = tuple(d.dim_value for d in tensor.shape.dim)
        if shape is not None or info.name not in into:
            into[info.name] = (shape, tensor.elem_type)


def _subgraph_flops(node: NodeProto, types: dict[str, tuple[Shape | None, int]],
                    loop_trips: Mapping[str, int] | None = None) -> float:
    """Work of a control-flow node: the costlier If branch; Loop/Scan bodies times trips.

    A Loop's trip count is its constant `M` input where it has one, else 1 (the body once):
    a data-dependent loop has no static count to price.
    """
    branch_flops = []
    for sub in node_subgraphs(node):
        local = dict(types)
        _type_table(sub, local)
        total = 0.0
        for inner in sub.node:
            total += _node_work(inner, local).flops
        branch_flops.append(total)
    if not branch_flops:
        return 0.0
    if node.op_type == "If":
        return max(branch_flops)
    trips = (loop_trips or {}).get(node.name, 1)
    if node.op_type == "Scan" and len(node.input) > 0:
        first = types.get(node.input[-1], (None, 0))[0]
        trips = first[0] if first else 1
    return trips * sum(branch_flops)


def _node_work(node: NodeProto, types: dict[str, tuple[Shape | None, int]],
               loop_trips: Mapping[str, int] | None = None) -> OpWork:
    def shape_of(name: str) -> Shape | None:
        return types.get(name, (None, 0))[0]

    extra = ({node.name: _subgraph_flops(node, types, loop_trips)} if node_subgraphs(node)
             else None)
    return op_work(node, shape_of, extra)


def _tensor_bytes(shape: Shape, elem_type: int, precision: str) -> int:
    return math.ceil(math.prod(shape) * stored_bits(elem_type, precision) / 8)


class GraphView:
    """A read-only analysis of a normalized model; build it with `GraphView.from_model`.

    Sizes are stored sizes: float tensors at the deployment `precision` ('model': their own
    dtype), quantized weights at their packed bytes. Decode chains (nodes that turn constant
    integer codes into a float weight) are fused into their consumers: a decode node reads
    and writes nothing, its consumers read the codes, scales and zero points it came from,
    and `formats` says how each weight is stored.
    """

    def __init__(self, nodes: dict[str, Node], tensors: dict[str, Tensor],
                 graph_outputs: tuple[str, ...], precision: str = "model",
                 formats: Mapping[str, WeightFormat] | None = None,
                 order_edges: Sequence[tuple[str, str]] = ()) -> None:
        self.nodes = nodes
        self.tensors = tensors
        self.graph_outputs = graph_outputs
        self.precision = precision
        self.group_sparse: float | None = None
        self.formats: Mapping[str, WeightFormat] = dict(formats or {})
        self.model_order: tuple[str, ...] = tuple(nodes)
        self.dag = nx.DiGraph()
        self.dag.add_nodes_from(nodes)
        for node in nodes.values():
            for name in node.inputs:
                producer = tensors[name].producer if name in tensors else None
                if producer is not None and producer != node.name:
                    self.dag.add_edge(producer, node.name, tensor=name)
        # Dependencies that move no plannable bytes (a decode node before its consumer).
        for before, after in order_edges:
            if before != after and not self.dag.has_edge(before, after):
                self.dag.add_edge(before, after, tensor=None)

    @classmethod
    def from_model(cls, model: ModelProto, precision: str = "model",
                   group_sparse: float | None = None) -> GraphView:
        """Analyze a normalized model (static shapes in value_info, unique node names),
        sizing float tensors at the deployment `precision`. With `group_sparse` (the
        efficiency of the device's group-sparse kernels), a weight with pruned groups is
        stored and moved as its kept groups (BSR bytes) and computed on them only."""
        if precision != "model" and precision not in DTYPE_BITS:
            raise ValueError(f"unknown precision {precision!r}")
        graph = model.graph
        types: dict[str, tuple[Shape | None, int]] = {}
        _type_table(graph, types)
        elem_types = {name: elem for name, (_, elem) in types.items()}
        shapes = {name: shape for name, (shape, _) in types.items() if shape is not None}

        def size_of(name: str) -> int:
            shape, elem_type = types.get(name, (None, 0))
            return _tensor_bytes(shape or (), elem_type, precision) if shape is not None else 0

        chains = find_decode_chains(graph, elem_types, shapes, size_of)
        formats = read_formats(graph, elem_types, shapes, size_of, chains,
                               declared_formats(model))
        sized: dict[str, int] = {}
        if group_sparse is not None:
            formats, sized = _sparse_storage(formats, size_of)

        def stored_size(name: str, shape: Shape, elem_type: int) -> int:
            return sized[name] if name in sized else _tensor_bytes(shape, elem_type, precision)
        producers: dict[str, str] = {}
        consumers: dict[str, list[str]] = {}
        reads: dict[str, tuple[str, ...]] = {}
        order_edges: list[tuple[str, str]] = []
        raw_producer = {out: node.name for node in graph.node for out in node.output if out}
        for node in graph.node:
            raw = node_reads(node)
            for name in raw:
                if name in raw_producer and raw_producer[name] in chains.nodes:
                    order_edges.append((raw_producer[name], node.name))
            if node.name in chains.nodes:
                reads[node.name] = ()
                continue
            # A fused decode chain: the consumer reads the initializers it decodes.
            expanded: list[str] = []
            for name in raw:
                expanded.extend(chains.roots.get(name, (name,)))
            reads[node.name] = tuple(dict.fromkeys(expanded))
            for name in reads[node.name]:
                consumers.setdefault(name, []).append(node.name)
            for name in node.output:
                if name:
                    producers[name] = node.name
        inputs = {inp.name for inp in graph.input}
        outputs = tuple(out.name for out in graph.output)
        weights = {init.name for init in graph.initializer}
        tensors: dict[str, Tensor] = {}
        names = list(dict.fromkeys([*inputs, *weights, *producers]))
        for name in names:
            shape, elem_type = types.get(name, (None, 0))
            shape = shape if shape is not None else ()
            kind: TensorKind = ("activation" if name in producers
                                else "input" if name in inputs else "weight")
            tensors[name] = Tensor(
                name=name, shape=shape, dtype=stored_dtype(elem_type, precision),
                size=stored_size(name, shape, elem_type), kind=kind,
                is_output=name in outputs, producer=producers.get(name),
                consumers=tuple(consumers.get(name, ())))
        formats = {**_dense_formats(graph, tensors, formats, chains.nodes), **formats}
        attention = _attention_matmuls(graph, producers, consumers)
        # Control-flow bodies are costed from an annotated copy: the emitted model keeps
        # only main-graph shapes (see mapper.shapes.infer_shapes).
        annotated: dict[str, NodeProto] = {}
        if any(node_subgraphs(node) for node in graph.node):
            copy = annotated_copy(model)
            if copy is not None:
                annotated = {node.name: node for node in copy.graph.node if node_subgraphs(node)}
        loop_trips = _constant_trip_counts(graph)
        nodes: dict[str, Node] = {}
        for node in graph.node:
            if node.name in chains.nodes:
                nodes[node.name] = Node(
                    name=node.name, op_type=node.op_type, domain=node.domain, inputs=(),
                    outputs=(), flops=0.0, bytes_read=0, bytes_written=0,
                    dtype=stored_dtype(elem_types.get(node.output[0], 1), precision),
                    category="decode", attention=False)
                continue
            work = _node_work(annotated.get(node.name, node), types, loop_trips)
            node_inputs = tuple(name for name in reads[node.name] if name in tensors)
            node_outputs = tuple(name for name in node.output if name in tensors)
            view = work.category == "view"
            read_weights = tuple(name for name in dict.fromkeys(node.input) if name in formats)
            flops = work.flops
            if group_sparse is not None:
                pruned = max((formats[w].sparsity for w in read_weights), default=0.0)
                flops = flops * (1.0 - pruned) / group_sparse if pruned else flops
            nodes[node.name] = Node(
                name=node.name, op_type=node.op_type, domain=node.domain,
                inputs=node_inputs, outputs=node_outputs, flops=flops,
                bytes_read=0 if view else _bytes_read(node, node_inputs, node_outputs, tensors,
                                                      formats),
                bytes_written=0 if view else sum(tensors[n].size for n in node_outputs),
                dtype=_compute_dtype(node_inputs, node_outputs, tensors),
                category=work.category, attention=node.name in attention,
                weights=read_weights)
        view = cls(nodes, tensors, outputs, precision, formats, order_edges)
        view.group_sparse = group_sparse
        return view

    # --- orders and lifetimes -------------------------------------------------------------

    def steps(self, order: Sequence[str] | None = None) -> dict[str, int]:
        """Node name -> step index in `order` (default: the model's order)."""
        return {name: step for step, name in enumerate(order or self.model_order)}

    def is_topological(self, order: Sequence[str]) -> bool:
        """True when `order` names every node once and respects every dependency."""
        if sorted(order) != sorted(self.nodes):
            return False
        step = self.steps(order)
        return all(step[u] < step[v] for u, v in self.dag.edges)

    def activation_lifetimes(self, order: Sequence[str] | None = None
                             ) -> dict[str, tuple[int, int]]:
        """Produced tensors -> (producing step, last-use step); graph outputs live to the end."""
        order = order or self.model_order
        step = self.steps(order)
        last = len(order) - 1
        lifetimes: dict[str, tuple[int, int]] = {}
        for tensor in self.tensors.values():
            if tensor.producer is None or tensor.size == 0:
                continue
            start = step[tensor.producer]
            end = max([start, *(step[c] for c in tensor.consumers)])
            lifetimes[tensor.name] = (start, last if tensor.is_output else end)
        return lifetimes

    def live_activation_bytes(self, order: Sequence[str] | None = None) -> list[int]:
        """Bytes of activations live at each step of `order`."""
        order = order or self.model_order
        live = [0] * (len(order) + 1)
        for name, (start, end) in self.activation_lifetimes(order).items():
            live[start] += self.tensors[name].size
            live[end + 1] -= self.tensors[name].size
        running, per_step = 0, []
        for delta in live[:-1]:
            running += delta
            per_step.append(running)
        return per_step

    def weight_bytes(self) -> int:
        """Stored bytes of all initializers the graph reads (packed where quantized)."""
        return sum(t.size for t in self.tensors.values() if t.kind == "weight" and t.consumers)

    def input_bytes(self) -> int:
        """Bytes of all graph inputs."""
        return sum(t.size for t in self.tensors.values() if t.kind == "input")

    def totals(self) -> Mapping[str, float]:
        """Whole-graph FLOPs and bytes moved, for summaries."""
        return {"flops": sum(n.flops for n in self.nodes.values()),
                "bytes": sum(n.bytes_read + n.bytes_written for n in self.nodes.values())}


# Ops that read only the part of their data input that they return.
_PARTIAL_READS = {"Gather", "GatherElements", "GatherND", "Slice", "GatherBlockQuantized"}


def _bytes_read(node: NodeProto, inputs: Sequence[str], outputs: Sequence[str],
                tensors: Mapping[str, Tensor], formats: Mapping[str, WeightFormat]) -> int:
    """Bytes an op reads: every input once; a Gather/Slice reads only the rows it returns
    (an embedding lookup does not stream the whole table, packed or not)."""
    if node.op_type in _PARTIAL_READS and node.input:
        data = node.input[0]
        table = formats.get(data)
        if table is not None and table.quantized:
            parts = set(table.parts)
            out_elements = sum(math.prod(tensors[n].shape) for n in outputs if tensors[n].shape)
            share = min(1.0, out_elements / table.elements) if table.elements else 1.0
            rest = {name for name in inputs if name not in parts}
            return (math.ceil(table.stored_bytes * share)
                    + sum(tensors[n].size for n in rest))
        if data in tensors:
            rest = {name for name in inputs if name != data}
            gathered = sum(tensors[name].size for name in outputs)
            return min(tensors[data].size, gathered) + sum(tensors[n].size for n in rest)
    return sum(tensors[name].size for name in set(inputs))


def _sparse_storage(formats: Mapping[str, WeightFormat], size_of: Callable[[str], int]
                    ) -> tuple[dict[str, WeightFormat], dict[str, int]]:
    """Formats and part sizes as a device with group-sparse kernels stores them: each part
    of a weight with pruned groups shrinks in proportion, so the parts add up to the BSR
    bytes of its kept groups."""
    result = dict(formats)
    sized: dict[str, int] = {}
    for name, stored in formats.items():
        if stored.sparsity <= 0 or stored.packed_bytes >= stored.stored_bytes:
            continue
        parts = [size_of(part) for part in stored.parts]
        total = sum(parts) or 1
        shares = [size * stored.packed_bytes // total for size in parts]
        shares[0] += stored.packed_bytes - sum(shares)  # the codes take the rounding
        sized.update(zip(stored.parts, shares, strict=True))
        result[name] = replace(stored, stored_bytes=stored.packed_bytes)
    return result, sized


def _dense_formats(graph: GraphProto, tensors: Mapping[str, Tensor],
                   quantized: Mapping[str, WeightFormat], decode_nodes: frozenset[str]
                   ) -> dict[str, WeightFormat]:
    """Dense formats of the initializers matrix ops read as B (stored at their dtype)."""
    found: dict[str, WeightFormat] = {}
    for node in graph.node:
        operands = matrix_operands(node.op_type)
        if node.name in decode_nodes or operands is None or len(node.input) <= operands[1]:
            continue
        name = node.input[operands[1]]
        tensor = tensors.get(name)
        if name in quantized or tensor is None or tensor.kind != "weight" or not tensor.shape:
            continue
        bits = DTYPE_BITS.get(tensor.dtype, 8 * tensor.size // max(math.prod(tensor.shape), 1))
        found[name] = WeightFormat(
            name=name, shape=tensor.shape, scheme="dense", bits=int(bits),
            group_size=0, symmetric=True, sparsity=0.0, rank=0, stored_bytes=tensor.size,
            packed_bytes=tensor.size, parts=(name,), container="initializer")
    return found


def _constant_trip_counts(graph: GraphProto) -> dict[str, int]:
    """Loop nodes whose max-trip input `M` is a constant initializer -> that count."""
    initializers = {init.name: init for init in graph.initializer}
    trips = {}
    for node in graph.node:
        if node.op_type == "Loop" and node.input and node.input[0] in initializers:
            value = numpy_helper.to_array(initializers[node.input[0]])
            if value.size == 1:
                trips[node.name] = max(int(value.reshape(())), 0)
    return trips


def _compute_dtype(inputs: Sequence[str], outputs: Sequence[str],
                   tensors: Mapping[str, Tensor]) -> str:
    for name in [*inputs, *outputs]:
        if tensors[name].dtype in _FLOAT_DTYPES:
            return tensors[name].dtype
    for name in inputs:
        if tensors[name].dtype in ("int8", "uint8", "int4", "uint4"):
            return "int8" if tensors[name].dtype.endswith("8") else "int4"
    return tensors[outputs[0]].dtype if outputs else "fp32"


def _attention_matmuls(graph: GraphProto, producers: dict[str, str],
                       consumers: dict[str, list[str]]) -> set[str]:
    """MatMul -> (scale/mask glue) -> Softmax -> MatMul chains: both MatMuls are attention."""
    by_name = {node.name: node for node in graph.node}
    found: set[str] = set()
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        # Walk back through glue ops to the score MatMul.
        current, score = node, None
        for _ in range(6):
            source = producers.get(current.input[0]) if current.input else None
            if source is None:
                break
            current = by_name[source]
            if current.op_type in ("MatMul", "Einsum"):
                score = current.name
                break
            if current.op_type not in _ATTENTION_GLUE:
                break
        value = [c for c in consumers.get(node.output[0], []) if by_name[c].op_type == "MatMul"]
        if score and value:
            found.add(score)
            found.update(value)
    return found
