"""The read-only graph view every pass works from: nodes, tensors, costs, a DAG and lifetimes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import networkx as nx
from onnx import GraphProto, ModelProto, NodeProto, numpy_helper

from mapper.costs import OpWork, Shape, op_work
from mapper.onnx_utils import dtype_name, element_size, node_reads, node_subgraphs
from mapper.shapes import annotated_copy

TensorKind = Literal["input", "weight", "activation"]
_FLOAT_DTYPES = ("fp32", "fp16", "bf16", "fp8", "fp64")
# Ops between an attention score MatMul and its Softmax (scaling, masking, bias).
_ATTENTION_GLUE = {"Div", "Mul", "Add", "Where", "Sub", "Cast", "Reshape", "Transpose"}


@dataclass(frozen=True)
class Tensor:
    """One main-graph tensor: static shape, dtype, bytes, and who makes and reads it."""

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


def _tensor_bytes(shape: Shape, elem_type: int) -> int:
    return math.ceil(math.prod(shape) * element_size(elem_type))


class GraphView:
    """A read-only analysis of a normalized model; build it with `GraphView.from_model`."""

    def __init__(self, nodes: dict[str, Node], tensors: dict[str, Tensor],
                 graph_outputs: tuple[str, ...]) -> None:
        self.nodes = nodes
        self.tensors = tensors
        self.graph_outputs = graph_outputs
        self.model_order: tuple[str, ...] = tuple(nodes)
        self.dag = nx.DiGraph()
        self.dag.add_nodes_from(nodes)
        for node in nodes.values():
            for name in node.inputs:
                producer = tensors[name].producer if name in tensors else None
                if producer is not None and producer != node.name:
                    self.dag.add_edge(producer, node.name, tensor=name)

    @classmethod
    def from_model(cls, model: ModelProto) -> GraphView:
        """Analyze a normalized model (static shapes in value_info, unique node names)."""
        graph = model.graph
        types: dict[str, tuple[Shape | None, int]] = {}
        _type_table(graph, types)
        producers: dict[str, str] = {}
        consumers: dict[str, list[str]] = {}
        reads: dict[str, tuple[str, ...]] = {}
        for node in graph.node:
            reads[node.name] = tuple(node_reads(node))
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
                name=name, shape=shape, dtype=dtype_name(elem_type),
                size=_tensor_bytes(shape, elem_type), kind=kind, is_output=name in outputs,
                producer=producers.get(name), consumers=tuple(consumers.get(name, ())))
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
            work = _node_work(annotated.get(node.name, node), types, loop_trips)
            node_inputs = tuple(name for name in reads[node.name] if name in tensors)
            node_outputs = tuple(name for name in node.output if name in tensors)
            view = work.category == "view"
            nodes[node.name] = Node(
                name=node.name, op_type=node.op_type, domain=node.domain,
                inputs=node_inputs, outputs=node_outputs, flops=work.flops,
                bytes_read=0 if view else _bytes_read(node, node_inputs, node_outputs, tensors),
                bytes_written=0 if view else sum(tensors[n].size for n in node_outputs),
                dtype=_compute_dtype(node_inputs, node_outputs, tensors),
                category=work.category, attention=node.name in attention)
        return cls(nodes, tensors, outputs)

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
        """Bytes of all initializers the graph reads."""
        return sum(t.size for t in self.tensors.values() if t.kind == "weight" and t.consumers)

    def input_bytes(self) -> int:
        """Bytes of all graph inputs."""
        return sum(t.size for t in self.tensors.values() if t.kind == "input")

    def totals(self) -> Mapping[str, float]:
        """Whole-graph FLOPs and bytes moved, for summaries."""
        return {"flops": sum(n.flops for n in self.nodes.values()),
                "bytes": sum(n.bytes_read + n.bytes_written for n in self.nodes.values())}


# Ops that read only the part of their data input that they return.
_PARTIAL_READS = {"Gather", "GatherElements", "GatherND", "Slice"}


def _bytes_read(node: NodeProto, inputs: Sequence[str], outputs: Sequence[str],
                tensors: Mapping[str, Tensor]) -> int:
    """Bytes an op reads: every input once; a Gather/Slice reads only the rows it returns
    (an embedding lookup does not stream the whole table)."""
    if node.op_type in _PARTIAL_READS and node.input and node.input[0] in tensors:
        rest = {name for name in inputs if name != node.input[0]}
        gathered = sum(tensors[name].size for name in outputs)
        return min(tensors[node.input[0]].size, gathered) + sum(tensors[n].size for n in rest)
    return sum(tensors[name].size for name in set(inputs))


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
