"""Simplify pass: the graph a runtime would run, in standard ONNX ops (`simplify_pass`); the
onnxscript optimizer and rewriter steps it runs, with counts (`optimize`); the rules the
library lacks (`rules`); its report section (`report`)."""

from mapper.passes.simplify.simplify_pass import SimplifyPass

__all__ = ["SimplifyPass"]
