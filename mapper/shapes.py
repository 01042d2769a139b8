"""Static shapes: ONNX's inference first, one onnxruntime run for what it leaves unknown."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, TypeProto, ValueInfoProto

from mapper.errors import UserError
from mapper.onnx_utils import np_dtype

log = logging.getLogger(__name__)

# Initializers above this many bytes are shown to shape inference as typed inputs only:
# inference needs their shapes, never their values, and copying hundreds of MB of weights
# through protobuf serialization on every round is what made big models slow to load.
# Small ones stay, since data propagation reads values such as Reshape targets.
_VALUE_NEEDED_BYTES = 4096
# Quantized codes and bit-unpacking constants never shape anything, and ONNX's data
# propagation follows their values through every decode op (seconds and gigabytes on an
# LLM's decode chains): they are shown as typed inputs whatever their size.
_CODE_TYPES = frozenset({TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16,
                         TensorProto.INT16, TensorProto.UINT32, TensorProto.UINT64,
                         TensorProto.INT4, TensorProto.UINT4})


def weightless_copy(model: ModelProto) -> tuple[ModelProto, set[str]]:
    """A copy whose large initializers are typed graph inputs instead; and their names.

    ONNX's whole-model tools (shape inference, the version converter) serialize the model
    to C++ and back; without the weights that costs milliseconds instead of seconds.
    """
    graph = model.graph
    heavy = [init for init in graph.initializer if init.ByteSize() > _VALUE_NEEDED_BYTES
             or init.data_type in _CODE_TYPES]
    light = ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.graph.name = graph.name
    light.graph.node.extend(graph.node)
    light.graph.input.extend(graph.input)
    heavy_names = {init.name for init in heavy}
    light.graph.input.extend(
        onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        for init in heavy)
    light.graph.initializer.extend(i for i in graph.initializer if i.name not in heavy_names)
    light.graph.sparse_initializer.extend(graph.sparse_initializer)
    light.graph.output.extend(graph.output)
    light.graph.value_info.extend(graph.value_info)
    return light, heavy_names


def annotated_copy(model: ModelProto) -> ModelProto | None:
    """A weightless copy with ONNX's inferred shapes everywhere, subgraphs included."""
    light, _ = weightless_copy(model)
    try:
        # Without data propagation first: constant Reshape targets and Slice bounds are read
        # either way, and propagation costs seconds on large decode chains. It runs only
        # when shapes computed in the graph (Shape -> Concat -> Reshape) are left unknown.
        plain = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False)
        if _all_static(plain):
            return plain
        return onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False,
                                                 data_prop=True)
    except Exception as error:  # inference raising on one odd node must not sink the load
        log.debug("ONNX shape inference failed: %s", error)
        return None


def _all_static(model: ModelProto) -> bool:
    """Every main-graph node output has a type with a fully static shape."""
    graph = model.graph
    known = {info.name: info for info in [*graph.value_info, *graph.output, *graph.input]}
    for node in graph.node:
        for name in node.output:
            info = known.get(name)
            if name and (info is None or not info.type.HasField("tensor_type")
                         or not info.type.tensor_type.HasField("shape")
                         or not all(d.HasField("dim_value")
                                    for d in info.type.tensor_type.shape.dim)):
                return False
    return True


def infer_shapes(model: ModelProto) -> ModelProto:
    """ONNX shape inference, main graph only, written into `model` (returned too).

    Subgraph annotations are not kept: ONNX infers wrong shapes inside some If branches
    once outer dims are fixed (Silero VAD's LSTM), and onnxruntime trusts them and fails.
    """
    inferred = annotated_copy(model)
    if inferred is None:
        return model
    graph = model.graph
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    del graph.output[:]
    graph.output.extend(inferred.graph.output)
    return model


def _static_dims(type_proto: TypeProto) -> tuple[int, ...] | None:
    if not type_proto.HasField("tensor_type"):
        return None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        dims.append(dim.dim_value)
    return tuple(dims)


def static_shapes(model: ModelProto) -> dict[str, tuple[int, ...]]:
    """Every main-graph tensor whose shape is fully static, with that shape."""
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {
        init.name: tuple(init.dims) for init in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = _static_dims(info.type)
        if dims is not None:
            shapes[info.name] = dims
    return shapes


def _known_types(model: ModelProto) -> dict[str, ValueInfoProto]:
    graph = model.graph
    return {info.name: info for info in [*graph.input, *graph.value_info, *graph.output]}


# The run that measures shapes feeds real arrays: inputs larger than this together are not
# allocated (a corrupt or absurd dim must fail with a message, not exhaust the memory).
PROBE_MAX_BYTES = 2**31


def _probe_inputs(model: ModelProto, input_shapes: dict[str, list[int]],
                  given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    total = sum(int(np.prod(input_shapes[inp.name], dtype=object))
                * np_dtype(inp.type.tensor_type.elem_type).itemsize
                for inp in model.graph.input if inp.name not in given)
    if total > PROBE_MAX_BYTES:
        raise UserError(f"measuring the shapes ONNX inference leaves unknown needs one run on "
                        f"{total} bytes of inputs (shapes {dict(input_shapes)}), more than the "
                        f"{PROBE_MAX_BYTES} mapper allocates for it: check the input dims")
    feeds = {}
    for inp in model.graph.input:
        dtype = np_dtype(inp.type.tensor_type.elem_type)
        if inp.name in given:
            feeds[inp.name] = np.asarray(given[inp.name]).astype(dtype).reshape(
                input_shapes[inp.name])
        else:
            # Zeros are valid for indices, masks and state alike; ones overflow small vocabs.
            feeds[inp.name] = np.zeros(input_shapes[inp.name], dtype=dtype)
    return feeds


def _shapes_by_execution(model: ModelProto, names: list[str], input_shapes: dict[str, list[int]],
                         given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    # The probe outputs are added to `model` only while it is serialized, so its weights are
    # never copied.
    outputs = model.graph.output
    original_count = len(outputs)
    existing = {out.name for out in outputs}
    for name in names:
        if name not in existing:
            outputs.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        serialized = model.SerializeToString()
    finally:
        while len(outputs) > original_count:
            del outputs[len(outputs) - 1]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    results = session.run(names, _probe_inputs(model, input_shapes, given))
    return dict(zip(names, results, strict=True))


def _is_non_tensor(info: ValueInfoProto | None) -> bool:
    return info is not None and info.type.WhichOneof("value") not in (None, "tensor_type")


def infer_static_shapes(model: ModelProto, input_shapes: dict[str, list[int]], notes: list[str],
                        probe_inputs: Mapping[str, np.ndarray] | None = None) -> ModelProto:
    """Make `value_info` hold a static type and shape for every intermediate and output.

    What ONNX inference leaves unknown (data-dependent shapes, If branches of different
    shapes) is measured by one onnxruntime run on `probe_inputs`, zeros where none are given.
    """
    model = infer_shapes(model)
    graph = model.graph
    shapes = static_shapes(model)
    types = _known_types(model)
    produced = [name for node in graph.node for name in node.output if name]
    # Sequences and maps (ai.onnx.ml ZipMap, SplitToSequence) have no static tensor shape.
    missing = [name for name in produced
               if name not in shapes and not _is_non_tensor(types.get(name))]
    if missing:
        given = probe_inputs or {}
        try:
            observed = _shapes_by_execution(model, missing, input_shapes, given)
        except UserError:
            raise
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            on = "the --calib inputs" if given else "zero-valued inputs"
            hint = "" if given else "; pass real inputs with --calib FILE.npz"
            raise UserError(
                f"cannot determine static shapes of {len(missing)} tensor(s) (first: "
                f"{', '.join(missing[:5])}): ONNX inference left them unknown and onnxruntime "
                f"could not run the model on {on} to measure them ({reason}){hint}") from None
        outputs = {out.name: out for out in graph.output}
        for name, value in observed.items():
            if not isinstance(value, np.ndarray):
                continue
            elem_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            info = onnx.helper.make_tensor_value_info(name, elem_type, list(value.shape))
            if name in outputs:
                outputs[name].type.CopyFrom(info.type)
            elif name in types:
                types[name].type.CopyFrom(info.type)
            else:
                graph.value_info.append(info)
        notes.append(f"{len(missing)} shape(s) that ONNX inference left unknown were measured "
                     "by running the model once in onnxruntime")
    # Outputs must carry their static shapes too (the contract: shapes are static).
    shapes = static_shapes(model)
    value_infos = {info.name: info for info in graph.value_info}
    for out in graph.output:
        if _static_dims(out.type) is None and out.name in value_infos:
            out.type.CopyFrom(value_infos[out.name].type)
    output_names = {out.name for out in graph.output}
    kept = [info for info in graph.value_info if info.name not in output_names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model
