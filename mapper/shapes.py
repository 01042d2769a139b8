"""Static shapes: ONNX's inference first, one onnxruntime run for what it leaves unknown."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TypeProto, ValueInfoProto

from mapper.errors import UserError
from mapper.onnx_utils import np_dtype

log = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2**31 - 1


def infer_shapes(model: ModelProto) -> ModelProto:
    """ONNX shape inference with data propagation; by file for models over the 2 GB limit."""
    try:
        if model.ByteSize() < _PROTOBUF_LIMIT:
            return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                     data_prop=True)
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            onnx.save(model, str(source), save_as_external_data=True, location="in.data")
            onnx.shape_inference.infer_shapes_path(str(source), str(target), check_type=False,
                                                   strict_mode=False, data_prop=True)
            return onnx.load(str(target))
    except Exception as error:  # inference raising on one odd node must not sink the load
        log.debug("ONNX shape inference failed: %s", error)
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


def _dummy_inputs(model: ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in model.graph.input:
        dtype = np_dtype(inp.type.tensor_type.elem_type)
        # Zeros are valid for indices, masks and state alike; ones would overflow small vocabs.
        feeds[inp.name] = np.zeros(input_shapes[inp.name], dtype=dtype)
    return feeds


def _shapes_by_execution(model: ModelProto, names: list[str], input_shapes: dict[str, list[int]]
                         ) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    probe = ModelProto()
    probe.CopyFrom(model)
    existing = {out.name for out in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    results = session.run(names, _dummy_inputs(model, input_shapes))
    return dict(zip(names, results, strict=True))


def infer_static_shapes(model: ModelProto, input_shapes: dict[str, list[int]], notes: list[str]
                        ) -> ModelProto:
    """Make `value_info` hold a static type and shape for every intermediate and output."""
    model = infer_shapes(model)
    graph = model.graph
    shapes = static_shapes(model)
    produced = [name for node in graph.node for name in node.output if name]
    missing = [name for name in produced if name not in shapes]
    if missing:
        try:
            observed = _shapes_by_execution(model, missing, input_shapes)
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise UserError(
                f"cannot determine static shapes of {len(missing)} tensor(s) (first: "
                f"{', '.join(missing[:5])}): ONNX inference left them unknown and onnxruntime "
                f"could not run the model to measure them ({reason})") from None
        types = _known_types(model)
        outputs = {out.name: out for out in graph.output}
        for name, value in observed.items():
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
