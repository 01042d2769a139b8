"""The simplification itself: the onnxscript optimizer's steps, run one by one so that each
is counted, plus the rules of `rules`.

The steps are those of `onnxscript.optimizer.optimize_ir` (constant folding with node-level
shape inference, which also bypasses Identity and inference Dropout; its default rewrite
rules; dead-code removal; then constants lifted to initializers, duplicate initializers
merged (by content hash, at any size: equal weights are what lets CSE merge two nodes),
common subexpressions eliminated), with a checked MatMul+Add -> Gemm added
(onnx-ir's IdentityEliminationPass is not used: it renames a subgraph's output to an outer
value, which the ONNX checker rejects). Every rule keeps the computation (BatchNormalization
folding reassociates float arithmetic, as onnxruntime's own basic-level fusion does); every
op stays in the standard ONNX domains.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnx import ModelProto
from onnxscript.optimizer import _constant_folding
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter.rules.common import (
    _basic_rules,
    _broadcast_to_matmul,
    _cast_constant_of_shape,
    _collapse_slices,
    _fuse_batchnorm,
    _fuse_pad_into_conv,
    _fuse_relus_clips,
    _materialize_reshape_shape,
    _min_max_to_clip,
    _no_op,
    _redundant_scatter_nd,
    _remove_optional_bias,
)

from mapper.passes.simplify.rules import CONV_AFFINE_RULES, SLICE_RULES
from mapper.passes.simplify.rules import RULES as GEMM_RULES

MAX_ROUNDS = 4
# Constant folding bypasses Identity and inference-mode Dropout (their readers read the input
# instead); the nodes left without readers are removed with the rest of the dead code.
DEAD_CODE = "dead code elimination (Identity and Dropout included)"

# The onnxscript default rule sets (rewriter._DEFAULT_REWRITE_RULES), grouped under the names
# the plan counts them by, then this package's own.
RULE_GROUPS: tuple[tuple[str, RewriteRuleSet], ...] = (
    ("no-op elimination (x+0, x*1, Dropout, Cast, Expand, Transpose)",
     RewriteRuleSet([*_no_op.rules.rules, *_basic_rules.basic_optimization_rules().rules])),
    ("BatchNormalization folded into Conv/ConvTranspose/Gemm", _fuse_batchnorm.rules),
    ("MatMul+Add -> Gemm", GEMM_RULES),
    ("per-channel Mul/Add folded into Conv", CONV_AFFINE_RULES),
    ("Pad folded into Conv", _fuse_pad_into_conv.rules),
    ("Relu/Clip/Min/Max chains merged",
     RewriteRuleSet([*_fuse_relus_clips.rules.rules, *_min_max_to_clip.rules.rules])),
    ("zero biases dropped, Reshape/Slice/ScatterND cleanups",
     RewriteRuleSet([*_broadcast_to_matmul.rules.rules, *_cast_constant_of_shape.rules.rules,
                     *_collapse_slices.rules.rules, *_materialize_reshape_shape.rules.rules,
                     *_redundant_scatter_nd.rules.rules, *_remove_optional_bias.rules.rules,
                     *SLICE_RULES.rules])),
)

# Integer tensors that hold quantized codes: folding a node that reads them would store the
# decoded floats. mapper's own folding (which knows when such a fold is safe) runs after.
_CODE_DTYPES = frozenset({ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16,
                          ir.DataType.UINT16, ir.DataType.INT4, ir.DataType.UINT4})
_CODE_MIN_ELEMENTS = 16


@dataclass
class Simplified:
    """The simplified model and what each step removed or rewrote."""

    model: ModelProto
    rules: dict[str, int] = field(default_factory=dict)


def _should_fold(node: ir.Node) -> bool | None:
    for value in node.inputs:
        if value is None or value.const_value is None:
            continue
        if value.const_value.dtype in _CODE_DTYPES \
                and value.const_value.size >= _CODE_MIN_ELEMENTS:
            return False
    return None  # onnxscript's defaults (Q/DQ kept, large inputs not folded)


def _nodes(model: ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


def _count(counts: Counter, name: str, before: int, model: ir.Model) -> None:
    removed = before - _nodes(model)
    if removed > 0:
        counts[name] += removed


def simplify_ir(model: ir.Model) -> dict[str, int]:
    """Simplify `model` in place; the number of nodes each step removed (rules: rewrites)."""
    counts: Counter = Counter()
    if model.functions:
        common_passes.InlinePass()(model)
    fold = _constant_folding.FoldConstantsPass(
        shape_inference=True,
        input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
        output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
        should_fold=_should_fold)
    for _ in range(MAX_ROUNDS):
        changed = False
        before = _nodes(model)
        changed |= fold(model).modified
        _count(counts, "constant folding", before, model)
        before = _nodes(model)
        changed |= common_passes.RemoveUnusedNodesPass()(model).modified
        _count(counts, DEAD_CODE, before, model)
        for name, rules in RULE_GROUPS:
            applied = rules.apply_to_model(model)
            if applied:
                counts[name] += applied
                changed = True
        before = _nodes(model)
        changed |= common_passes.RemoveUnusedNodesPass()(model).modified
        _count(counts, DEAD_CODE, before, model)
        if not changed:
            break
    common_passes.RemoveUnusedFunctionsPass()(model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.LiftSubgraphInitializersToMainGraphPass()(model)
    common_passes.DeduplicateHashedInitializersPass()(model)
    before = _nodes(model)
    common_passes.CommonSubexpressionEliminationPass()(model)
    common_passes.RemoveUnusedNodesPass()(model)
    _count(counts, "common subexpression elimination", before, model)
    common_passes.RemoveUnusedOpsetsPass()(model)
    common_passes.OutputFixPass()(model)
    common_passes.NameFixPass()(model)
    return dict(sorted(counts.items()))


def simplify_model(proto: ModelProto) -> Simplified:
    """A simplified copy of `proto` (not normalized: the pass re-normalizes it)."""
    model = ir.serde.deserialize_model(proto)
    counts = simplify_ir(model)
    return Simplified(model=ir.serde.serialize_model(model), rules=counts)
