"""Stored weight formats: what a deployed model keeps for each weight, read from its graph.

A weight is the B operand of a matrix op (or an embedding table) as that op sees it. Its
format says how it is stored: dense at a dtype, or integer / NormalFloat / table codes with
scales (and zero points) per group of `group_size` weights along the reduction dim, some
groups pruned, low-rank factors beside it. `stored_bytes` counts every part the model
keeps for it; `parts` names the initializers that hold them.

Quantized models arrive in several styles, and all read into the same formats:
- contrib ops that hold packed weights: MatMulNBits, MatMulBnb4, GatherBlockQuantized;
- integer ops: QLinearMatMul, MatMulInteger, QLinearConv, ConvInteger;
- decode chains: nodes that compute a float weight from narrow integer initializers
  (DequantizeLinear; Cast then Mul/Sub; a Gather of a level table by codes; Reshape and
  Transpose of those). The loader never folds such chains (that would store the decoded
  floats); the graph view treats them as fused into their consumers, which read the parts.

Passes that rewrite weights may declare a format the graph cannot show (NormalFloat levels,
pruned groups, a rank) in the model's `metadata_props` under `FORMAT_METADATA_PREFIX + name`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

Scheme = Literal["dense", "int", "nf", "fp4", "lut"]
FORMAT_METADATA_PREFIX = "mapper.format/"
# Integer element types that hold codes; a float decoded from them is a quantized weight.
CODE_TYPES = {TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT16: 16,
              TensorProto.UINT16: 16, TensorProto.INT4: 4, TensorProto.UINT4: 4}
for _name, _bits in (("INT2", 2), ("UINT2", 2)):
    if hasattr(TensorProto, _name):
        CODE_TYPES[getattr(TensorProto, _name)] = _bits
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
               TensorProto.DOUBLE}
# Ops a decode chain may contain: they only reinterpret, convert or scale constant codes.
DECODE_OPS = {"DequantizeLinear", "Cast", "CastLike", "Mul", "Sub", "Add", "Div", "Reshape",
              "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Identity", "Expand",
              "Concat", "Slice", "BitShift", "BitwiseAnd", "BitwiseOr", "Tile", "Neg",
              "Pad"}
# Contrib ops holding packed weights: op -> (index of the packed weight, indices of its parts).
PACKED_OPS = {"MatMulNBits": (1, (1, 2, 3)), "MatMulBnb4": (1, (1, 2)),
              "GatherBlockQuantized": (0, (0, 2, 3))}
# Integer matrix ops: op -> (index of the weight, indices of its scale and zero point).
INTEGER_OPS = {"QLinearMatMul": (3, (4, 5)), "MatMulInteger": (1, (3,)), "QGemm": (3, (4, 5)),
               "QLinearConv": (3, (4, 5)), "ConvInteger": (1, (3,))}


@dataclass(frozen=True)
class WeightFormat:
    """How one weight is stored. `group_size` counts weights per scale along the reduction
    dim (the whole reduction dim for per-channel scales, every element for one scale)."""

    name: str
    shape: tuple[int, ...]
    scheme: Scheme
    bits: int
    group_size: int
    symmetric: bool
    sparsity: float
    rank: int
    stored_bytes: int
    packed_bytes: int
    parts: tuple[str, ...]
    container: str
    # Low-rank factors stored beside it (LQ-LoRA): read by their own matrix ops, so priced
    # there, but counted in the bits each original weight costs.
    factor_bytes: int = 0
    factors: tuple[str, ...] = ()

    @property
    def elements(self) -> int:
        """Weights of the dense matrix this format stands for."""
        return math.prod(self.shape) if self.shape else 0

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per original weight: codes, scales, zero points, metadata, factors."""
        total = self.stored_bytes + self.factor_bytes
        return 8.0 * total / self.elements if self.elements else 0.0

    @property
    def quantized(self) -> bool:
        """True for every format other than a dense float or integer tensor."""
        return self.scheme != "dense"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (plan.json compression weights, metadata_props)."""
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["parts"] = list(self.parts)
        data["factors"] = list(self.factors)
        data["bits_per_weight"] = round(self.bits_per_weight, 6)
        return data


SizeOf = Callable[[str], int]


def _attrs(node: NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def declared_formats(model: ModelProto) -> dict[str, dict[str, Any]]:
    """Formats a rewriting pass declared in `metadata_props` (name -> fields)."""
    found = {}
    for prop in model.metadata_props:
        if prop.key.startswith(FORMAT_METADATA_PREFIX):
            try:
                found[prop.key[len(FORMAT_METADATA_PREFIX):]] = json.loads(prop.value)
            except ValueError:
                continue
    return found


def declare_format(model: ModelProto, weight: str, fields: Mapping[str, Any]) -> None:
    """Record what the graph cannot show of `weight`'s format (scheme, sparsity, rank)."""
    key = FORMAT_METADATA_PREFIX + weight
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = json.dumps(dict(fields), sort_keys=True)
            return
    entry = model.metadata_props.add()
    entry.key = key
    entry.value = json.dumps(dict(fields), sort_keys=True)


def _array(initializers: Mapping[str, TensorProto], name: str) -> np.ndarray | None:
    tensor = initializers.get(name)
    return None if tensor is None else numpy_helper.to_array(tensor)


def _zero_share(scales: np.ndarray | None) -> float:
    """Share of groups whose scale is exactly 0 (pruned: they dequantize to 0)."""
    if scales is None or scales.size == 0:
        return 0.0
    return float(np.count_nonzero(scales == 0)) / scales.size


def bsr_bytes(rows: int, groups_per_row: int, kept_groups: int, group_size: int, bits: int,
              scale_bytes: int, zero_point_bits: int) -> int:
    """Bytes of a block-sparse-row store of group-quantized weights (the layout of
    weights.gqsa.safetensors): a row pointer per row (uint16, int32 past 65535 kept groups),
    and per kept group its index (uint8, uint16 past 256 groups per row), its bit-packed
    codes, its scale, and its zero point bit-packed with the others."""
    pointer = 2 if kept_groups <= 0xFFFF else 4
    index = 1 if groups_per_row <= 256 else 2
    codes = math.ceil(group_size * bits / 8)
    return (pointer * (rows + 1) + kept_groups * (index + codes + scale_bytes)
            + math.ceil(kept_groups * zero_point_bits / 8))


def _matmulnbits(node: NodeProto, initializers: Mapping[str, TensorProto], size_of: SizeOf
                 ) -> WeightFormat | None:
    attrs = _attrs(node)
    k, n = int(attrs.get("K", 0)), int(attrs.get("N", 0))
    bits, block = int(attrs.get("bits", 4)), int(attrs.get("block_size", 0))
    if not (k and n and block) or len(node.input) < 3:
        return None
    parts = tuple(node.input[i] for i in (1, 2, 3) if len(node.input) > i and node.input[i])
    scales = _array(initializers, node.input[2])
    sparsity = _zero_share(scales)
    zero_point = node.input[3] if len(node.input) > 3 and node.input[3] else None
    symmetric = zero_point is None
    stored = sum(size_of(p) for p in parts)
    packed = stored
    if sparsity > 0 and scales is not None:
        groups = -(-k // block)
        kept = int(np.count_nonzero(scales))
        # The artifact stores fp16 scales whatever the model's activation dtype.
        packed = bsr_bytes(n, groups, kept, block, bits, 2, 0 if symmetric else bits)
    return WeightFormat(name=node.input[1], shape=(k, n), scheme="int", bits=bits,
                        group_size=block, symmetric=symmetric, sparsity=sparsity, rank=0,
                        stored_bytes=stored, packed_bytes=min(packed, stored), parts=parts,
                        container=node.op_type)


def _matmulbnb4(node: NodeProto, size_of: SizeOf) -> WeightFormat | None:
    attrs = _attrs(node)
    k, n, block = int(attrs.get("K", 0)), int(attrs.get("N", 0)), int(attrs.get("block_size", 0))
    if not (k and n and block):
        return None
    parts = tuple(node.input[i] for i in (1, 2) if len(node.input) > i and node.input[i])
    stored = sum(size_of(p) for p in parts)
    scheme: Scheme = "nf" if int(attrs.get("quant_type", 1)) == 1 else "fp4"
    return WeightFormat(name=node.input[1], shape=(k, n), scheme=scheme, bits=4,
                        group_size=block, symmetric=True, sparsity=0.0, rank=0,
                        stored_bytes=stored, packed_bytes=stored, parts=parts,
                        container=node.op_type)


def _gather_block_quantized(node: NodeProto, shapes: Mapping[str, tuple[int, ...]],
                            elem_types: Mapping[str, int], size_of: SizeOf
                            ) -> WeightFormat | None:
    attrs = _attrs(node)
    data = node.input[0]
    shape = shapes.get(data)
    if shape is None:
        return None
    bits = int(attrs.get("bits", CODE_TYPES.get(elem_types.get(data, 0), 4)))
    logical = list(shape)
    if elem_types.get(data) == TensorProto.UINT8 and bits < 8:
        logical[-1] = logical[-1] * 8 // bits
    parts = tuple(node.input[i] for i in (0, 2, 3) if len(node.input) > i and node.input[i])
    stored = sum(size_of(p) for p in parts)
    return WeightFormat(name=data, shape=tuple(logical), scheme="int", bits=bits,
                        group_size=int(attrs.get("block_size", 128)),
                        symmetric=not (len(node.input) > 3 and node.input[3]), sparsity=0.0,
                        rank=0, stored_bytes=stored, packed_bytes=stored, parts=parts,
                        container=node.op_type)


def _integer_op(node: NodeProto, shapes: Mapping[str, tuple[int, ...]],
                elem_types: Mapping[str, int], size_of: SizeOf) -> WeightFormat | None:
    weight_index, extra = INTEGER_OPS[node.op_type]
    if len(node.input) <= weight_index:
        return None
    weight = node.input[weight_index]
    shape = shapes.get(weight)
    if shape is None or elem_types.get(weight) not in CODE_TYPES:
        return None
    parts = (weight, *(node.input[i] for i in extra if len(node.input) > i and node.input[i]))
    scale_shape = shapes.get(node.input[extra[0]], ()) if node.op_type.startswith("QLinear") \
        else ()
    per_channel = bool(scale_shape) and math.prod(scale_shape) > 1
    reduction = (math.prod(shape[1:]) if node.op_type.endswith("Conv")
                 else shape[0] if len(shape) >= 1 else 1)
    stored = sum(size_of(p) for p in parts)
    return WeightFormat(name=weight, shape=shape, scheme="int",
                        bits=CODE_TYPES[elem_types[weight]],
                        group_size=reduction if per_channel else math.prod(shape),
                        symmetric=elem_types[weight] == TensorProto.INT8, sparsity=0.0, rank=0,
                        stored_bytes=stored, packed_bytes=stored, parts=parts,
                        container=node.op_type)


@dataclass(frozen=True)
class DecodeChains:
    """The decode nodes of a graph and, per decoded tensor, the initializers it comes from."""

    nodes: frozenset[str]
    roots: Mapping[str, tuple[str, ...]]  # decoded tensor -> root initializers, in order
    formats: Mapping[str, WeightFormat]  # decoded tensors that some non-decode node reads


def _is_code(name: str, elem_types: Mapping[str, int], shapes: Mapping[str, tuple[int, ...]]
             ) -> bool:
    # Tiny integer constants (zero points, axes, shapes) are not weights.
    shape = shapes.get(name)
    return elem_types.get(name) in CODE_TYPES and shape is not None and math.prod(shape) >= 16


def find_decode_chains(graph: GraphProto, elem_types: Mapping[str, int],
                       shapes: Mapping[str, tuple[int, ...]], size_of: SizeOf) -> DecodeChains:
    """Nodes that compute a float weight from constant integer codes, and what they read."""
    initializers = {init.name for init in graph.initializer}
    graph_outputs = {out.name for out in graph.output}
    roots: dict[str, tuple[str, ...]] = {}
    has_codes: dict[str, bool] = {}
    decode: list[NodeProto] = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in DECODE_OPS:
            continue
        inputs = [name for name in node.input if name]
        if not inputs or not node.output or any(o in graph_outputs for o in node.output):
            continue
        if not all(name in initializers or name in roots for name in inputs):
            continue
        codes = any((name in initializers and _is_code(name, elem_types, shapes))
                    or has_codes.get(name, False) for name in inputs)
        if not codes:
            continue
        sources: list[str] = []
        for name in inputs:
            sources.extend(roots.get(name, (name,) if name in initializers else ()))
        for out in node.output:
            if out:
                roots[out] = tuple(dict.fromkeys(sources))
                has_codes[out] = True
        decode.append(node)
    decode_names = {node.name for node in decode}
    decoded = set(roots)
    read_outside: set[str] = set()
    for node in graph.node:
        if node.name in decode_names:
            continue
        read_outside.update(name for name in node.input if name in decoded)
    read_outside.update(name for name in graph_outputs if name in decoded)
    by_output = {out: node for node in decode for out in node.output if out}
    formats = {}
    for name in sorted(read_outside):
        formats[name] = _chain_format(name, roots[name], by_output, elem_types, shapes, size_of)
    return DecodeChains(nodes=frozenset(decode_names), roots=roots, formats=formats)


def _chain_format(name: str, roots: Sequence[str], by_output: Mapping[str, NodeProto],
                  elem_types: Mapping[str, int], shapes: Mapping[str, tuple[int, ...]],
                  size_of: SizeOf) -> WeightFormat:
    """The format of one decoded tensor, from the ops of its chain and its roots."""
    chain: list[NodeProto] = []
    pending = [name]
    seen: set[str] = set()
    while pending:
        tensor = pending.pop()
        node = by_output.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        chain.append(node)
        pending.extend(i for i in node.input if i)
    codes = [r for r in roots if elem_types.get(r) in CODE_TYPES
             and math.prod(shapes.get(r, ())) >= 16]
    bits = min((CODE_TYPES[elem_types[c]] for c in codes), default=8)
    shape = shapes.get(name, ())
    elements = math.prod(shape) if shape else 0
    ops = {node.op_type for node in chain}
    scheme: Scheme = "lut" if "Gather" in ops else "int"
    group = elements
    symmetric = True
    for node in chain:
        if node.op_type == "DequantizeLinear":
            attrs = _attrs(node)
            scale_shape = shapes.get(node.input[1], ())
            data_shape = shapes.get(node.input[0], ())
            if attrs.get("block_size"):
                group = int(attrs["block_size"])
            elif scale_shape and math.prod(scale_shape) > 1 and data_shape:
                group = elements // math.prod(scale_shape)
            symmetric = not (len(node.input) > 2 and node.input[2])
        if node.op_type == "Sub":
            symmetric = False
    stored = sum(size_of(r) for r in roots)
    # The codes first (largest first), then scales, zero points and tables.
    ordered = sorted(roots, key=lambda r: (r not in codes, -size_of(r), r))
    return WeightFormat(name=name, shape=tuple(shape), scheme=scheme, bits=bits,
                        group_size=max(group, 1), symmetric=symmetric, sparsity=0.0, rank=0,
                        stored_bytes=stored, packed_bytes=stored, parts=tuple(ordered),
                        container=chain[-1].op_type if chain else "initializer")


def read_formats(graph: GraphProto, elem_types: Mapping[str, int],
                 shapes: Mapping[str, tuple[int, ...]], size_of: SizeOf,
                 chains: DecodeChains, declared: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> dict[str, WeightFormat]:
    """Every quantized weight of the main graph, keyed by the tensor its consumer reads."""
    initializers = {init.name: init for init in graph.initializer}
    formats: dict[str, WeightFormat] = dict(chains.formats)
    for node in graph.node:
        found: WeightFormat | None = None
        if node.op_type == "MatMulNBits":
            found = _matmulnbits(node, initializers, size_of)
        elif node.op_type == "MatMulBnb4":
            found = _matmulbnb4(node, size_of)
        elif node.op_type == "GatherBlockQuantized":
            found = _gather_block_quantized(node, shapes, elem_types, size_of)
        elif node.op_type in INTEGER_OPS:
            found = _integer_op(node, shapes, elem_types, size_of)
        if found is not None and found.parts and found.parts[0] in initializers:
            formats.setdefault(found.name, found)
    for name, fields in (declared or {}).items():
        if name in formats:
            formats[name] = _apply_declared(formats[name], fields, size_of, initializers)
    return formats


def _apply_declared(found: WeightFormat, fields: Mapping[str, Any], size_of: SizeOf,
                    initializers: Mapping[str, TensorProto]) -> WeightFormat:
    """A declared format refines what the graph shows; bytes always come from the graph."""
    update: dict[str, Any] = {}
    if fields.get("scheme") in ("dense", "int", "nf", "fp4", "lut"):
        update["scheme"] = fields["scheme"]
    for key in ("bits", "group_size", "rank"):
        if isinstance(fields.get(key), int) and fields[key] >= 0:
            update[key] = int(fields[key])
    if isinstance(fields.get("symmetric"), bool):
        update["symmetric"] = fields["symmetric"]
    if isinstance(fields.get("sparsity"), int | float) and 0 <= fields["sparsity"] < 1:
        update["sparsity"] = float(fields["sparsity"])
    if isinstance(fields.get("packed_bytes"), int):
        update["packed_bytes"] = min(int(fields["packed_bytes"]), found.stored_bytes)
    factors = tuple(p for p in fields.get("factors", ()) if isinstance(p, str)
                    and p in initializers)
    if factors:
        update["factors"] = factors
        update["factor_bytes"] = sum(size_of(p) for p in factors)
    return replace(found, **update)
