"""Find MoE layers in an ONNX graph: router MatMul/Gemm -> Softmax/Sigmoid -> TopK -> E experts.

A layer is recognized from its gate: a TopK over the last axis whose input comes from a
weight MatMul/Gemm (the router) through Softmax/Sigmoid and shape/cast/scale ops (top-k of
probabilities, Mixtral/Qwen, or of logits with the softmax after it, Switch). The router's
activation input (and its reshaped/cast versions) is the token tensor X.

The experts are found structurally, the same way for torch dynamo and TorchScript exports
and for dense (every expert on every token, gated) or sparse (Gather/index by the TopK
indices) forms: walking backwards from each weight MatMul's activation input through
non-weight ops, a first-level expert MatMul reaches X without passing another weight
MatMul (index paths through the router are allowed); a deeper one reaches only MatMuls
already in the region (fc2 after fc1, SwiGLU's w2 after w1 and w3, low-rank factors).
Connected pieces are the experts: E pieces with the same weight shapes, or one piece whose
weights are batched over a leading dim of E. Anything that also reaches weight MatMuls
outside the region (the residual stream, the next layer) is not part of the experts, and
a MatMul joining two pieces that both already go deeper (two whole experts) is refused.
A TopK with no such experts (a classifier's top-5) is not an MoE layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from onnx import ModelProto, NodeProto, numpy_helper

from mapper.graph import GraphView
from mapper.onnx_utils import node_reads

# (activation input index, weight input index) of the matrix ops an expert or router uses.
_MATRIX_INPUTS = {
    "MatMul": (0, 1), "Gemm": (0, 1), "FusedMatMul": (0, 1), "MatMulNBits": (0, 1),
    "MatMulInteger": (0, 1), "MatMulIntegerToFloat": (0, 1), "DynamicQuantizeMatMul": (0, 1),
    "QLinearMatMul": (0, 3),
}
# Ops allowed between the router and its TopK.
_GATE_OPS = {"Softmax", "Sigmoid", "LogSoftmax", "Cast", "Reshape", "Identity", "Flatten",
             "Squeeze", "Unsqueeze", "Add", "Mul", "Div", "Sub"}
# Ops that keep a tensor the same tokens (the token tensor's other names).
_VIEW_OPS = {"Reshape", "Cast", "Identity", "Flatten", "Squeeze", "Unsqueeze"}
_ROUTER, _OUTSIDE = "<router>", "<outside>"


@dataclass(frozen=True)
class MoeLayer:
    """One detected MoE layer: where its gate is and what its experts cost."""

    name: str
    router: str  # router MatMul/Gemm node
    topk: str  # TopK node
    indices: str  # TopK indices tensor: [..., k] expert ids
    num_experts: int
    top_k: int
    tokens: int  # tokens routed per forward pass
    hidden_size: int
    token_dtype: str
    token_element_bytes: float
    experts: tuple[tuple[str, ...], ...]  # weight-MatMul nodes per expert (one if batched)
    batched: bool  # all experts in one set of batched MatMuls
    expert_weight_bytes: float  # per expert
    expert_flops_per_token: float  # per expert, per token


@dataclass(frozen=True)
class Detection:
    """Detected layers, and why TopK nodes that looked like gates were not taken."""

    layers: tuple[MoeLayer, ...]
    rejected: tuple[str, ...]


class _Graph:
    """Producers, constants and weight bytes of a model, for the walks below."""

    def __init__(self, model: ModelProto, view: GraphView) -> None:
        self.view = view
        self.nodes = {node.name: node for node in model.graph.node}
        self.order = [node.name for node in model.graph.node]
        self.position = {name: index for index, name in enumerate(self.order)}
        self.producer = {out: node.name for node in model.graph.node for out in node.output
                         if out}
        self.initializers = {init.name: init for init in model.graph.initializer}
        self._constant: dict[str, bool] = {}

    def constant(self, tensor: str) -> bool:
        """True for initializers and tensors computed from constants only."""
        if tensor in self._constant:
            return self._constant[tensor]
        stack, seen = [tensor], []
        while stack:
            name = stack[-1]
            if name in self._constant:
                stack.pop()
                continue
            if name in self.initializers:
                self._constant[name] = True
                stack.pop()
                continue
            producer = self.producer.get(name)
            if producer is None:
                self._constant[name] = False
                stack.pop()
                continue
            inputs = [i for i in node_reads(self.nodes[producer]) if i]
            pending = [i for i in inputs if i not in self._constant]
            if pending and name not in seen:
                seen.append(name)
                stack.extend(pending)
                continue
            stack.pop()
            self._constant[name] = bool(inputs) and all(self._constant.get(i, False)
                                                        for i in inputs)
        return self._constant[tensor]

    def constant_sources(self, tensor: str) -> list[str]:
        """The initializers a constant tensor is computed from."""
        found, stack, seen = [], [tensor], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.initializers:
                found.append(name)
            elif name in self.producer:
                stack.extend(i for i in self.nodes[self.producer[name]].input if i)
        return found

    def constant_bytes(self, tensor: str) -> int:
        """Bytes of the initializers a constant tensor is computed from."""
        return sum(self.view.tensors[name].size for name in self.constant_sources(tensor)
                   if name in self.view.tensors)

    def matrix_roles(self, node: NodeProto) -> tuple[str, str] | None:
        """(activation, weight) of a matrix op with exactly one constant operand."""
        roles = _MATRIX_INPUTS.get(node.op_type)
        if roles is None or len(node.input) <= max(roles):
            return None
        act, weight = node.input[roles[0]], node.input[roles[1]]
        if self.constant(weight) and not self.constant(act):
            return act, weight
        if node.op_type in ("MatMul", "FusedMatMul") and self.constant(act) \
                and not self.constant(weight):
            return weight, act
        return None

    def weight_dims(self, node: NodeProto, weight: str) -> tuple[int, ...]:
        """Logical weight shape ([..., K, N]); MatMulNBits keeps it in attributes."""
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            return (int(attrs.get("K", 0)), int(attrs.get("N", 0)))
        tensor = self.view.tensors.get(weight)
        return tuple(tensor.shape) if tensor is not None else ()


def _int_scalar(graph: _Graph, tensor: str) -> int | None:
    init = graph.initializers.get(tensor)
    if init is None:
        return None
    values = numpy_helper.to_array(init).reshape(-1)
    return int(values[0]) if values.size == 1 else None


def _router_of(graph: _Graph, topk: NodeProto) -> NodeProto | None:
    """The weight MatMul/Gemm feeding a TopK through gate ops, if any."""
    tensor, steps = topk.input[0], 0
    while steps < 12:
        producer = graph.producer.get(tensor)
        if producer is None:
            return None
        node = graph.nodes[producer]
        if node.op_type in _MATRIX_INPUTS:
            return node if graph.matrix_roles(node) is not None else None
        if node.op_type not in _GATE_OPS:
            return None
        variable = [i for i in node.input if i and not graph.constant(i)]
        if len(variable) != 1:
            return None
        tensor, steps = variable[0], steps + 1
    return None


def _token_names(graph: _Graph, tensor: str) -> set[str]:
    """The router input and the tensors it is a reshaped/cast view of."""
    names = {tensor}
    while tensor in graph.producer:
        node = graph.nodes[graph.producer[tensor]]
        variable = [i for i in node.input if i and not graph.constant(i)]
        if node.op_type not in _VIEW_OPS or len(variable) != 1:
            break
        tensor = variable[0]
        names.add(tensor)
    return names


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, item: str) -> None:
        self.parent.setdefault(item, item)

    def find(self, item: str) -> str:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, items: list[str]) -> None:
        roots = [self.find(i) for i in items]
        for root in roots[1:]:
            self.parent[root] = roots[0]

    def groups(self) -> list[list[str]]:
        found: dict[str, list[str]] = {}
        for item in self.parent:
            found.setdefault(self.find(item), []).append(item)
        return list(found.values())


def _expert_pieces(graph: _Graph, router: NodeProto, tokens: set[str], num_experts: int
                   ) -> tuple[list[list[str]], set[str]]:
    """Connected expert pieces after the router, and the first-level MatMuls reached only
    through the router (sparse dispatch) - see the module docstring."""
    # Per tensor: (reaches the token tensor, frontier of weight MatMuls it depends on).
    walk: dict[str, tuple[bool, frozenset[str]]] = {name: (True, frozenset()) for name in tokens}
    region, pieces = set(), _UnionFind()
    routed: set[str] = set()
    deep: set[str] = set()  # region members below the first level
    start = min(graph.position[graph.producer[t]] if t in graph.producer else -1
                for t in tokens)
    for name in graph.order[start + 1:]:
        node = graph.nodes[name]
        reach, stops = False, set()
        for tensor in node_reads(node):
            if not tensor or graph.constant(tensor):
                continue
            got = walk.get(tensor, (False, frozenset({_OUTSIDE})))
            reach |= got[0]
            stops |= got[1]
        if _OUTSIDE in stops:
            stops = {_OUTSIDE}
        out: tuple[bool, frozenset[str]] = (reach, frozenset(stops))
        roles = graph.matrix_roles(node)
        if node.name == router.name:
            out = (False, frozenset({_ROUTER}))
        elif roles is not None:
            act_reach, act_stops = walk.get(roles[0], (False, frozenset({_OUTSIDE})))
            inner = set(act_stops) - {_ROUTER}
            member = False
            if _OUTSIDE in act_stops:
                member = False
            elif not inner and act_reach:
                member = True  # first level: straight from the tokens
                if _ROUTER in act_stops:
                    routed.add(name)
            elif inner and inner <= region:
                # Joining pieces that are still first-level only (SwiGLU's w1 and w3) is one
                # expert; joining two pieces that each go deeper (whole experts) is not.
                roots = {pieces.find(i) for i in inner}
                grown = {pieces.find(i) for i in deep}
                member = len(roots & grown) <= 1
            if member:
                region.add(name)
                pieces.add(name)
                if inner:
                    deep.add(name)
                    pieces.union([name, *inner])
                out = (False, frozenset({name}))
            else:
                out = (False, frozenset({_OUTSIDE}))
        for tensor in node.output:
            if tensor and tensor not in tokens:
                walk[tensor] = out
    return pieces.groups(), routed


def _layer_name(graph: _Graph, experts: list[list[str]], index: int) -> str:
    """`blocks.0.moe` from weights named `blocks.0.moe.experts.3.fc1.weight`, else layerN.moe."""
    for piece in experts:
        for node_name in piece:
            roles = graph.matrix_roles(graph.nodes[node_name])
            for tensor in graph.constant_sources(roles[1]) if roles else ():
                match = re.match(r"(.+?)\.experts?\.", tensor)
                if match:
                    return match.group(1)
    return f"layer{index}.moe"


def _describe(graph: _Graph, piece: list[str]) -> tuple[tuple[tuple[int, ...], ...], int, float]:
    """Weight shapes (sorted), weight bytes and FLOPs per token of one expert piece."""
    shapes, size, flops = [], 0, 0.0
    for name in piece:
        node = graph.nodes[name]
        roles = graph.matrix_roles(node)
        if roles is None:
            continue
        dims = graph.weight_dims(node, roles[1])
        shapes.append(dims)
        size += graph.constant_bytes(roles[1])
        flops += 2.0 * math.prod(dims[-2:]) * (math.prod(dims[:-2]) if len(dims) > 2 else 1)
    return tuple(sorted(shapes)), size, flops


def _pick_experts(graph: _Graph, pieces: list[list[str]], routed: set[str],
                  num_experts: int) -> tuple[list[list[str]], bool] | None:
    """The E routed experts among the pieces (or one batched piece), or None."""
    for piece in pieces:
        shapes, _, _ = _describe(graph, piece)
        if shapes and all(len(s) >= 3 and s[0] == num_experts for s in shapes):
            return [piece], True
    by_shape: dict[tuple[tuple[int, ...], ...], list[list[str]]] = {}
    for piece in pieces:
        by_shape.setdefault(_describe(graph, piece)[0], []).append(piece)
    exact = [group for group in by_shape.values() if len(group) == num_experts]
    if exact:
        return max(exact, key=lambda g: sum(_describe(graph, p)[1] for p in g)), False
    for group in by_shape.values():
        # More same-shape pieces than experts: shared experts; the routed ones are those
        # whose tokens come through the router's indices.
        chosen = [p for p in group if any(n in routed for n in p)]
        if len(chosen) == num_experts:
            return chosen, False
    return None


def detect_moe_layers(model: ModelProto, view: GraphView) -> Detection:
    """Every MoE layer of a normalized model (static shapes), in graph order."""
    graph = _Graph(model, view)
    layers: list[MoeLayer] = []
    rejected: list[str] = []
    for name in graph.order:
        node = graph.nodes[name]
        if node.op_type != "TopK" or len(node.input) < 2 or len(node.output) < 2:
            continue
        scores = view.tensors.get(node.input[0])
        k = _int_scalar(graph, node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if scores is None or not scores.shape or k is None:
            continue
        if axis not in (-1, len(scores.shape) - 1):
            continue
        num_experts = int(scores.shape[-1])
        router = _router_of(graph, node)
        if router is None or not 1 <= k < num_experts:
            continue
        act, _ = graph.matrix_roles(router) or ("", "")
        tokens = _token_names(graph, act)
        pieces, routed = _expert_pieces(graph, router, tokens, num_experts)
        picked = _pick_experts(graph, pieces, routed, num_experts)
        if picked is None:
            rejected.append(f"TopK {name}: router {router.name} found, but not {num_experts} "
                            "expert subgraphs after it")
            continue
        experts, batched = picked
        described = [_describe(graph, piece) for piece in experts]
        divide = num_experts if batched else 1
        weight_bytes = sum(d[1] for d in described) / len(described) / divide
        flops = sum(d[2] for d in described) / len(described) / divide
        x = view.tensors[act]
        hidden = int(x.shape[-1]) if x.shape else 1
        indices = view.tensors.get(node.output[1])
        routed_tokens = math.prod(indices.shape[:-1]) if indices is not None and \
            indices.shape else math.prod(x.shape[:-1])
        layer_name = _layer_name(graph, experts, len(layers))
        if any(layer.name == layer_name for layer in layers):
            layer_name = f"{layer_name}.{len(layers)}"
        layers.append(MoeLayer(
            name=layer_name, router=router.name, topk=name, indices=node.output[1],
            num_experts=num_experts, top_k=k, tokens=int(routed_tokens), hidden_size=hidden,
            token_dtype=x.dtype, token_element_bytes=x.size / max(math.prod(x.shape), 1),
            experts=tuple(tuple(sorted(piece, key=graph.position.__getitem__))
                          for piece in experts),
            batched=batched, expert_weight_bytes=weight_bytes, expert_flops_per_token=flops))
    return Detection(layers=tuple(layers), rejected=tuple(rejected))
