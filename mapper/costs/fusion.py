"""Which operators onnxruntime's CPU provider runs as one kernel, so the estimate prices
the graph that actually runs.

onnxruntime rewrites a graph before running it (its level-1/2 transformers and, at
ORT_ENABLE_ALL on x86 with AVX2 or AVX-512, the NCHWc layout transformer). A fused group is
one kernel: it pays one per-op overhead, and the tensors passed between its members stay in
registers or cache (no write and re-read through memory). The rules are pairs (producer P,
consumer C) joined by a tensor that P alone writes and C alone reads and that is no graph
output, as onnxruntime's transformers require:

| P | C | onnxruntime transformer |
|---|---|---|
| Conv | BatchNormalization, Mul or Add of constants | ConvBNFusion, ConvMulFusion, ConvAddFusion |
| Conv | Relu, Clip, Sigmoid, Tanh, LeakyRelu, HardSigmoid | ConvActivationFusion (FusedConv) |
| Conv | Add or Sum (a residual) | NchwcTransformer's Sum input / ConvAddFusion |
| Conv+Add | activation | NchwcTransformer (NchwcConv with Sum and activation) |
| Gemm, MatMul+Add | activation above | GemmActivationFusion (FusedGemm) |
| MatMul | Add of a constant bias | MatMulAddFusion (Gemm) |
| MatMul | Mul/Div by a constant scalar | MatMulScaleFusion (FusedMatMul) |
| Transpose of the last two axes | MatMul | MatmulTransposeFusion (FusedMatMul) |
| Add of two activations | LayerNormalization | SkipLayerNormFusion |
| Add of a constant bias | Gelu | BiasGeluFusion |

Not modelled: AttentionFusion (its pattern depends on the exporter; the attention's ops are
priced one by one), and elementwise chains, which onnxruntime's CPU provider does not fuse.
GPU, TPU and NPU hardware models assume no fusion at all: every node is its own kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mapper.graph import GraphView, Node

ACTIVATIONS = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"})
_CONV = frozenset({"Conv", "FusedConv"})
_GEMM = frozenset({"Gemm", "FusedGemm"})
_MATMUL = frozenset({"MatMul", "FusedMatMul"})


@dataclass(frozen=True)
class FusionGroup:
    """Nodes that run as one kernel: `members[0]` is the kernel's anchor (the op that does
    the work), the rest are fused into it; `internal` tensors never reach memory."""

    members: tuple[str, ...]
    internal: frozenset[str]
    # Members onnxruntime folds into the anchor's weights or bias when the session is
    # created (a Conv's BatchNormalization and constant Mul/Add, a MatMul's scalar scale):
    # no run-time work.
    folded: frozenset[str] = frozenset()

    @property
    def anchor(self) -> str:
        """The node whose kernel runs the group."""
        return self.members[0]


def _constant(view: GraphView, tensor: str) -> bool:
    """A weight or constant (no producing node in the graph)."""
    info = view.tensors.get(tensor)
    return info is not None and info.producer is None and info.kind != "input"


def _other_input(node: Node, tensor: str) -> str | None:
    others = [name for name in node.inputs if name and name != tensor]
    return others[0] if len(others) == 1 else None


def _scalar_constant(view: GraphView, tensor: str | None) -> bool:
    if tensor is None or not _constant(view, tensor):
        return False
    shape = view.tensors[tensor].shape
    return all(dim == 1 for dim in shape)


def _folds(view: GraphView, consumer: Node, tensor: str, group_ops: tuple[str, ...]) -> bool:
    """Whether a joining `consumer` is folded into the anchor's constants at load time
    (ConvBNFusion, ConvMulFusion, ConvAddFusion with a constant; MatMulScaleFusion's
    alpha) rather than run in its kernel. A MatMul's bias Add is not: the Gemm it becomes
    first copies the bias into the output, a pass over it."""
    op, other = consumer.op_type, _other_input(consumer, tensor)
    if group_ops[0] in _CONV:
        return op == "BatchNormalization" or (
            op in ("Mul", "Add") and other is not None and _constant(view, other))
    return group_ops[0] in _MATMUL and op in ("Mul", "Div") and _scalar_constant(view, other)


def _joins(view: GraphView, producer: Node, consumer: Node, tensor: str,
           group_ops: tuple[str, ...], perms: dict[str, tuple[int, ...]]) -> bool:
    """Whether onnxruntime fuses `consumer` into the kernel of `producer`'s group, whose ops
    so far are `group_ops` (anchor first)."""
    anchor, last, op = group_ops[0], group_ops[-1], consumer.op_type
    other = _other_input(consumer, tensor)
    if anchor in _CONV:
        if last in ACTIVATIONS:
            return False
        if op in ACTIVATIONS:
            return True
        if op == "BatchNormalization":  # ConvBNFusion folds it into the weights
            return all(_constant(view, name) for name in consumer.inputs[1:])
        if op == "Mul":  # ConvMulFusion: a per-channel constant scale
            return other is not None and _constant(view, other)
        if op in ("Add", "Sum"):
            # A constant (ConvAddFusion: a bias) or one residual sum of the same shape
            # (the NCHWc conv's Sum input; opset-7 models write it as Sum).
            return other is not None and (
                (op == "Add" and _constant(view, other))
                or (view.tensors[other].shape == view.tensors[tensor].shape
                    and not {"Add", "Sum"} & set(group_ops[1:])))
        return False
    if anchor in _GEMM:
        return len(group_ops) == 1 and op in ACTIVATIONS
    if anchor in _MATMUL:
        if len(group_ops) == 1 and op == "Add":
            return other is not None and _constant(view, other)
        if len(group_ops) == 1 and op in ("Mul", "Div"):
            return _scalar_constant(view, other)
        return last == "Add" and op in ACTIVATIONS
    if anchor == "Transpose" and len(group_ops) == 1 and op in _MATMUL:
        perm = perms.get(producer.name)
        rank = len(perm) if perm else 0
        return bool(perm) and rank >= 2 and perm == (*range(rank - 2), rank - 1, rank - 2)
    if anchor == "Add" and len(group_ops) == 1:
        if op == "LayerNormalization":
            return all(not _constant(view, name) for name in producer.inputs)
        if op == "Gelu":
            return any(_constant(view, name) for name in producer.inputs)
    return False


def cpu_fusion_groups(view: GraphView, order: Sequence[str],
                      perms: dict[str, tuple[int, ...]] | None = None
                      ) -> dict[str, FusionGroup]:
    """The fused groups of more than one node, keyed by every member, walking `order`.
    `perms`: each Transpose's perm attribute (the view does not keep attributes)."""
    perms = perms or {}
    group_of: dict[str, list[str]] = {}
    internal: dict[str, set[str]] = {}
    folded: set[str] = set()
    for name in order:
        members = group_of.setdefault(name, [name])
        internal.setdefault(members[0], set())
        # Extend this node's group with its single consumer while a rule allows.
        while True:
            tail = view.nodes[members[-1]]
            if len(tail.outputs) != 1:
                break
            tensor = view.tensors.get(tail.outputs[0])
            if tensor is None or tensor.is_output or len(tensor.consumers) != 1:
                break
            consumer = view.nodes[tensor.consumers[0]]
            if consumer.name in group_of:
                break
            ops = tuple(view.nodes[m].op_type for m in members)
            if not _joins(view, tail, consumer, tensor.name, ops, perms):
                break
            if _folds(view, consumer, tensor.name, ops):
                folded.add(consumer.name)
            members.append(consumer.name)
            group_of[consumer.name] = members
            internal[members[0]].add(tensor.name)
    groups: dict[str, FusionGroup] = {}
    for members in {id(m): m for m in group_of.values()}.values():
        if len(members) < 2:
            continue
        # A Transpose folded into its MatMul: the MatMul's kernel runs the group.
        ordered = members[1:] + members[:1] if view.nodes[members[0]].op_type == "Transpose" \
            else members
        group = FusionGroup(tuple(ordered), frozenset(internal[members[0]]),
                            frozenset(folded & set(members)))
        for member in members:
            groups[member] = group
    return groups
