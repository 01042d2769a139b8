"""Routing traces: load `--trace routes.npz`, or collect one by running the model in onnxruntime.

A trace is `routes[layer, token, i]`: the i-th of the k experts token t is routed to at MoE
layer l (CONTRACTS.md section 5). Serving engines usually return `[tokens, layers, k]`;
`layout="tokens-first"` reads that. Collection adds every router TopK's indices output to
the graph outputs and runs the model on calibration inputs (`--calib`) or generated ones
(token ids drawn in the embedding's range, other inputs neutral), then stacks the tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from onnx import ModelProto

from mapper.calibration import Session, read_npz
from mapper.errors import UserError

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


def collect_trace(model: ModelProto, indices: Sequence[str], num_experts: int,
                  feeds: Sequence[Mapping[str, np.ndarray]], source: str) -> RoutingTrace:
    """Run `model` on every feed and stack each layer's TopK `indices` into `[L, tokens, k]`."""
    try:
        session = Session(model, taps=indices)
    except UserError as error:
        raise UserError(f"{error}; give a trace with --trace routes.npz instead") from None
    per_layer: list[list[np.ndarray]] = [[] for _ in indices]
    for feed in feeds:
        try:
            outputs = session.run(feed)
        except UserError as error:
            raise UserError(
                f"{error}: models with data-dependent shapes (sparse expert dispatch through "
                "NonZero) run only on the input their shapes were measured with: give a trace "
                "with --trace routes.npz") from None
        for layer, name in enumerate(indices):
            value = outputs[name]
            per_layer[layer].append(value.reshape(-1, value.shape[-1]))
    stacked = [np.concatenate(chunks) for chunks in per_layer]
    if len({chunk.shape for chunk in stacked}) != 1:
        shapes = ", ".join(str(list(chunk.shape)) for chunk in stacked)
        raise UserError(f"the MoE layers route different token counts ({shapes}); a trace "
                        "needs the same tokens at every layer: give one with --trace")
    routes = np.stack(stacked)
    return RoutingTrace(routes=validate_routes(routes, num_experts, None, source),
                        num_experts=num_experts, source=source)
