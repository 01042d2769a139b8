"""Constant folding: computed weights (Constant, ConstantOfShape, Shape chains) become initializers.

Folding and shape inference feed each other (a folded Reshape target gives a static shape,
a static shape folds a `Shape` node), so they alternate until neither changes anything.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from mapper.onnx_utils import implicit_inputs, node_subgraphs
from mapper.shapes import infer_shapes, static_shapes

log = logging.getLogger(__name__)

MAX_ROUNDS = 8
# Ops whose result changes from run to run can never be folded.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli", "Dropout"}
# A fold that multiplies bytes (Tile, Expand of a scalar) would bloat the file for nothing;
# ConstantOfShape is exempt because that is how old exporters made real weights.
_MAX_GROWTH = 4
_ALWAYS_SMALL_ENOUGH = 16 * 2**20
# Integer dtypes that hold quantized codes: a fold that decodes them into floats would store
# the dequantized weights (4x and more) and lose the format the model arrived in.
_CODE_DTYPES = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16)}
_CODE_MIN_ELEMENTS = 16
# A weight this large that several nodes read is never copied by a fold.
_SHARED_MIN_ELEMENTS = 2**18


def _decodes_weights(node: NodeProto, inputs: list[np.ndarray | None]) -> bool:
    """True when folding `node` would turn constant integer codes into a float weight."""
    if node.op_type == "DequantizeLinear":
        return True
    for array in inputs:
        if array is None or array.size < _CODE_MIN_ELEMENTS:
            continue
        if array.dtype in _CODE_DTYPES or array.dtype.name in ("int4", "uint4", "int2",
                                                                  "uint2"):
            return True
    return False


def _opsets(model: ModelProto) -> dict[str, int]:
    return {entry.domain or "": entry.version for entry in model.opset_import}


def _evaluate(node: NodeProto, inputs: list[np.ndarray | None], opsets: dict[str, int]
              ) -> list[np.ndarray] | None:
    feeds = {name: value for name, value in zip(node.input, inputs, strict=True) if name}
    try:
        evaluator = ReferenceEvaluator(node, opsets=opsets)
        results = evaluator.run(None, feeds)
    except Exception as error:  # any op the reference runtime cannot evaluate stays a node
        log.debug("not folding %s (%s): %s", node.name, node.op_type, error)
        return None
    return [np.asarray(result) for result in results]


def _fold_shape_op(node: NodeProto, shapes: dict[str, tuple[int, ...]]) -> np.ndarray | None:
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    rank = len(shape)
    start = attrs.get("start", 0)
    end = attrs.get("end", rank)
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = max(0, min(rank, end + rank if end < 0 else end))
    return np.array(shape[start:end], dtype=np.int64)


def _fold_once(model: ModelProto) -> int:
    graph = model.graph
    opsets = _opsets(model)
    # Initializers are decoded only when a foldable node reads them: most are weights that
    # feed MatMul/Conv with a non-constant input, and decoding them all costs seconds.
    initializers = {init.name: init for init in graph.initializer}
    constants: dict[str, np.ndarray] = {}

    def is_constant(name: str) -> bool:
        return name in constants or name in initializers

    def value(name: str) -> np.ndarray:
        if name not in constants:
            constants[name] = numpy_helper.to_array(initializers[name])
        return constants[name]

    shapes = static_shapes(model)
    graph_outputs = {out.name for out in graph.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    folded: list[NodeProto] = []
    new_constants: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC:
            continue
        if node_subgraphs(node) or not node.output or any(o in graph_outputs for o in node.output):
            continue
        results: list[np.ndarray] | None
        if node.op_type in ("Shape", "Size"):
            shape_value = _fold_shape_op(node, shapes)
            results = None if shape_value is None else [shape_value]
        elif all(not name or is_constant(name) for name in node.input):
            if any(_stays_shared(name, initializers, readers) for name in node.input if name):
                continue
            inputs = [value(name) if name else None for name in node.input]
            if _decodes_weights(node, inputs) and not _integer_result(node, inputs, opsets):
                continue
            results = _evaluate(node, inputs, opsets)
            if results is not None and node.op_type != "ConstantOfShape":
                input_bytes = sum(array.nbytes for array in inputs if array is not None)
                output_bytes = sum(result.nbytes for result in results)
                if output_bytes > max(_ALWAYS_SMALL_ENOUGH, _MAX_GROWTH * input_bytes):
                    results = None
        else:
            continue
        if results is None or len(results) != len(node.output):
            continue
        for name, result in zip(node.output, results, strict=True):
            if name:
                constants[name] = result
                new_constants[name] = result
        folded.append(node)
    if not folded:
        return 0
    folded_ids = {id(node) for node in folded}
    kept = [node for node in graph.node if id(node) not in folded_ids]
    del graph.node[:]
    graph.node.extend(kept)
    for name, array in new_constants.items():
        _add_initializer(graph, name, array)
    return len(folded)


def _stays_shared(name: str, initializers: dict[str, onnx.TensorProto],
                  readers: dict[str, int]) -> bool:
    """A large weight other nodes read too: folding a transposed (or reshaped) copy of it
    would store it twice (tied embeddings: one table for the lookup and the output head)."""
    tensor = initializers.get(name)
    if tensor is None or readers.get(name, 0) < 2:
        return False
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count >= _SHARED_MIN_ELEMENTS


def _integer_result(node: NodeProto, inputs: list[np.ndarray | None],
                    opsets: dict[str, int]) -> bool:
    """Whether folding `node` keeps integer codes integer and no larger (reshaping or
    transposing codes is a fine fold; a float result or a wider integer would store them
    decoded)."""
    if node.op_type in ("DequantizeLinear", "Cast", "CastLike") or (
            node.op_type == "Gather" and inputs[0] is not None and inputs[0].dtype.kind == "f"):
        return False
    results = _evaluate(node, inputs, opsets)
    if results is None:
        return False
    held = sum(array.nbytes for array in inputs if array is not None)
    return all(r.dtype.kind in "iub" for r in results) and sum(r.nbytes for r in results) <= held


def _add_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    # Built in place: `append(from_array(...))` would copy every byte of a big weight twice.
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    if array.dtype == object:
        tensor.string_data.extend(s if isinstance(s, bytes) else str(s).encode()
                                  for s in array.ravel())
    else:
        tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                             copy=False).tobytes()


def remove_dead_code(model: ModelProto) -> int:
    """Drop nodes whose outputs nobody reads and initializers nothing uses; return nodes removed."""
    graph = model.graph
    removed = 0
    while True:
        used = {out.name for out in graph.output}
        for node in graph.node:
            used.update(name for name in node.input if name)
            used.update(implicit_inputs(node))
        kept = [node for node in graph.node
                if not node.output or any(out in used for out in node.output if out)]
        if len(kept) == len(graph.node):
            break
        removed += len(graph.node) - len(kept)
        del graph.node[:]
        graph.node.extend(kept)
    # Deleted one by one, from the back: rebuilding the list would copy every weight.
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in used:
            del graph.initializer[index]
    live_names = used | {name for node in graph.node for name in node.output}
    live_info = [info for info in graph.value_info if info.name in live_names]
    if len(live_info) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(live_info)
    return removed


def fold_constants(model: ModelProto, notes: list[str]) -> ModelProto:
    """Alternate shape inference and folding until stable; record what was folded in `notes`."""
    total = 0
    for _ in range(MAX_ROUNDS):
        model = infer_shapes(model)
        count = _fold_once(model)
        total += count
        if count == 0:
            break
    dead = remove_dead_code(model)
    if total:
        notes.append(f"{total} constant node(s) folded into initializers")
    if dead:
        notes.append(f"{dead} unused node(s) removed")
    return model
