"""`mapper verify`: run the original and the optimized model in onnxruntime and compare outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto

from mapper.errors import UserError
from mapper.onnx_utils import np_dtype


@dataclass(frozen=True)
class OutputComparison:
    """Agreement of one output: max |a-b|, that over max |reference|, and cosine similarity."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    ok: bool


@dataclass(frozen=True)
class VerifyResult:
    """Every output's comparison; `ok` when all are within tolerance."""

    outputs: tuple[OutputComparison, ...]
    inputs_source: str
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        """True when every output agrees within rtol/atol."""
        return all(output.ok for output in self.outputs)


def _session(model: ModelProto | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        name = str(model) if isinstance(model, Path) else "model"
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise UserError(f"onnxruntime cannot load {name}: {first}") from None


def _index_bounds(model: ModelProto) -> dict[str, int]:
    """Integer inputs used as Gather indices (token ids): the valid range is the table's rows."""
    constants = {init.name: tuple(init.dims) for init in model.graph.initializer}
    inputs = {inp.name for inp in model.graph.input}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in inputs:
            table = constants.get(node.input[0])
            if table:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                rows = table[axis]
                bounds[node.input[1]] = min(bounds.get(node.input[1], rows), rows)
    return bounds


def _input_shape(inp: onnx.ValueInfoProto, input_shapes: Mapping[str, tuple[int, ...]],
                 dims: Mapping[str, int]) -> tuple[int, ...]:
    if inp.name in input_shapes:
        return tuple(input_shapes[inp.name])
    shape = []
    for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif dim.dim_param in dims:
            shape.append(dims[dim.dim_param])
        else:
            raise UserError(f"input {inp.name!r} dim {axis} is dynamic: give --input-shape "
                            f"{inp.name}=... or --dim {dim.dim_param or 'NAME'}=N, or --inputs")
    return tuple(shape)


def random_inputs(model: ModelProto, seed: int = 0,
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                  dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs valid for the model: normal floats, in-range ids, all-ones masks."""
    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    initializers = {init.name for init in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        shape = _input_shape(inp, input_shapes or {}, dims or {})
        dtype = np_dtype(inp.type.tensor_type.elem_type)
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[inp.name] = rng.random(shape) < 0.5
        elif inp.name in bounds:
            feeds[inp.name] = rng.integers(0, bounds[inp.name], shape).astype(dtype)
        elif "mask" in inp.name.lower():
            feeds[inp.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    """Inputs from an .npz (one array per graph input name)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read inputs file {str(path)!r}: {error}") from None


def as_array(value: object) -> np.ndarray:
    """An output as a numeric array: sequences of maps (ai.onnx.ml ZipMap) become a table."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return np.array([[row[key] for key in sorted(row)] for row in value])
    return np.asarray(value)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, rtol: float, atol: float
                    ) -> tuple[float, float, float, bool]:
    """max_abs, max_rel (over max |reference|), cosine and within-tolerance of two arrays."""
    if reference.shape != candidate.shape:
        return float("inf"), float("inf"), 0.0, False
    ref = reference.astype(np.float64).ravel()
    got = candidate.astype(np.float64).ravel()
    if ref.size == 0:
        return 0.0, 0.0, 1.0, True
    diff = np.abs(ref - got)
    max_abs = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf")
    scale = float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    norms = float(np.linalg.norm(ref) * np.linalg.norm(got))
    if norms > 0:
        cosine = float(np.dot(ref, got) / norms)
    else:
        cosine = 1.0 if float(np.linalg.norm(ref - got)) == 0 else 0.0
    ok = bool(np.allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True))
    return max_abs, max_rel, cosine, ok


def verify_models(original: Path, optimized: Path, *, inputs: Path | None = None, seed: int = 0,
                  rtol: float = 1e-3, atol: float = 1e-4,
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                  dims: Mapping[str, int] | None = None) -> VerifyResult:
    """Run both models on the same inputs and compare every output of the original."""
    for path in (original, optimized):
        if not path.is_file():
            raise UserError(f"model file {str(path)!r} does not exist")
    reference_session = _session(original)
    candidate_session = _session(optimized)
    if inputs is not None:
        feeds = load_inputs(inputs)
        source = str(inputs)
    else:
        try:
            shape_model = onnx.load(str(optimized), load_external_data=False)
        except Exception as error:
            raise UserError(f"cannot read {str(optimized)!r}: {error}") from None
        feeds = random_inputs(shape_model, seed, input_shapes, dims)
        source = f"random (seed {seed})"
    wanted = {i.name for i in reference_session.get_inputs()}
    candidate_inputs = {i.name for i in candidate_session.get_inputs()}
    if wanted != candidate_inputs:
        only_original = sorted(wanted - candidate_inputs)
        only_optimized = sorted(candidate_inputs - wanted)
        raise UserError(
            "the two models take different inputs: "
            + "; ".join(part for part in (
                f"only {str(original)!r} has {', '.join(only_original)}" if only_original
                else "", f"only {str(optimized)!r} has {', '.join(only_optimized)}"
                if only_optimized else "") if part)
            + " (verify compares a model with its own optimized version)")
    missing = [name for name in (i.name for i in candidate_session.get_inputs())
               if name not in feeds]
    if missing:
        raise UserError(f"no values for input(s) {', '.join(missing)}: the inputs file must hold "
                        "one array per graph input")
    reference_feeds = {k: v for k, v in feeds.items() if k in wanted}
    candidate_names = {i.name for i in candidate_session.get_inputs()}
    candidate_feeds = {k: v for k, v in feeds.items() if k in candidate_names}
    try:
        reference = reference_session.run(None, reference_feeds)
        candidate = candidate_session.run(None, candidate_feeds)
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise UserError(f"onnxruntime failed to run the models on these inputs: {first}") from None
    candidate_by_name = dict(zip((o.name for o in candidate_session.get_outputs()), candidate,
                                 strict=True))
    comparisons = []
    for meta, value in zip(reference_session.get_outputs(), reference, strict=True):
        got = candidate_by_name.get(meta.name)
        if got is None:
            raise UserError(f"the optimized model has no output {meta.name!r}")
        reference_array, candidate_array = as_array(value), as_array(got)
        max_abs, max_rel, cosine, ok = compare_outputs(reference_array, candidate_array, rtol,
                                                       atol)
        comparisons.append(OutputComparison(meta.name, tuple(reference_array.shape), max_abs,
                                            max_rel, cosine, ok))
    return VerifyResult(tuple(comparisons), source, rtol, atol)

