"""Simplify pass: the graph that will actually run, before anything plans or prices it.

A runtime folds and fuses before it runs a model (onnxruntime's basic offline level folds
every BatchNormalization into its convolution: the model-zoo ResNet-50 goes from 176 nodes
to 123), and every later pass should plan the tensors that runtime writes, not the ones the
exporter wrote. This pass rewrites the model, losslessly and in standard ONNX ops only (so
the output runs anywhere): constant folding, BatchNormalization folded into Conv/Gemm,
Identity/Dropout and no-op Reshape/Cast/Expand/Transpose removed, dead code and common
subexpressions eliminated, MatMul+Add fused into Gemm for 2-D operands. The work is the
onnxscript optimizer's and rewriter's (`optimize`); only the rules it lacks are here
(`rules`). The rewritten model is re-normalized by the loader's own `normalize` (folded,
static shapes with value_info for every tensor, sorted, every node named).

`plan.simplify` records the op counts before and after and what each step did.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from onnx import ModelProto

from mapper.onnx_utils import drop_initializer_value_info
from mapper.passes.simplify.outputs import bypass_output_copies
from mapper.pipeline import Pass, PassContext, PassResult

log = logging.getLogger(__name__)

# Above this many weight bytes the pass steps aside: the rewrite holds a second copy of the
# weights while the loaded model is still alive, and big models (transformers) have little
# for it to do (no BatchNormalization; their MatMuls are 3-D).
MAX_WEIGHT_BYTES = 2**30
OUTPUT_COPIES = "Identity/no-op Cast writing a graph output bypassed"


def op_counts(model: ModelProto) -> dict[str, int]:
    """Main-graph nodes per op type (a domain other than ONNX's prefixes the name)."""
    counts = Counter(f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx")
                     else node.op_type for node in model.graph.node)
    return dict(sorted(counts.items()))


def _input_shapes(model: ModelProto) -> dict[str, list[int]]:
    initializers = {init.name for init in model.graph.initializer}
    return {inp.name: [d.dim_value for d in inp.type.tensor_type.shape.dim]
            for inp in model.graph.input if inp.name not in initializers}


def _keep_known_shapes(model: ModelProto, original: ModelProto) -> None:
    """Carry the original's static types of tensors that still exist under the same name
    (contrib ops, data-dependent shapes): ONNX inference need not rediscover them."""
    produced = {out for node in model.graph.node for out in node.output}
    known = {info.name for info in model.graph.value_info} | {o.name for o in model.graph.output}
    for info in original.graph.value_info:
        if info.name in produced and info.name not in known:
            model.graph.value_info.append(info)


def _interface(model: ModelProto) -> tuple[list[str], list[str]]:
    """The names a user feeds and reads: graph inputs (weights aside) and outputs."""
    initializers = {init.name for init in model.graph.initializer}
    return ([i.name for i in model.graph.input if i.name not in initializers],
            [o.name for o in model.graph.output])


def _non_tensor_values(model: ModelProto) -> list[str]:
    """Values typed as maps, sequences or optionals (ai.onnx.ml ZipMap, SequenceConstruct),
    in the main graph and its subgraphs: onnx-ir cannot represent maps."""
    from mapper.onnx_utils import iter_subgraphs

    names = []
    for graph in (model.graph, *iter_subgraphs(model.graph)):
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.WhichOneof("value") not in (None, "tensor_type"):
                names.append(info.name)
    return names


def _summary(section: dict[str, Any]) -> str:
    rules = section["rules"]
    return (f"{section['nodes_before']} -> {section['nodes_after']} nodes"
            + (f" ({', '.join(f'{k}: {v}' for k, v in rules.items())})" if rules
               else " (nothing to simplify)"))


def _copies_only(original: ModelProto, before: dict[str, int], first: str) -> PassResult:
    """Graphs with map or sequence values, which onnx-ir cannot load: only the copies that
    write graph outputs are removed (on the proto)."""
    model = ModelProto()
    model.CopyFrom(original)
    copies = bypass_output_copies(model)
    section = {"nodes_before": len(original.graph.node), "nodes_after": len(model.graph.node),
               "before": before, "after": op_counts(model),
               "rules": {OUTPUT_COPIES: copies} if copies else {}}
    return PassResult(sections={"simplify": section}, model=model if copies else None,
                      notes=(_summary(section), f"only output copies removed: {first} is a map "
                             "or sequence, which the onnxscript optimizer cannot represent"))


def _probe_inputs(context: PassContext) -> dict[str, Any] | None:
    if context.options.calib is None:
        return None
    from mapper.calibration import first_sample, load_calibration

    return first_sample(load_calibration(context.options.calib))


class SimplifyPass(Pass):
    """Lossless graph optimization (onnxscript optimizer and rewriter), first in the
    pipeline: what it returns is what mapper emits and every later pass plans."""

    name = "simplify"
    description = ("lossless graph optimization: constant folding, BatchNormalization into "
                   "Conv/Gemm, Identity/Dropout/no-op removal, dead code, CSE, MatMul+Add -> "
                   "Gemm (standard ONNX ops only)")
    writes = ("simplify",)

    def skip_reason(self, context: PassContext) -> str | None:
        """Models whose weights would be held twice past MAX_WEIGHT_BYTES are left as loaded."""
        weights = context.view.weight_bytes()
        if weights > MAX_WEIGHT_BYTES:
            return (f"weights of {weights / 2**30:.2f} GiB: simplifying would hold a second "
                    f"copy of them (limit {MAX_WEIGHT_BYTES / 2**30:.0f} GiB)")
        return None

    def run(self, context: PassContext) -> PassResult:
        """Simplify, re-normalize, and record the op counts on both sides."""
        from mapper.loader import normalize
        from mapper.passes.simplify.optimize import simplify_model

        original = context.model
        before = op_counts(original)
        non_tensor = _non_tensor_values(original)
        if non_tensor:
            return _copies_only(original, before, non_tensor[0])
        try:
            simplified = simplify_model(original)
        except Exception as error:  # the library failed on this graph: plan it as loaded
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            log.warning("simplify: the onnxscript optimizer failed (%s: %s); the graph is "
                        "kept as loaded", type(error).__name__, reason)
            nodes = len(original.graph.node)
            return PassResult(status="fallback", sections={"simplify": {
                "nodes_before": nodes, "nodes_after": nodes, "before": before,
                "after": before, "rules": {}}},
                notes=(f"the onnxscript optimizer failed ({type(error).__name__}: {reason}); "
                       "the graph is kept as loaded",))
        model = simplified.model
        if _interface(model) != _interface(original):
            # onnx-ir renames a graph input that is also a graph output (x -> x_orig plus an
            # Identity): a rewrite must keep the names users feed and read, so the model
            # stays as loaded (found by the random-graph property tests).
            return PassResult(sections={"simplify": {
                "nodes_before": len(original.graph.node),
                "nodes_after": len(original.graph.node), "before": before, "after": before,
                "rules": {}}}, notes=("kept as loaded: simplifying would rename a graph input "
                                      "or output",))
        drop_initializer_value_info(model.graph)
        _keep_known_shapes(model, original)
        copies = bypass_output_copies(model)
        rules = dict(simplified.rules)
        if copies:
            rules[OUTPUT_COPIES] = copies
        notes: list[str] = []
        model = normalize(model, _input_shapes(original), notes, _probe_inputs(context))
        after = op_counts(model)
        section = {"nodes_before": len(original.graph.node), "nodes_after": len(model.graph.node),
                   "before": before, "after": after, "rules": rules}
        changed = section["nodes_before"] != section["nodes_after"] or before != after \
            or bool(rules)
        return PassResult(sections={"simplify": section}, model=model if changed else None,
                          notes=(_summary(section), *notes))
