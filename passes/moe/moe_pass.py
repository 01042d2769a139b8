"""The `moe` pass: expert placement for MoE models compiled with `--devices N` (N > 1).

Detects the MoE layers, gets a routing trace (`--trace`, or one collected in onnxruntime on
`--calib` inputs or generated token ids), places the experts (MoETuner, `place.py`) and
writes `plan.moe`. The per-forward all-to-all time it reports (`metrics.alltoall_s`) is
added to the latency estimate by the estimate pass.
"""

from __future__ import annotations

from onnx import ModelProto

from mapper.calibration import calibration_feeds, generated_inputs, load_calibration
from mapper.errors import UserError
from mapper.facts import AllToAll, Facts
from mapper.passes.moe.cost import CostModel, cost_model
from mapper.passes.moe.detect import Detection, MoeLayer, detect_moe_layers
from mapper.passes.moe.place import PlaceOptions
from mapper.passes.moe.section import solve_section
from mapper.passes.moe.trace import (
    RoutingTrace,
    collect_trace,
    load_trace,
)
from mapper.pipeline import Pass, PassContext, PassResult, SolverRecord

_ELEMENT_BYTES = {"fp64": 8.0, "fp32": 4.0, "tf32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0,
                  "int8": 1.0, "int16": 2.0, "int4": 0.5}


class MoePass(Pass):
    """MoETuner expert placement across devices from routing traces (CONTRACTS.md section 5)."""

    name = "moe"
    description = ("expert placement of MoE layers across --devices N (MoETuner: balanced "
                   "clusters, cluster-to-device assignment, CP-SAT)")
    writes = ("moe",)
    provides = ("alltoall",)
    config_field = "moe"

    def __init__(self) -> None:
        # skip_reason and run see the same model: detect once. The model itself is the key
        # (held, so its id cannot be reused by a later model: keyed by id(), a stale
        # detection from an earlier compile in the same process was once reused), and the
        # entry is dropped once run has it or the pass is skipped.
        self._cache: tuple[ModelProto, Detection] | None = None

    def _detect(self, context: PassContext) -> Detection:
        if self._cache is None or self._cache[0] is not context.model:
            self._cache = (context.model, detect_moe_layers(context.model, context.view))
        return self._cache[1]

    def skip_reason(self, context: PassContext) -> str | None:
        """Skipped without --devices N > 1, or when the model has no MoE layer."""
        devices = context.options.moe.devices
        if devices is None or devices < 2:
            return "expert placement needs --devices N with N > 1"
        detection = self._detect(context)
        if not detection.layers:
            self._cache = None
            why = "; ".join(detection.rejected)
            return ("no MoE layer (router MatMul/Gemm -> Softmax -> TopK into expert "
                    "subgraphs) in the model" + (f" ({why})" if why else ""))
        return None

    def run(self, context: PassContext) -> PassResult:
        """Detect, trace, place, and write plan.moe."""
        config = context.options.moe
        layers = self._detect(context).layers
        self._cache = None
        first = layers[0]
        mixed = {(layer.num_experts, layer.top_k) for layer in layers}
        if len(mixed) > 1:
            raise UserError(f"the MoE layers differ in experts/top-k {sorted(mixed)}; plan.moe "
                            "describes one expert count and k for every layer")
        devices = int(config.devices or 1)
        if first.num_experts % devices:
            raise UserError(f"--devices {devices} does not divide the {first.num_experts} "
                            "experts per layer: every device must hold exactly E/G experts")
        per_node = config.devices_per_node or context.hardware.interconnect.devices_per_node
        trace = self._trace(context, layers)
        precision = context.options.precision
        dtype = first.token_dtype if precision == "model" else precision
        element = _ELEMENT_BYTES.get(dtype, first.token_element_bytes)
        # A what-if precision stores the expert weights in that dtype too.
        weight_bytes = first.expert_weight_bytes * element / first.token_element_bytes \
            if precision != "model" and first.token_element_bytes else first.expert_weight_bytes
        cost: CostModel = cost_model(
            context.hardware, hidden_size=first.hidden_size, dtype=dtype,
            element_bytes=element, tokens_per_forward=first.tokens, trace_tokens=trace.tokens,
            expert_flops_per_token=first.expert_flops_per_token,
            expert_weight_bytes=weight_bytes, experts_per_device=first.num_experts // devices)
        options = PlaceOptions(time_limit_s=context.options.time_limit_s,
                               seed=context.options.seed, method=config.method,
                               load_tolerance=config.load_tolerance, min_gain=config.min_gain)
        placed = solve_section(trace, num_devices=devices, devices_per_node=per_node,
                               hardware=context.hardware, cost=cost,
                               layer_names=[layer.name for layer in layers], options=options)
        section = placed.section
        for entry, layer in zip(section["layers"], layers, strict=True):
            entry["router"] = layer.router
            entry["topk"] = layer.topk
        result = placed.result
        metrics = section["metrics"]
        notes = (f"cross-device transitions {metrics['cross_device_fraction']:.3f} (contiguous "
                 f"{metrics['baselines']['contiguous']['cross_device_fraction']:.3f}, "
                 f"round-robin {metrics['baselines']['round_robin']['cross_device_fraction']:.3f})"
                 f", load max/mean {metrics['load_max_over_mean']:.3f} (EPLB "
                 f"{metrics['baselines']['eplb']['load_max_over_mean']:.3f}); "
                 f"{result.solver_status} for {result.scope}"
                 + (f", gap {100 * result.gap:.2f}% to the bound {result.bound:.0f}"
                    if result.gap is not None else ""),
                 f"{len(layers)} MoE layers x {first.num_experts} experts (top-{first.top_k}) on "
                 f"{devices} devices, {per_node} per node; trace: {trace.source}, "
                 f"{trace.tokens} tokens",
                 *result.notes)
        return PassResult(
            status="fallback" if result.fallback else "ok", sections={"moe": section},
            solver=SolverRecord("cp-sat", result.solver_status, float(result.objective),
                                result.bound, context.options.seed, scope=result.scope),
            notes=notes,
            facts=Facts(alltoall=AllToAll(seconds=float(metrics["alltoall_s"]))))

    def _trace(self, context: PassContext, layers: tuple[MoeLayer, ...]) -> RoutingTrace:
        config = context.options.moe
        first = layers[0]
        if config.trace is not None:
            trace = load_trace(config.trace, layout=config.trace_layout,
                               num_experts=first.num_experts, num_devices=config.devices)
            if trace.num_layers != len(layers) or trace.top_k != first.top_k:
                raise UserError(
                    f"trace {str(config.trace)!r} has {trace.num_layers} layers with k = "
                    f"{trace.top_k}, but the model has {len(layers)} MoE layers with top-"
                    f"{first.top_k} ({', '.join(layer.name for layer in layers)})")
            return trace
        if context.options.calib is not None:
            feeds = calibration_feeds(load_calibration(context.options.calib), context.model,
                                      "to collect routing traces")
            source = f"onnxruntime on {context.options.calib}"
        else:
            # At least as many tokens as experts, so that every load can be measured.
            samples = max(config.samples, -(-first.num_experts // max(first.tokens, 1)))
            feeds = generated_inputs(context.model, samples, context.options.seed)
            source = f"onnxruntime on {samples} generated inputs (seed {context.options.seed})"
        return collect_trace(context.model, [layer.indices for layer in layers],
                             first.num_experts, feeds, source)
