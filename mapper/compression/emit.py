"""Writing group-quantized weights into a model that onnxruntime runs.

Formats (`--format`), and the code bits each holds:
- `matmulnbits`: com.microsoft.MatMulNBits for MatMul/Gemm weights and
  com.microsoft.GatherBlockQuantized for embedding tables: 2, 4 or 8 bits (onnxruntime's CPU
  kernels run no others);
- `qdq`: blocked DequantizeLinear (opset 21) on int4/uint4/int8/uint8 codes, then the
  original MatMul/Gemm/Gather: 4 or 8 bits;
- `lut`: codes of any width 1-8 packed as a bit stream, unpacked with standard ops
  (BitShift, BitwiseAnd/Or), looked up in a level table (integers, or NormalFloat levels),
  scaled per group, then the original op: storage exactly as packed, and standard ONNX only
  (onnxruntime folds the decoding once, when it loads the model).

Every rewritten weight keeps its name: the initializer of that name holds its codes, with
`<name>.scales` and `<name>.zero_points` beside it, so plans and reports can name it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from mapper.compression.codes import GroupCodes, matmulnbits_arrays
from mapper.compression.sites import WeightSite
from mapper.errors import UserError

FORMAT_BITS: Mapping[str, frozenset[int]] = {
    "matmulnbits": frozenset({2, 4, 8}),
    "qdq": frozenset({4, 8}),
    "lut": frozenset(range(1, 9)),
}
_QDQ_OPSET = 21
_LUT_OPSET = 18
_INT4_IR = 10


def formats_holding(bits: int) -> list[str]:
    """The formats that can hold `bits`-bit codes."""
    return [name for name, held in FORMAT_BITS.items() if bits in held]


def check_format(fmt: str, bits: int, available: Mapping[str, frozenset[int]] = FORMAT_BITS
                 ) -> None:
    """A user error naming the formats that hold `bits` when `fmt` cannot."""
    if bits in available.get(fmt, frozenset()):
        return
    holders = [name for name, held in available.items() if bits in held]
    hint = (f"formats that hold {bits} bits: {', '.join(holders)} (--format {holders[0]})"
            if holders else f"no format of this pass holds {bits} bits")
    raise UserError(f"--bits {bits} --format {fmt}: {fmt} holds "
                    f"{', '.join(map(str, sorted(available.get(fmt, ()))))} bits only "
                    f"(onnxruntime's CPU kernels); {hint}")


def float_type_of(model: ModelProto, name: str) -> int:
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.name == name and info.type.HasField("tensor_type"):
            elem = info.type.tensor_type.elem_type
            if elem in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
                return elem
    return TensorProto.FLOAT


def _tensor(array: np.ndarray, name: str, elem_type: int | None = None) -> TensorProto:
    if elem_type is not None and elem_type != onnx.helper.np_dtype_to_tensor_dtype(array.dtype):
        array = array.astype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _int_tensor(values: np.ndarray, name: str, bits: int, signed: bool) -> TensorProto:
    """Codes as an ONNX int4/uint4/int8/uint8 tensor (4-bit ones packed two per byte)."""
    if bits == 8:
        dtype = np.int8 if signed else np.uint8
        return numpy_helper.from_array(values.astype(dtype), name)
    elem = TensorProto.INT4 if signed else TensorProto.UINT4
    flat = values.astype(np.int16).ravel() & 0xF
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int16)])
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = elem
    tensor.dims.extend(values.shape)
    tensor.raw_data = packed.tobytes()
    return tensor


def _matmulnbits(site: WeightSite, codes: GroupCodes, model: ModelProto
                 ) -> tuple[list[NodeProto], list[TensorProto]]:
    packed, scales, zero_points = matmulnbits_arrays(codes)
    float_type = float_type_of(model, site.activation)
    inits = [_tensor(packed, site.weight), _tensor(scales, f"{site.weight}.scales", float_type)]
    inputs = [site.activation, site.weight, f"{site.weight}.scales"]
    if zero_points is not None:
        inits.append(_tensor(zero_points, f"{site.weight}.zero_points"))
        inputs.append(f"{site.weight}.zero_points")
    nodes: list[NodeProto] = []
    output = site.output
    if site.bias is not None:
        bias = next(numpy_helper.to_array(i) for i in model.graph.initializer
                    if i.name == site.bias).astype(np.float32).ravel() * np.float32(site.beta)
        bias = np.broadcast_to(bias, (site.rows,)).copy()
        inits.append(_tensor(bias, f"{site.weight}.bias", float_type))
        inputs += [""] * (5 - len(inputs)) + [f"{site.weight}.bias"]
    nodes.append(helper.make_node(
        "MatMulNBits", inputs, [output], name=site.node, domain="com.microsoft",
        K=site.cols, N=site.rows, bits=codes.bits, block_size=codes.group_size))
    return nodes, inits


def _gather_block_quantized(site: WeightSite, codes: GroupCodes, model: ModelProto
                            ) -> tuple[list[NodeProto], list[TensorProto]]:
    from mapper.compression.codes import pack_bits

    float_type = float_type_of(model, site.output)
    data = pack_bits(codes.codes, codes.bits)
    inits = [_tensor(data, site.weight),
             _tensor(codes.scales, f"{site.weight}.scales", float_type)]
    inputs = [site.weight, site.activation, f"{site.weight}.scales"]
    if codes.zero_points is not None:
        inits.append(_tensor(pack_bits(codes.zero_points, codes.bits,
                                       fill=1 << (codes.bits - 1)),
                             f"{site.weight}.zero_points"))
        inputs.append(f"{site.weight}.zero_points")
    node = helper.make_node("GatherBlockQuantized", inputs, [site.output], name=site.node,
                            domain="com.microsoft", gather_axis=0, quantize_axis=1,
                            block_size=codes.group_size, bits=codes.bits)
    return [node], inits


def _qdq(site: WeightSite, codes: GroupCodes, original: NodeProto, model: ModelProto
         ) -> tuple[list[NodeProto], list[TensorProto]]:
    float_type = float_type_of(model, site.output)
    signed = codes.symmetric
    values = codes.codes.astype(np.int16)
    if signed:
        values = values - (1 << (codes.bits - 1))
    scales = codes.scales
    axis = 1
    if site.kind != "gather" and not site.transposed:
        values, scales, axis = values.T, scales.T, 0
    inits = [_int_tensor(values, site.weight, codes.bits, signed),
             _tensor(scales, f"{site.weight}.scales", float_type)]
    dq_inputs = [site.weight, f"{site.weight}.scales"]
    if not signed:
        zero = codes.zero_point_array() if site.kind == "gather" or site.transposed \
            else codes.zero_point_array().T
        inits.append(_int_tensor(zero, f"{site.weight}.zero_points", codes.bits, False))
        dq_inputs.append(f"{site.weight}.zero_points")
    decoded = f"{site.weight}.dequantized"
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, [decoded],
                              name=f"{site.node}.dequantize", axis=axis,
                              block_size=codes.group_size)]
    rewritten = NodeProto()
    rewritten.CopyFrom(original)
    index = 0 if site.kind == "gather" else 1
    rewritten.input[index] = decoded
    if site.kind == "gemm" and site.alpha != 1.0:
        for attribute in rewritten.attribute:
            if attribute.name == "alpha":
                attribute.f = 1.0  # folded into the codes' scales
    nodes.append(rewritten)
    return nodes, inits


def _const(name: str, values: np.ndarray | list[int]) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def lut_decode(prefix: str, codes: GroupCodes, float_type: int, scales: str | None = None
               ) -> tuple[list[NodeProto], list[TensorProto], str]:
    """Standard-ONNX nodes that decode bit-packed `codes` into `<prefix>.lut.weight_rows`
    [rows, cols] (row layout). The packed codes are the initializer `prefix`; the group
    scales are the initializer `<prefix>.scales` unless `scales` names a tensor
    [rows, groups, 1] that another chain computes."""
    from mapper.compression.codes import pack_bits

    bits, w = codes.bits, prefix
    count = codes.rows * codes.cols
    chunks = -(-count // 8)  # 8 codes take `bits` whole bytes
    stream = np.zeros(chunks * 8, dtype=np.uint8)
    stream[:count] = codes.codes.ravel()
    packed = pack_bits(stream.reshape(chunks, 8), bits)  # [chunks, bits]
    offsets = [bits * j for j in range(8)]
    low = [o // 8 for o in offsets]
    high = [min(o // 8 + 1, bits - 1) for o in offsets]
    levels = codes.levels if codes.levels is not None else (
        np.arange(1 << bits, dtype=np.float32)
        - (float(1 << (bits - 1)) if codes.zero_points is None else 0.0))
    groups, group = codes.groups, codes.group_size
    t = f"{w}.lut"
    inits = [
        _tensor(packed, w), _tensor(levels.astype(np.float32), f"{w}.levels", float_type),
        _const(f"{t}.low", low),
        _const(f"{t}.high", high),
        _const(f"{t}.right", np.asarray([o % 8 for o in offsets], np.uint32)),
        _const(f"{t}.left", np.asarray([8 - o % 8 for o in offsets], np.uint32)),
        _const(f"{t}.mask", np.asarray([(1 << bits) - 1], np.uint32)),
        _const(f"{t}.codes", [chunks * 8]), _const(f"{t}.count", [0]),
        _const(f"{t}.end", [count]),
        _const(f"{t}.groups", [codes.rows, groups, group])]
    nodes: list[NodeProto] = []
    if scales is None:
        scales = f"{w}.scales"
        inits.append(_tensor(codes.scales.reshape(codes.rows, groups, 1), scales, float_type))
    pad = groups * group - codes.cols
    nodes += [
        helper.make_node("Cast", [w], [f"{t}.b32"], name=f"{t}.widen",
                         to=TensorProto.UINT32),
        helper.make_node("Gather", [f"{t}.b32", f"{t}.low"], [f"{t}.lo"], name=f"{t}.lo",
                         axis=1),
        helper.make_node("Gather", [f"{t}.b32", f"{t}.high"], [f"{t}.hi"], name=f"{t}.hi",
                         axis=1),
        helper.make_node("BitShift", [f"{t}.lo", f"{t}.right"], [f"{t}.los"],
                         name=f"{t}.shift_lo", direction="RIGHT"),
        helper.make_node("BitShift", [f"{t}.hi", f"{t}.left"], [f"{t}.his"],
                         name=f"{t}.shift_hi", direction="LEFT"),
        helper.make_node("BitwiseOr", [f"{t}.los", f"{t}.his"], [f"{t}.joined"],
                         name=f"{t}.join"),
        helper.make_node("BitwiseAnd", [f"{t}.joined", f"{t}.mask"], [f"{t}.masked"],
                         name=f"{t}.mask"),
        helper.make_node("Reshape", [f"{t}.masked", f"{t}.codes"], [f"{t}.flat"],
                         name=f"{t}.flatten"),
        helper.make_node("Slice", [f"{t}.flat", f"{t}.count", f"{t}.end"], [f"{t}.used"],
                         name=f"{t}.used"),
        helper.make_node("Cast", [f"{t}.used"], [f"{t}.index"], name=f"{t}.index",
                         to=TensorProto.INT64),
        helper.make_node("Gather", [f"{w}.levels", f"{t}.index"], [f"{t}.values"],
                         name=f"{t}.lookup", axis=0),
    ]
    if pad:
        inits.append(_const(f"{t}.rows", [codes.rows, codes.cols]))
        inits.append(_const(f"{t}.pad", [0, 0, 0, pad]))
        nodes += [helper.make_node("Reshape", [f"{t}.values", f"{t}.rows"], [f"{t}.matrix"],
                                   name=f"{t}.rows"),
                  helper.make_node("Pad", [f"{t}.matrix", f"{t}.pad"], [f"{t}.padded"],
                                   name=f"{t}.pad")]
        source = f"{t}.padded"
    else:
        source = f"{t}.values"
    nodes.append(helper.make_node("Reshape", [source, f"{t}.groups"], [f"{t}.grouped"],
                                  name=f"{t}.group"))
    current = f"{t}.grouped"
    if codes.zero_points is not None:
        inits.append(_tensor(codes.zero_points.reshape(codes.rows, groups, 1),
                             f"{w}.zero_points"))
        nodes += [helper.make_node("Cast", [f"{w}.zero_points"], [f"{t}.zero"],
                                   name=f"{t}.zero", to=float_type),
                  helper.make_node("Sub", [current, f"{t}.zero"], [f"{t}.centred"],
                                   name=f"{t}.centre")]
        current = f"{t}.centred"
    nodes.append(helper.make_node("Mul", [current, scales], [f"{t}.scaled"],
                                  name=f"{t}.scale"))
    inits += [_const(f"{t}.shape", [codes.rows, groups * group]),
              _const(f"{t}.start", [0]), _const(f"{t}.stop", [codes.cols]),
              _const(f"{t}.axis", [1])]
    nodes += [helper.make_node("Reshape", [f"{t}.scaled", f"{t}.shape"], [f"{t}.rowsfull"],
                               name=f"{t}.rows_full"),
              helper.make_node("Slice", [f"{t}.rowsfull", f"{t}.start", f"{t}.stop",
                                         f"{t}.axis"], [f"{t}.weight_rows"],
                               name=f"{t}.trim")]
    return nodes, inits, f"{t}.weight_rows"


def feed_decoded(site: WeightSite, rows_tensor: str, original: NodeProto
                 ) -> list[NodeProto]:
    """The nodes that hand a decoded row-layout weight to a copy of the site's op: the
    weight in the op's own layout as `<weight>.dequantized`, then the op reading it."""
    decoded = f"{site.weight}.dequantized"
    if site.kind == "gather" or site.transposed:
        first = helper.make_node("Identity", [rows_tensor], [decoded],
                                 name=f"{site.weight}.lut.decoded")
    else:
        first = helper.make_node("Transpose", [rows_tensor], [decoded],
                                 name=f"{site.weight}.lut.decoded", perm=[1, 0])
    rewritten = NodeProto()
    rewritten.CopyFrom(original)
    rewritten.input[0 if site.kind == "gather" else 1] = decoded
    if site.kind == "gemm" and site.alpha != 1.0:
        for attribute in rewritten.attribute:
            if attribute.name == "alpha":
                attribute.f = 1.0  # folded into the scales
    return [first, rewritten]


def _lut(site: WeightSite, codes: GroupCodes, original: NodeProto, model: ModelProto
         ) -> tuple[list[NodeProto], list[TensorProto]]:
    """Bit-packed codes decoded by standard ops into the weight the original op reads."""
    nodes, inits, rows_tensor = lut_decode(site.weight, codes, float_type_of(model, site.output))
    return nodes + feed_decoded(site, rows_tensor, original), inits


def _upgrade_for_qdq(model: ModelProto) -> ModelProto:
    from mapper.loader import upgrade_opset

    notes: list[str] = []
    upgraded = upgrade_opset(model, _QDQ_OPSET, notes)
    if not any(e.domain in ("", "ai.onnx") and e.version >= _QDQ_OPSET
               for e in upgraded.opset_import):
        raise UserError(f"--format qdq needs opset {_QDQ_OPSET} (blocked DequantizeLinear) and "
                        f"the model could not be upgraded ({'; '.join(notes)}); use --format "
                        "matmulnbits")
    upgraded.ir_version = max(upgraded.ir_version, _INT4_IR)
    return upgraded


def _upgrade_for_lut(model: ModelProto) -> ModelProto:
    from mapper.loader import upgrade_opset

    notes: list[str] = []
    upgraded = upgrade_opset(model, _LUT_OPSET, notes)
    if not any(e.domain in ("", "ai.onnx") and e.version >= _LUT_OPSET
               for e in upgraded.opset_import):
        raise UserError(f"--format lut needs opset {_LUT_OPSET} (BitwiseAnd/Or) and the model "
                        f"could not be upgraded ({'; '.join(notes)})")
    return upgraded


def rewrite(model: ModelProto, replacements: Sequence[tuple[WeightSite, GroupCodes]],
            fmt: str) -> ModelProto:
    """A copy of `model` with every site's weight replaced by its codes in format `fmt`."""
    result = ModelProto()
    result.CopyFrom(model)
    if fmt == "qdq":
        result = _upgrade_for_qdq(result)
    elif fmt == "lut":
        result = _upgrade_for_lut(result)
    graph = result.graph
    by_node = {site.node: (site, codes) for site, codes in replacements}
    replaced = {site.weight for site, _ in replacements} | {
        site.bias for site, _ in replacements if site.bias and fmt == "matmulnbits"}
    new_nodes: list[NodeProto] = []
    new_inits: list[TensorProto] = []
    for node in graph.node:
        if node.name not in by_node:
            new_nodes.append(node)
            continue
        site, codes = by_node[node.name]
        if fmt == "qdq":
            made, inits = _qdq(site, codes, node, result)
        elif fmt == "lut":
            made, inits = _lut(site, codes, node, result)
        elif site.kind == "gather":
            made, inits = _gather_block_quantized(site, codes, result)
        else:
            made, inits = _matmulnbits(site, codes, result)
        new_nodes.extend(made)
        new_inits.extend(inits)
    still_read = {name for node in new_nodes for name in node.input}
    for index in reversed(range(len(graph.initializer))):
        name = graph.initializer[index].name
        if name in replaced and (name not in still_read or name in
                                 {site.weight for site, _ in replacements}):
            del graph.initializer[index]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    if fmt == "matmulnbits" and not any(e.domain == "com.microsoft" for e in result.opset_import):
        result.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return result
