"""The compile driver: load -> analyze -> passes (one fixed list) -> emit; the CLI wraps it."""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import ModelProto

from mapper import budgets
from mapper.calibration import first_sample, load_calibration
from mapper.emit import save_model
from mapper.graph import GraphView
from mapper.hwmodels.loader import load_hardware, set_managed_capacity
from mapper.hwmodels.schema import Hardware
from mapper.loader import LoadedModel, ShapeSpec, load_model
from mapper.options import CompileOptions
from mapper.outputs import check_output_dir, write_output_dir
from mapper.passes.arena import ArenaPass
from mapper.passes.estimate import EstimatePass
from mapper.passes.gqsa import GqsaPass
from mapper.passes.lqlora import LqloraPass
from mapper.passes.memory import MemoryPass
from mapper.passes.moe import MoePass
from mapper.passes.rtn import RtnPass
from mapper.passes.simplify import SimplifyPass
from mapper.passes.tiling import TilingPass
from mapper.pipeline import (
    InternalError,
    Pass,
    PassContext,
    PipelineOutcome,
    ProgressHook,
    run_pipeline,
)
from mapper.plan import build_plan, dumps
from mapper.plan_schema import check_plan
from mapper.report import render_report

log = logging.getLogger(__name__)

# The pipeline, in its fixed order: compression (rtn | gqsa | lqlora) -> moe -> tiling ->
# memory -> arena, then the estimate that prices what they decided.
PIPELINE: tuple[Pass, ...] = (
    SimplifyPass(),
    RtnPass(),
    GqsaPass(),
    LqloraPass(),
    MoePass(),
    TilingPass(),
    MemoryPass(),
    ArenaPass(),
    EstimatePass(),
)


@dataclass(frozen=True)
class CompileResult:
    """What a compile produced: where, the plan, and the short summary the CLI prints."""

    output_dir: Path
    plan: dict[str, Any]
    summary: dict[str, Any]


def resolve_hardware(spec: str, options: CompileOptions) -> Hardware:
    """The hardware model with `--set` overrides and `--scratchpad` applied."""
    hardware = load_hardware(spec, options.hardware_overrides)
    if options.scratchpad is not None:
        hardware = set_managed_capacity(hardware, options.scratchpad)
    return hardware


def _reorder(model: ModelProto, order: tuple[str, ...]) -> ModelProto:
    """The model with its nodes stored in schedule order (in place: weights are not copied)."""
    by_name = {node.name: node for node in model.graph.node}
    nodes = [by_name[name] for name in order]
    copies = [type(node)() for node in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del model.graph.node[:]
    model.graph.node.extend(copies)
    return model


def _summary(plan: dict[str, Any], output_dir: Path, view: GraphView) -> dict[str, Any]:
    estimate = plan.get("estimate") or {}
    return {
        "output_dir": str(output_dir),
        "model": plan["model"]["path"],
        "hardware": plan["hardware"]["name"],
        "nodes": len(view.nodes),
        "flops": int(view.totals()["flops"]),
        "latency_s": estimate.get("latency_s"),
        "offchip_bytes": estimate.get("offchip_bytes"),
        "peak_device_bytes": estimate.get("peak_device_bytes"),
        "device_memory_bytes": estimate.get("device_memory_bytes"),
        "fits": estimate.get("fits"),
        "memory_fit": estimate.get("memory_fit"),
        "budgets": plan.get("budgets", []),
        "passes": [{"name": p["name"], "status": p["status"], "seconds": p["seconds"],
                    "notes": p["notes"]} for p in plan["passes"]],
        "files": {"model": str(output_dir / "model.onnx"), "plan": str(output_dir / "plan.json"),
                  "report": str(output_dir / "report.html")},
    }


def _check_runs(model_path: Path) -> None:
    """The contract promises a model onnxruntime (CPU) loads; check before anything lands."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Default optimization, as users load it: some failures only show once ORT inlines If.
    try:
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        first = str(error).strip().splitlines()[0][:400] if str(error).strip() else ""
        raise InternalError(f"onnxruntime cannot load the optimized model ({first}). This is a "
                            "bug or a limitation of mapper with this model: please report it "
                            "with the model and command") from error


@dataclass
class _Pending:
    """The optimized model until it is saved: held here alone, so that saving can let go of
    it (and of its weights) before onnxruntime loads the file to check it."""

    model: ModelProto | None


def _declare_inputs_as_loaded(model_path: Path, source_path: Path) -> list[str]:
    """Give the written model's graph inputs the dims its source file declared (symbolic or
    rank-less); returns the names of the inputs it changed. onnxruntime infers every If
    branch, taken or not, and some exporters' dead branches only type-check while the input
    is dynamic."""
    source = onnx.load(str(source_path), load_external_data=False)
    declared = {info.name: info for info in source.graph.input}
    model = onnx.load(str(model_path), load_external_data=False)
    changed = []
    for info in model.graph.input:
        original = declared.get(info.name)
        if original is not None and original.type != info.type:
            info.type.CopyFrom(original.type)
            changed.append(info.name)
    if changed:
        onnx.save(model, str(model_path))
    return changed


def _write_outputs(tmp: Path, pending: _Pending, plan: dict[str, Any],
                   artifacts: Mapping[str, bytes], source_path: Path) -> None:
    for name, data in artifacts.items():
        (tmp / name).write_bytes(data)
    model_path = tmp / "model.onnx"
    if pending.model is not None:
        save_model(pending.model, model_path)
        # The weights stay alive as long as the proto (upb frees a message whole): drop it,
        # or the check below holds them twice (ours and onnxruntime's).
        pending.model = None
        gc.collect()
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except Exception as error:
        raise InternalError(f"the optimized model fails the ONNX checker: {error}. This is a bug "
                            "in mapper: please report it with the model and command") from error
    try:
        _check_runs(model_path)
    except InternalError:
        # The plan holds for model.input_shapes either way; only the declaration relaxes.
        relaxed = _declare_inputs_as_loaded(model_path, source_path)
        if not relaxed:
            raise
        _check_runs(model_path)
        plan["model"]["inputs_as_declared"] = relaxed
        log.warning("onnxruntime rejects the optimized model with static input dims; "
                    "inputs %s keep the dims the source file declared (the plan holds for "
                    "model.input_shapes)", ", ".join(relaxed))
    (tmp / "plan.json").write_text(dumps(plan))
    (tmp / "report.html").write_text(render_report(plan))


def load_for(model_path: str | Path, options: CompileOptions) -> LoadedModel:
    """The model loaded as a compile with `options` loads it (shapes, calibration probe)."""
    calibration = load_calibration(options.calib) if options.calib is not None else None
    return load_model(model_path, ShapeSpec(options.input_shapes, options.dims),
                      first_sample(calibration) if calibration else None)


def plan_loaded(loaded: LoadedModel, hardware: Hardware, options: CompileOptions,
                model_path: str, progress: ProgressHook | None = None
                ) -> tuple[dict[str, Any], PipelineOutcome]:
    """Run the pipeline on an already loaded model; the plan and the pipeline's outcome."""
    sparse = hardware.compute.group_sparse_kernels
    view = GraphView.from_model(loaded.model, options.precision,
                                sparse.efficiency if sparse is not None else None)
    context = PassContext(model=loaded.model, view=view, hardware=hardware, options=options,
                          order=view.model_order)
    outcome = run_pipeline(PIPELINE, context, progress)
    plan = build_plan(loaded, hardware, outcome, model_path)
    plan["budgets"] = budgets.evaluate(plan, options.budgets)
    try:
        check_plan(plan)
    except ValueError as error:
        raise InternalError(f"{error}. This is a bug in mapper: please report it with the "
                            "model and command") from error
    return plan, outcome


def compile_model(model_path: str | Path, hardware: str, output_dir: str | Path,
                  options: CompileOptions | None = None, force: bool = False,
                  progress: ProgressHook | None = None) -> CompileResult:
    """Compile `model_path` for `hardware` into `output_dir` (model.onnx, plan.json, report).

    `output_dir` must be new, empty or an earlier mapper result (mapper.outputs); `force` lets
    mapper add its files to another directory, never replacing a file it did not write.
    """
    options = options or CompileOptions()
    check_output_dir(output_dir, force)
    hw = resolve_hardware(hardware, options)
    loaded = load_for(model_path, options)
    plan, outcome = plan_loaded(loaded, hw, options, str(model_path), progress)
    out = Path(output_dir)
    summary = _summary(plan, out, outcome.view)
    pending = _Pending(_reorder(outcome.model, outcome.order))
    artifacts = outcome.artifacts
    # From here on `pending` is the only holder of the model (see _Pending).
    del loaded, outcome
    write_output_dir(out, lambda tmp: _write_outputs(tmp, pending, plan, artifacts,
                                                     Path(model_path)),
                     force=force)
    return CompileResult(output_dir=out, plan=plan, summary=summary)
