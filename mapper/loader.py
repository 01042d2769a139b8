"""Loading real-world ONNX files and normalizing them into one static, named, sorted form.

The stages run in a fixed order, each fixing what the next one needs: read (by path, so
external data works) -> structural checks (cycles, sorting) -> IR < 4 repair -> opset upgrade
-> dynamic dims fixed from the user's flags -> constant folding and shape inference until
nothing changes -> static shapes for every tensor -> unique node names.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import ModelProto, TensorProto

from mapper.errors import UserError
from mapper.folding import fold_constants
from mapper.onnx_utils import (
    graph_input_names,
    iter_subgraphs,
    node_reads,
    topological_sort,
)
from mapper.shapes import infer_static_shapes, weightless_copy

log = logging.getLogger(__name__)

# Opsets below this are upgraded with the ONNX version converter: 17 is the newest opset every
# tool we emit for (onnxruntime, torch's classic exporter) agrees on, and the converter's
# adapters up to it are mature.
MIN_OPSET = 17


@dataclass(frozen=True)
class ShapeSpec:
    """What the user said about dynamic dims: whole input shapes and named dims."""

    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    """A normalized model plus what the plan needs to say about where it came from."""

    model: ModelProto
    source_path: Path
    sha256: str
    input_shapes: dict[str, list[int]]
    notes: tuple[str, ...]


def _read(path: Path) -> ModelProto:
    if not path.exists():
        raise UserError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise UserError(f"model path {str(path)!r} is a directory: give the .onnx file inside it")
    if path.stat().st_size == 0:
        raise UserError(f"model file {str(path)!r} is empty: re-export or re-download it")
    try:
        # The protobuf first, the external data (models over 2 GB) after its files are
        # checked: onnx's own loader fails on a missing file with a message about
        # "regular files" that names no file a user can look for.
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"model file {str(path)!r} is not a readable ONNX model ({reason}): "
                        "check that the file is complete and is an ONNX protobuf") from None
    # Random bytes can parse as a protobuf with nonsense fields; a real model has an opset
    # import, a graph and a known IR version.
    if not model.opset_import or not model.graph.node or model.ir_version <= 0 \
            or model.ir_version > onnx.IR_VERSION:
        raise UserError(f"model file {str(path)!r} is not a valid ONNX model (no graph, opset or "
                        "IR version): check that the file is complete and is an ONNX protobuf")
    _load_external_data(model, path)
    return model


def _external_location(tensor: onnx.TensorProto) -> dict[str, str] | None:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return {entry.key: entry.value for entry in tensor.external_data}


def _load_external_data(model: ModelProto, path: Path) -> None:
    """Read the external data files, naming the file and tensor when one is missing, short or
    outside the model's directory (mutation tests: deleted and truncated data files)."""
    from onnx.external_data_helper import load_external_data_for_model

    base = path.parent
    external = False
    for tensor in _all_initializers(model.graph):
        info = _external_location(tensor)
        if info is None:
            continue
        external = True
        location = info.get("location", "")
        file = base / location
        where = f"external data file {location!r} of tensor {tensor.name!r}"
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise UserError(f"model {str(path)!r}: {where} is not a file name relative to the "
                            "model's directory")
        if not file.is_file():
            raise UserError(f"model {str(path)!r}: {where} does not exist next to the model "
                            f"(expected {str(file)!r}): copy it along with the .onnx file")
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise UserError(f"model {str(path)!r}: {where} has a non-numeric offset or length"
                            ) from None
        size = file.stat().st_size
        if offset < 0 or (length is not None and length < 0) \
                or offset + (length or 0) > size:
            raise UserError(f"model {str(path)!r}: {where} is {size} bytes, but the tensor's "
                            f"data is at bytes {offset}..{offset + (length or 0)}: the file is "
                            "truncated or belongs to another export")
    if not external:
        return
    try:
        load_external_data_for_model(model, str(base))
    except (onnx.checker.ValidationError, ValueError, OSError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"model {str(path)!r}: cannot read its external data ({reason})"
                        ) from None


def _all_initializers(graph: onnx.GraphProto):
    """The initializers of `graph` and of every subgraph."""
    yield from graph.initializer
    for sub in iter_subgraphs(graph):
        yield from sub.initializer


# Limits on a static dim and on a tensor's elements: no device holds more, and a dim this
# large is a corrupt file or a typo (the probe run and the planners would try to use it).
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**40
_ELEM_BYTES = {TensorProto.FLOAT: 4, TensorProto.UINT8: 1, TensorProto.INT8: 1,
               TensorProto.UINT16: 2, TensorProto.INT16: 2, TensorProto.INT32: 4,
               TensorProto.INT64: 8, TensorProto.BOOL: 1, TensorProto.FLOAT16: 2,
               TensorProto.DOUBLE: 8, TensorProto.UINT32: 4, TensorProto.UINT64: 8,
               TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16, TensorProto.BFLOAT16: 2,
               TensorProto.FLOAT8E4M3FN: 1, TensorProto.FLOAT8E4M3FNUZ: 1,
               TensorProto.FLOAT8E5M2: 1, TensorProto.FLOAT8E5M2FNUZ: 1}
_NIBBLE_TYPES = {TensorProto.INT4, TensorProto.UINT4}


def _check_initializers(model: ModelProto, path: Path) -> None:
    """Every initializer has a known dtype, sane dims and exactly the bytes they need.

    Checked here rather than left to the ONNX checker at the end: the checker sees the
    weights only when the file is written, where a corrupt weight would read as mapper's
    bug (exit 1), and it never sees weights over 2 GB at all.
    """
    known = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
    for tensor in _all_initializers(model.graph):
        where = f"model {str(path)!r}: initializer {tensor.name!r}"
        if tensor.data_type not in known:
            raise UserError(f"{where} has an invalid data type ({tensor.data_type})")
        dims = list(tensor.dims)
        if any(d < 0 for d in dims) or any(d > MAX_DIM for d in dims):
            raise UserError(f"{where} has an impossible shape {dims} (every dim must be from 0 "
                            f"to {MAX_DIM})")
        count = 1
        for d in dims:
            count *= d
        if count > MAX_ELEMENTS:
            raise UserError(f"{where} has {count} elements (shape {dims}), more than any "
                            "device holds")
        if tensor.data_location == TensorProto.EXTERNAL or tensor.data_type == TensorProto.STRING:
            continue
        dtype = onnx.helper.tensor_dtype_to_string(tensor.data_type).removeprefix("TensorProto.")
        if tensor.HasField("raw_data"):
            if tensor.data_type in _NIBBLE_TYPES:
                need = (count + 1) // 2
            elif tensor.data_type in _ELEM_BYTES:
                need = count * _ELEM_BYTES[tensor.data_type]
            else:
                continue
            if len(tensor.raw_data) != need:
                raise UserError(f"{where} holds {len(tensor.raw_data)} bytes, but its shape "
                                f"{dims} and type {dtype} need {need}: the file is corrupt")
        else:
            held = max(len(tensor.float_data), len(tensor.int32_data), len(tensor.int64_data),
                       len(tensor.double_data), len(tensor.uint64_data))
            if held and held not in (count, count * 2) and tensor.data_type not in _NIBBLE_TYPES:
                raise UserError(f"{where} holds {held} values, but its shape {dims} needs "
                                f"{count}: the file is corrupt")


def _has_shape(info: onnx.ValueInfoProto) -> bool:
    return (info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape")) \
        or info.type.WhichOneof("value") not in (None, "tensor_type")


def _fill_output_types(light: ModelProto) -> None:
    """Graph outputs declared without a type or shape (valid for mapper, which infers them,
    but not for the checker): given their inferred type, or left out of the check."""
    graph = light.graph
    if all(_has_shape(out) for out in graph.output):
        return
    try:
        inferred = {out.name: out for out in onnx.shape_inference.infer_shapes(
            light, check_type=False, strict_mode=False).graph.output}
    except Exception:
        inferred = {}
    kept = []
    for out in graph.output:
        if not _has_shape(out) and out.name in inferred and _has_shape(inferred[out.name]):
            out.type.CopyFrom(inferred[out.name].type)
        if _has_shape(out):
            kept.append(out)
    del graph.output[:]
    graph.output.extend(kept)


def _check_with_onnx(model: ModelProto, path: Path) -> None:
    """The ONNX checker, with its strict type and shape inference, on the model as the user
    gave it (weights left out, so that large models cost nothing): what fails here is the
    input's fault and exits 2 naming the node or tensor; left for the checker that runs on
    the optimized model, it would read as a bug in mapper."""
    light, _ = weightless_copy(model)
    _fill_output_types(light)
    if not light.graph.output:
        return
    try:
        onnx.checker.check_model(light, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError,
            TypeError, RuntimeError) as error:  # ValueError: e.g. an UNDEFINED element type
        text = " ".join(str(error).split())
        raise UserError(f"model {str(path)!r} is not a valid ONNX model: {text[:500]}"
                        ) from None
    except UnicodeDecodeError:  # the checker's message quotes a name that is not UTF-8
        raise UserError(f"model {str(path)!r} is not a valid ONNX model: the ONNX checker "
                        "rejects it, and the name it reports is not valid UTF-8 text (a "
                        "corrupt file)") from None


def _default_opset(model: ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None


def _check_structure(model: ModelProto, path: Path) -> None:
    """Reject cycles and dangling inputs with the names involved; re-sort unsorted graphs."""
    graph = model.graph

    def label(index: int) -> str:
        node = graph.node[index]
        return node.name or f"#{index} ({node.op_type})"

    _check_unique_names(graph, path, label)
    produced: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for output in node.output:
            if output:
                produced[output] = index
    known = set(graph_input_names(graph)) | {init.name for init in graph.initializer}
    known |= {init.name for init in graph.sparse_initializer}
    dag = nx.DiGraph()
    for index, node in enumerate(graph.node):
        dag.add_node(index)
        for name in node_reads(node):
            if name in produced:
                dag.add_edge(produced[name], index)
            elif name not in known and name in node.input:
                raise UserError(f"model {str(path)!r}: node {label(index)} reads tensor {name!r} "
                                "that no node, input or initializer provides")
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = " -> ".join([label(edge[0]) for edge in cycle] + [label(cycle[0][0])])
        raise UserError(f"model {str(path)!r}: the graph has a cycle ({names}); an ONNX graph must "
                        "be acyclic, so fix the exporter or the edit that made it")
    topological_sort(graph)


def _check_unique_names(graph: onnx.GraphProto, path: Path, label) -> None:
    """A tensor has one source: one producing node, or one graph input or initializer of that
    name (SSA). Two sources make every later stage wrong in its own way (a plan that reads a
    tensor before it exists, an initializer that shadows another), so name them here. Node
    names may repeat: the loader renames the later ones."""
    sources: dict[str, str] = {}

    def claim(name: str, what: str) -> None:
        if not name:
            return
        if name in sources:
            raise UserError(f"model {str(path)!r}: tensor {name!r} is defined twice "
                            f"({sources[name]} and {what}); every tensor name must be defined "
                            "once")
        sources[name] = what

    initializers = {init.name for init in graph.initializer}
    for init in graph.initializer:
        claim(init.name, "an initializer")
    for init in graph.sparse_initializer:
        claim(init.values.name, "a sparse initializer")
    for inp in graph.input:
        if inp.name not in initializers:  # IR < 4 lists weights as inputs too: allowed
            claim(inp.name, "a graph input")
    for index, node in enumerate(graph.node):
        for output in node.output:
            claim(output, f"an output of node {label(index)}")


def _repair_ir3(model: ModelProto, notes: list[str]) -> None:
    """IR < 4: drop initializer-backed graph inputs so the weights are constants, raise the IR."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    shadowed = [inp for inp in graph.input if inp.name in initializers]
    if model.ir_version < 4 or shadowed:
        # Inputs that shadow initializers are weights in every exporter we have seen; keeping
        # them as inputs would block folding and make users feed them.
        kept = [inp for inp in graph.input if inp.name not in initializers]
        del graph.input[:]
        graph.input.extend(kept)
        if shadowed:
            notes.append(f"{len(shadowed)} weight(s) listed as graph inputs became constants")
    if model.ir_version < 4:
        notes.append(f"IR version {model.ir_version} raised so initializers are visible to shape "
                     "inference")
        model.ir_version = 4


def upgrade_opset(model: ModelProto, target: int, notes: list[str]) -> ModelProto:
    """The model at default-domain opset `target` when it is below (ONNX version converter,
    run without the big weights); unchanged, with a note, when the converter cannot."""
    version = _default_opset(model)
    if version is None or version >= target:
        return model  # nothing of the default domain to upgrade (e.g. ai.onnx.ml only)
    light, heavy_names = weightless_copy(model)
    try:
        upgraded = onnx.version_converter.convert_version(light, target)
    except Exception as error:  # the converter raises bare RuntimeErrors for unsupported ops
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        notes.append(f"opset {version} kept: the ONNX version converter could not upgrade it "
                     f"({reason[:160]})")
        return model
    notes.append(f"opset {version} upgraded to {target}")
    # The converter saw the big weights as typed inputs only: move its graph into `model`,
    # around the weights that never left it.
    graph, converted = model.graph, upgraded.graph
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in heavy_names:
            del graph.initializer[index]
    graph.initializer.extend(converted.initializer)
    for field_name in ("node", "input", "output", "value_info"):
        target = getattr(graph, field_name)
        del target[:]
        target.extend(item for item in getattr(converted, field_name)
                      if field_name != "input" or item.name not in heavy_names)
    del model.opset_import[:]
    model.opset_import.extend(upgraded.opset_import)
    model.ir_version = max(upgraded.ir_version, model.ir_version, 8)
    return model


def _fix_dynamic_dims(model: ModelProto, spec: ShapeSpec) -> dict[str, list[int]]:
    """Bake user-given dims into the graph inputs; list every unresolved dim if any remain."""
    graph = model.graph
    inputs = {inp.name: inp for inp in graph.input}
    for name in spec.input_shapes:
        if name not in inputs:
            raise UserError(f"--input-shape names {name!r}, which is not an input of the model; "
                            f"its inputs are: {', '.join(inputs) or '(none)'}")
    named_dims: set[str] = set()
    unresolved: list[str] = []
    resolved: dict[str, list[int]] = {}
    for inp in graph.input:
        if not inp.type.HasField("tensor_type"):
            kind = inp.type.WhichOneof("value")
            raise UserError(f"graph input {inp.name!r} is not a tensor ({kind}): mapper plans "
                            "tensor graphs only")
        tensor_type = inp.type.tensor_type
        if not tensor_type.HasField("shape"):
            if inp.name not in spec.input_shapes:
                unresolved.append(f"input {inp.name!r} has no shape at all "
                                  f"(set it with --input-shape {inp.name}=D0xD1x...)")
                continue
            tensor_type.shape.SetInParent()
            for _ in spec.input_shapes[inp.name]:
                tensor_type.shape.dim.add()
        dims = tensor_type.shape.dim
        given = spec.input_shapes.get(inp.name)
        if given is not None and len(given) != len(dims):
            raise UserError(f"--input-shape {inp.name}: the model's input has rank {len(dims)}, "
                            f"but {len(given)} dims were given")
        shape: list[int] = []
        for axis, dim in enumerate(dims):
            if dim.dim_param:
                named_dims.add(dim.dim_param)
            static = dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
            value = None
            if given is not None:
                value = given[axis]
                if static is not None and static != value:
                    raise UserError(f"--input-shape {inp.name}: dim {axis} is fixed to {static} in "
                                    f"the model, but {value} was given")
            elif static is not None:
                value = static
            elif dim.dim_param and dim.dim_param in spec.dims:
                value = spec.dims[dim.dim_param]
            if value is None:
                label = f"'{dim.dim_param}'" if dim.dim_param else "unnamed"
                if dim.HasField("dim_value"):  # 0 or negative: not a size, treated as unknown
                    label = f"size {dim.dim_value} in the model, not a valid size"
                hint = f"--dim {dim.dim_param}=<size> or " if dim.dim_param else ""
                unresolved.append(f"input {inp.name!r} dim {axis} ({label}): set it with "
                                  f"{hint}--input-shape {inp.name}=...")
                continue
            if value > MAX_DIM:
                raise UserError(f"input {inp.name!r} dim {axis} is {value}, more than the "
                                f"{MAX_DIM} any runtime indexes: a corrupt model or a typo")
            shape.append(value)
        elements = 1
        for value in shape:
            elements *= value
        if elements > MAX_ELEMENTS:
            raise UserError(f"input {inp.name!r} of shape {shape} has {elements} elements, more "
                            "than any device holds")
        resolved[inp.name] = shape
    unknown_dims = sorted(set(spec.dims) - named_dims)
    if unknown_dims:
        raise UserError(f"--dim {', '.join(unknown_dims)}: no input dim has that name; the named "
                        f"dims are: {', '.join(sorted(named_dims)) or '(none)'}")
    if unresolved:
        raise UserError("the model has dynamic dims that must be fixed:\n  "
                        + "\n  ".join(unresolved))
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        for dim, value in zip(dims, resolved[inp.name], strict=True):
            dim.Clear()
            dim.dim_value = value
    # Named dims also appear on outputs; substitute them so inference meets no contradiction,
    # and drop other symbolic output dims for inference to fill.
    user_dims = dict(spec.dims)
    for out in graph.output:
        if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
            for dim in out.type.tensor_type.shape.dim:
                if dim.dim_param:
                    value = user_dims.get(dim.dim_param)
                    dim.Clear()
                    if value is not None:
                        dim.dim_value = value
    del graph.value_info[:]
    return resolved


def _name_nodes(model: ModelProto) -> None:
    """Give every node, in every subgraph, a unique non-empty name (kept where already unique)."""
    graphs = [model.graph, *iter_subgraphs(model.graph)]
    seen: set[str] = set()
    pending = []
    for graph in graphs:
        for node in graph.node:
            if node.name and node.name not in seen:
                seen.add(node.name)
            else:
                pending.append(node)
    counters: dict[str, int] = {}
    for node in pending:
        base = node.op_type or "node"
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}_{counters[base]}"
            if candidate not in seen:
                break
        node.name = candidate
        seen.add(candidate)


def _drop_subgraph_value_info(model: ModelProto) -> None:
    """Subgraph shape annotations are optional, and stale ones (inferred before the dims were
    fixed, or wrongly by the converter's inference) make onnxruntime reject the model."""
    for sub in iter_subgraphs(model.graph):
        del sub.value_info[:]


def normalize(model: ModelProto, input_shapes: dict[str, list[int]], notes: list[str],
              probe_inputs: Mapping[str, np.ndarray] | None = None) -> ModelProto:
    """The normal form every pass works on: constants folded (never decoding quantized
    weights), a static shape for every tensor, nodes in topological order, every node named.
    The loader ends with it, and every model a rewriting pass returns goes through it."""
    model = fold_constants(model, notes)
    model = infer_static_shapes(model, input_shapes, notes, probe_inputs)
    topological_sort(model.graph)
    _name_nodes(model)  # last: the version converter adds nodes without names
    return model


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the model file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | Path, spec: ShapeSpec | None = None,
               probe_inputs: Mapping[str, np.ndarray] | None = None) -> LoadedModel:
    """Read, repair and normalize an ONNX model into a static, folded, named, sorted graph.

    `probe_inputs` (one sample per input) feed the onnxruntime run that measures shapes ONNX
    inference cannot know; without them zeros are used.
    """
    spec = spec or ShapeSpec()
    path = Path(path)
    model = _read(path)
    notes: list[str] = []
    _check_structure(model, path)
    _check_initializers(model, path)
    _repair_ir3(model, notes)
    # Upgrade while dims are still symbolic: the converter runs ONNX shape inference, which
    # with fixed dims writes wrong shapes into some If branches (Silero VAD's LSTM).
    model = upgrade_opset(model, MIN_OPSET, notes)
    _drop_subgraph_value_info(model)
    input_shapes = _fix_dynamic_dims(model, spec)
    _check_with_onnx(model, path)
    model = normalize(model, input_shapes, notes, probe_inputs)
    for note in notes:
        log.info("load: %s", note)
    return LoadedModel(model=model, source_path=path, sha256=file_sha256(path),
                       input_shapes=input_shapes, notes=tuple(notes))
