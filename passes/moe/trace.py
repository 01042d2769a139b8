"""Routing traces: load `--trace routes.npz`, or collect one by running the model in onnxruntime.

A trace is `routes[layer, token, i]`: the i-th of the k experts token t is routed to at MoE
layer l (CONTRACTS.md section 5). Serving engines usually return `[tokens, layers, k]`;
`layout="tokens-first"` reads that. Collection adds every router TopK's indices output to
the graph outputs and runs the model on calibration inputs (`--calib`) or generated ones
(token ids drawn in the embedding's range, other inputs neutral), then stacks the tokens.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper

from mapper.calibration import read_npz
from mapper.errors import UserError
from mapper.onnx_utils import np_dtype

TraceLayout = Literal["layers-first", "tokens-first"]


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    """A validated `[layers, tokens, k]` int64 trace and where it came from."""

    routes: np.ndarray
    num_experts: int
    source: str

    @property
    def num_layers(self) -> int:
        """MoE layers in the trace."""
        return int(self.routes.shape[0])

    @property
    def tokens(self) -> int:
        """Tokens per layer."""
        return int(self.routes.shape[1])

    @property
    def top_k(self) -> int:
        """Experts per token."""
        return int(self.routes.shape[2])


def validate_routes(routes: np.ndarray, num_experts: int, num_devices: int | None,
                    where: str) -> np.ndarray:
    """The routes as int64 `[layers, tokens, k]`, or a UserError naming what is wrong."""
    if routes.ndim != 3:
        raise UserError(f"{where}: 'routes' must have 3 dims [layers, tokens, k] (or [tokens, "
                        f"layers, k] with --trace-layout tokens-first), got shape "
                        f"{list(routes.shape)}")
    if not np.issubdtype(routes.dtype, np.integer):
        raise UserError(f"{where}: 'routes' must hold integer expert ids, got dtype "
                        f"{routes.dtype}")
    layers, tokens, top_k = routes.shape
    if min(layers, tokens, top_k) == 0:
        raise UserError(f"{where}: 'routes' is empty (shape {list(routes.shape)}); it needs at "
                        "least one layer, one token and one expert per token")
    if num_experts < 1:
        raise UserError(f"{where}: num_experts must be >= 1, got {num_experts}")
    low, high = int(routes.min()), int(routes.max())
    if low < 0 or high >= num_experts:
        raise UserError(f"{where}: expert ids out of range: 'routes' holds ids from {low} to "
                        f"{high}, but there are {num_experts} experts (ids 0..{num_experts - 1});"
                        " fix the trace or give the right number of experts")
    if top_k > num_experts:
        raise UserError(f"{where}: k = {top_k} routes per token exceed the {num_experts} "
                        "experts: is the layout right (--trace-layout)?")
    if num_devices is not None and num_experts % num_devices:
        raise UserError(f"{where}: {num_experts} experts cannot be split evenly over "
                        f"{num_devices} devices: --devices must divide the number of experts "
                        "(every device holds exactly E/G experts of each layer)")
    if tokens < num_experts:
        raise UserError(f"{where}: fewer tokens ({tokens}) than experts ({num_experts}) per "
                        "layer: the trace is too short to measure expert loads; collect at "
                        "least as many tokens as experts")
    return routes.astype(np.int64, copy=False)


def load_trace(path: Path, *, layout: TraceLayout = "layers-first",
               num_experts: int | None = None, num_devices: int | None = None) -> RoutingTrace:
    """Read and validate a routes .npz: array `routes`, optional scalar `num_experts`.

    The number of experts is, in order: the `num_experts` argument, the file's scalar, or
    the largest id + 1 (which undercounts experts no token reached: say so in the file).
    """
    where = f"trace {str(path)!r}"
    arrays = read_npz(path, where)
    if "routes" not in arrays:
        raise UserError(f"{where} has no array 'routes' (found: "
                        f"{', '.join(sorted(arrays)) or 'nothing'}); save the TopK expert ids as "
                        "routes[layers, tokens, k]")
    routes = arrays["routes"]
    if layout == "tokens-first" and routes.ndim == 3:
        routes = routes.transpose(1, 0, 2)
    if num_experts is None and "num_experts" in arrays:
        stored = arrays["num_experts"]
        if stored.size != 1 or not np.issubdtype(stored.dtype, np.integer):
            raise UserError(f"{where}: 'num_experts' must be one integer, got "
                            f"{stored.dtype} of shape {list(stored.shape)}")
        num_experts = int(stored.reshape(()))
    if num_experts is None:
        if routes.ndim != 3 or routes.size == 0 or not np.issubdtype(routes.dtype, np.integer):
            validate_routes(routes, 1, None, where)  # reports the dims/dtype problem
        num_experts = int(routes.max()) + 1
    routes = validate_routes(routes, num_experts, num_devices, where)
    return RoutingTrace(routes=np.ascontiguousarray(routes), num_experts=num_experts,
                        source=str(path))


# --- collection in onnxruntime ---------------------------------------------------------------


def _with_outputs(model: ModelProto, names: Sequence[str]) -> ModelProto:
    """A copy of `model` that also returns the tensors `names` (int64 TopK indices)."""
    copy = ModelProto()
    copy.CopyFrom(model)
    present = {out.name for out in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, None))
    return copy


def _vocab_sizes(model: ModelProto) -> dict[str, int]:
    """Integer graph inputs used as Gather indices into a weight: input -> rows of that weight."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in weights:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = weights[node.input[0]]
            if dims:
                sizes.setdefault(node.input[1], int(dims[axis]))
    return sizes


def generated_inputs(model: ModelProto, samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded stand-in inputs: token ids in the embedding's range, masks of ones, N(0, 1) floats.

    Routing of random ids through a trained router is not real traffic; `--calib` with real
    samples or `--trace` from a serving engine should be preferred when available.
    """
    rng = np.random.default_rng(seed)
    vocab = _vocab_sizes(model)
    initializers = {init.name for init in model.graph.initializer}
    feeds: list[dict[str, np.ndarray]] = []
    for _ in range(samples):
        feed: dict[str, np.ndarray] = {}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            shape = tuple(d.dim_value for d in tensor.shape.dim)
            dtype = np_dtype(tensor.elem_type)
            if value.name in vocab:
                feed[value.name] = rng.integers(0, vocab[value.name], size=shape).astype(dtype)
            elif np.issubdtype(dtype, np.floating):
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
            elif "mask" in value.name.lower() or dtype == np.bool_:
                feed[value.name] = np.ones(shape, dtype=dtype)
            else:
                feed[value.name] = np.zeros(shape, dtype=dtype)
        feeds.append(feed)
    return feeds


def calibration_inputs(arrays: Mapping[str, np.ndarray], model: ModelProto
                       ) -> list[dict[str, np.ndarray]]:
    """Per-sample feeds from a `--calib` file (samples on the leading axis)."""
    initializers = {init.name for init in model.graph.initializer}
    wanted = [v.name for v in model.graph.input if v.name not in initializers]
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise UserError(f"calibration file lacks the graph input(s) {', '.join(missing)} needed "
                        "to collect routing traces")
    count = next(iter(arrays.values())).shape[0]
    return [{name: np.asarray(arrays[name][i]) for name in wanted} for i in range(count)]


def collect_trace(model: ModelProto, indices: Sequence[str], num_experts: int,
                  feeds: Sequence[Mapping[str, np.ndarray]], source: str) -> RoutingTrace:
    """Run `model` on every feed and stack each layer's TopK `indices` into `[L, tokens, k]`."""
    import onnxruntime as ort

    traced = _with_outputs(model, indices)
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="mapper-moe-") as tmp:
        path = Path(tmp) / "traced.onnx"
        big = traced.ByteSize() >= 2**31 - 1
        onnx.save(traced, str(path), save_as_external_data=big,
                  all_tensors_to_one_file=True, location="traced.onnx.data")
        try:
            session = ort.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as error:
            raise UserError(f"onnxruntime cannot run the model to collect routing traces "
                            f"({str(error).strip().splitlines()[0][:300]}); give a trace with "
                            "--trace routes.npz instead") from None
        per_layer: list[list[np.ndarray]] = [[] for _ in indices]
        for feed in feeds:
            try:
                outputs = session.run(list(indices), dict(feed))
            except Exception as error:
                raise UserError(
                    f"onnxruntime failed on the routing-trace inputs "
                    f"({str(error).strip().splitlines()[0][:300]}); models with data-dependent "
                    "shapes (sparse expert dispatch through NonZero) run only on the input "
                    "their shapes were measured with: give a trace with --trace routes.npz"
                ) from None
            for layer, value in enumerate(outputs):
                value = np.asarray(value)
                per_layer[layer].append(value.reshape(-1, value.shape[-1]))
    stacked = [np.concatenate(chunks) for chunks in per_layer]
    if len({chunk.shape for chunk in stacked}) != 1:
        shapes = ", ".join(str(list(chunk.shape)) for chunk in stacked)
        raise UserError(f"the MoE layers route different token counts ({shapes}); a trace "
                        "needs the same tokens at every layer: give one with --trace")
    routes = np.stack(stacked)
    return RoutingTrace(routes=validate_routes(routes, num_experts, None, source),
                        num_experts=num_experts, source=source)
