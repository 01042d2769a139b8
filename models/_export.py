"""torch -> ONNX export shared by every reference model, with a self-check against torch."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx

from models._registry import BUILDER_VERSION, TORCH_SEED, ModelSpec, resolve

# Node metadata the dynamo exporter attaches. Stack traces and FX text embed absolute paths
# (builds would differ per checkout) and triple the file size; the module scopes are kept
# because they tell which layer / expert a node belongs to.
_DROPPED_NODE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "namespace")


def torch_module(spec: ModelSpec) -> Any:
    """Construct the spec's torch module with the fixed seed, in eval mode."""
    import torch

    torch.manual_seed(TORCH_SEED)
    module = resolve(spec.factory)()
    module.eval()
    return module


def run_torch(module: Any, inputs: dict[str, np.ndarray], spec: ModelSpec) -> list[np.ndarray]:
    """Run the torch module on numpy inputs (in spec order) and return numpy outputs."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[i.name])) for i in spec.inputs)
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.detach().numpy() for o in outs]


def run_onnxruntime(model: onnx.ModelProto | bytes | str, inputs: dict[str, np.ndarray]) -> list:
    """Run a model (proto, bytes or path) once in onnxruntime on the CPU."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only; ORT warns about unused initializers otherwise
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # The exporter logs a warning per missing torchvision op and warns about deprecations
    # of the TorchScript path; neither says anything about the model being exported.
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _dynamo_export(module: Any, args: tuple, spec: ModelSpec) -> onnx.ModelProto:
    import torch

    dynamic_shapes = None
    if spec.dynamic_dims:
        dims = {
            name: torch.export.Dim(name, min=d.min, max=d.max)
            for name, d in spec.dynamic_dims.items()
        }
        dynamic_shapes = tuple(
            {axis: dims[s] for axis, s in enumerate(i.shape) if isinstance(s, str)} or None
            for i in spec.inputs
        )
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        optimize=False,
        verbose=False,
        input_names=[i.name for i in spec.inputs],
        output_names=list(spec.outputs),
        dynamic_shapes=dynamic_shapes,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    # nn.Linear exports as MatMul(x, Transpose(W)); constant folding turns Transpose(W) into
    # an anonymous "val_123" initializer. Naming its output "<param>.T" first keeps every
    # weight traceable to its torch parameter (experts, layers) after folding.
    renamed: set[str] = set()
    for node in program.model.graph:
        if node.op_type == "Transpose" and node.inputs and node.inputs[0] is not None:
            source = node.inputs[0]
            target = f"{source.name}.T"
            # a weight transposed twice (tied, or two perms) keeps its anonymous names
            if source.is_initializer() and source.name and target not in renamed:
                node.outputs[0].name = target
                renamed.add(target)
    program.optimize()
    model = program.model_proto
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key not in _DROPPED_NODE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def _legacy_export(module: Any, args: tuple, spec: ModelSpec) -> onnx.ModelProto:
    import torch

    dynamic_axes: dict[str, dict[int, str]] = {}
    for i in spec.inputs:
        axes = {axis: s for axis, s in enumerate(i.shape) if isinstance(s, str)}
        if axes:
            dynamic_axes[i.name] = axes
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        args,
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=[i.name for i in spec.inputs],
        output_names=list(spec.outputs),
        dynamic_axes=dynamic_axes or None,
        do_constant_folding=True,
    )
    return onnx.load_from_string(buffer.getvalue())


_EXPORTERS = {"dynamo": _dynamo_export, "legacy": _legacy_export}


def export(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict]:
    """Export the spec's model, trying each export mode until one passes the checks.

    A mode passes when onnx.checker (full) accepts the model and onnxruntime reproduces the
    torch outputs on `inputs`. Returns the model and facts about the export for the metadata.
    """
    import torch

    module = torch_module(spec)
    reference = run_torch(module, inputs, spec)
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[i.name])) for i in spec.inputs)
    failures: dict[str, str] = {}
    for mode in spec.export_modes:
        try:
            with _quiet_export():
                model = _EXPORTERS[mode](module, args, spec)
            onnx.checker.check_model(model, full_check=True)
            got = run_onnxruntime(model, inputs)
            errors = _check_outputs(got, reference, spec)
        except Exception as exc:  # any failure means: try the next mode, and say why
            failures[mode] = f"{type(exc).__name__}: {exc}"[:2000]
            continue
        # Let a model file say what it is even when copied out of the cache.
        model.doc_string = spec.description
        model.graph.name = spec.name
        onnx.helper.set_model_props(
            model,
            {
                "mapper.reference_model": spec.name,
                "mapper.builder_version": f"{BUILDER_VERSION}.{spec.version}",
                "mapper.export_mode": mode,
            },
        )
        info = {
            "export_mode": mode,
            "torch_version": torch.__version__,
            "onnx_max_abs_error_vs_torch": errors,
        }
        if failures:
            info["export_failures"] = failures
        return model, info
    details = "\n".join(f"  {mode}: {why}" for mode, why in failures.items())
    raise RuntimeError(f"could not export {spec.name}:\n{details}")


def _check_outputs(got: list, reference: list[np.ndarray], spec: ModelSpec) -> dict[str, float]:
    if len(got) != len(reference):
        raise AssertionError(f"{len(got)} outputs from onnxruntime, {len(reference)} from torch")
    errors: dict[str, float] = {}
    for name, g, r in zip(spec.outputs, got, reference, strict=True):
        if g.shape != r.shape:
            raise AssertionError(f"{name}: shape {g.shape} in onnxruntime, {r.shape} in torch")
        if not np.allclose(g, r, rtol=spec.rtol, atol=spec.atol):
            raise AssertionError(f"{name}: onnxruntime differs from torch by {np.abs(g - r).max()}")
        errors[name] = float(np.abs(g - r).max())
    return errors
